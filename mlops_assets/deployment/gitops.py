"""The GitOps serving backend: every change to the InferenceService is a commit that Argo CD syncs.

A rollout commits the canary share to the release file (``MLOPS_GITOPS_PATH``), pushes it, waits
until the Argo CD Application (``MLOPS_ARGOCD_APP``) reports that commit synced and healthy and the
InferenceService reports the canary ready, smoke-tests the canary through its cluster URL, then
commits 100% the same way. If any step fails, the rollout's commits are reverted (and pushed), the
step fails with Argo CD's or KServe's reason, and ``inference_service`` restores ``@champion``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from mlops_assets.settings import Settings

from .backend import Log, RolloutFailed
from .kserve import KServeBackend
from .kube_api import KubeApi, Ref, WaitTimeout
from .manifests import SERVING_CONTAINER, release_patch

ARGOCD_API_VERSION = "argoproj.io/v1alpha1"
RELEASE_HEADER = ("# Written by mlops_assets.deployment.gitops (the deploy step in GitOps mode, or\n"
                  "# .github/workflows/deploy.yml): the release the overlay rolls out. Do not edit by hand.\n")


def release_values(manifest: Mapping[str, Any]) -> tuple[str, str, str, int]:
    """(model_uri, model_version, image, canary_percent) of a rendered manifest."""
    predictor = manifest["spec"]["predictor"]
    container = next(c for c in predictor["containers"] if c["name"] == SERVING_CONTAINER)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return (env["MLOPS_MODEL_URI"], env["MLOPS_MODEL_VERSION"], container["image"],
            predictor.get("canaryTrafficPercent", 100))


def write_gitops_manifest(path: Path, manifest: Mapping[str, Any]) -> Path:
    """Write the release of ``manifest`` as the overlay's patch that Argo CD syncs.

    Only the release fields are written: the overlay's kustomization owns the namespace (a patch
    naming one no longer matches the base) and its environment patch owns replicas and the sink.
    """
    patch = release_patch(dict(manifest), *release_values(manifest))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RELEASE_HEADER + yaml.safe_dump(patch, sort_keys=False))
    return path


DEPLOYER_IDENTITY = ("mlops-deployer", "mlops-deployer@users.noreply.invalid")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def identity(repo: Path) -> list[str]:
    """``-c`` options naming the deployer as author, unless the checkout already names someone
    (a pod's fresh checkout has no git identity, and ``git commit`` refuses to guess one)."""
    configured = subprocess.run(["git", "-C", str(repo), "config", "user.email"], capture_output=True, text=True)
    if configured.returncode == 0 and configured.stdout.strip():
        return []
    name, email = DEPLOYER_IDENTITY
    return ["-c", f"user.name={name}", "-c", f"user.email={email}"]


def commit_gitops_change(repo_dir: Path, paths: Iterable[Path], message: str) -> str:
    """Commit the written manifests; returns the new commit's sha (Argo CD syncs from it)."""
    git(repo_dir, "add", "--", *(str(p) for p in paths))
    git(repo_dir, *identity(repo_dir), "commit", "-q", "-m", message)
    return git(repo_dir, "rev-parse", "HEAD")


def application_synced(app: Mapping[str, Any], revision: str) -> bool:
    """Argo CD reports ``revision`` synced and the Application healthy."""
    status = app.get("status") or {}
    sync, health = status.get("sync") or {}, status.get("health") or {}
    return sync.get("status") == "Synced" and sync.get("revision") == revision and health.get("status") == "Healthy"


def application_reason(app: Mapping[str, Any] | None) -> str:
    """What Argo CD says about the Application: sync, revision, health and the messages behind them."""
    status = (app or {}).get("status") or {}
    if not status:
        return "Argo CD reported no status"
    sync, health = status.get("sync") or {}, status.get("health") or {}
    parts = [f"sync {sync.get('status', 'Unknown')} at {str(sync.get('revision') or 'no revision')[:12]}",
             f"health {health.get('status', 'Unknown')}" + (f" ({health['message']})" if health.get("message") else "")]
    operation = status.get("operationState") or {}
    if operation.get("phase") and operation.get("phase") != "Succeeded":
        parts.append(f"sync operation {operation['phase']}: {operation.get('message', '')}".rstrip(": "))
    parts += [f"{c.get('type')}: {c.get('message')}" for c in status.get("conditions") or []]
    parts += [f"{r.get('kind')} {r.get('name')} {r['health'].get('status')}: {r['health'].get('message')}"
              for r in status.get("resources") or []
              if (r.get("health") or {}).get("status") not in (None, "Healthy") and r["health"].get("message")]
    return "; ".join(parts)


class GitOpsBackend(KServeBackend):
    kind = "KServe InferenceService through GitOps (Argo CD)"

    def __init__(self, settings: Settings, api: KubeApi | None = None):
        super().__init__(settings, api)
        self.app = Ref(ARGOCD_API_VERSION, "Application", settings.argocd_namespace, settings.argocd_app or "")
        self._commits: list[str] = []

    @property
    def repo(self) -> Path:
        path = self.settings.gitops_path
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(self._git(path.parent, "rev-parse", "--show-toplevel"))

    def _git(self, repo: Path, *args: str) -> str:
        try:
            return git(repo, *args)
        except subprocess.CalledProcessError as exc:
            raise RolloutFailed(f"GitOps release in {repo} (MLOPS_GITOPS_PATH={self.settings.gitops_path}) "
                                f"failed: git {' '.join(args)}: {(exc.stderr or '').strip()}") from exc

    def _push(self, repo: Path) -> str:
        if not self.settings.gitops_remote:
            return ""
        self._git(repo, "push", "-q", self.settings.gitops_remote, "HEAD")
        return f", pushed to {self.settings.gitops_remote}"

    def _begin(self) -> None:
        self._commits = []

    def _publish(self, manifest: dict, live: dict | None, change: str, log: Log) -> None:
        repo, path = self.repo, self.settings.gitops_path
        write_gitops_manifest(path, manifest)
        if self._git(repo, "status", "--porcelain", "--", str(path)):
            self._git(repo, "add", "--", str(path))
            self._git(repo, *identity(repo), "commit", "-q", "-m", f"deploy({self.settings.model_name}): {change}")
            sha = self._git(repo, "rev-parse", "HEAD")
            self._commits.append(sha)
            action = f"committed {path.relative_to(repo)}"
        else:
            sha, action = self._git(repo, "rev-parse", "HEAD"), "already committed"
        action += self._push(repo)
        log(f"{change}: {action} at {sha[:12]}; waiting for Argo CD ({self.app})")
        try:
            self.api.wait_for(self.app, lambda app: application_synced(app, sha), self.settings.ready_timeout_s,
                              f"synced at {sha[:12]} and healthy")
        except WaitTimeout as exc:
            raise WaitTimeout(f"Argo CD: {exc}: {application_reason(exc.last)}", exc.last) from exc

    def _undo(self, live: dict | None, log: Log) -> str:
        if not self._commits:
            return "nothing committed to revert"
        repo = self.repo
        for sha in reversed(self._commits):
            self._git(repo, *identity(repo), "revert", "--no-edit", sha)
        reverted = ", ".join(sha[:12] for sha in self._commits)
        self._commits = []
        return f"reverted {reverted}{self._push(repo)}"

