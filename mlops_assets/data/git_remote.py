"""DVC versions whose metadata lives on a git server, not on the run's disk (``stack``; ``k8s`` too
when ``MLOPS_DATA_GIT_URL`` is set).

Why a git remote: the `.dvc` pointers, their history and the ``<name>-<md5>`` tags are exactly what
git keeps, ``dvc.api`` reads a git URL natively (``dvc.api.read(path, repo=<url>, rev=<tag>)``), and a
git server is what a team already runs. Each write clones the remote into a throwaway directory,
commits and tags there, pushes the data to the DVC remote (S3) and the commit + tag to git, and
deletes the clone; a push that loses a race with another run is retried from a fresh clone. A
reader needs only the URL: nothing of a previous run's disk is used.

Several models (``MLOPS_MODELS_DIR``) share the remote: a model from the folder keeps its tables as
``<model>.<table>.parquet`` with tags ``<model>.<table>-<md5>``, so one model never reads, lists or
overwrites another's ``dataset`` or ``holdout`` (the built-in model keeps the plain names).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from mlops_assets.settings import Settings

from .versioning import DataVersioner, DataVersionError, TableVersion, version_tag

ATTEMPTS = 3


class GitRemoteVersioner(DataVersioner):
    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.url = settings.data_git_url

    def _table(self, name: str) -> str:
        """The name of this model's table on the shared remote."""
        return f"{self.settings.model_name}.{name}" if self.settings.model_prefix else name

    def location(self, version: TableVersion) -> str:
        return f"{self.url} {version.tag}:{version.path}"

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        timeout = max(30.0, 3 * self.settings.service_timeout_s)
        try:
            result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DataVersionError(f"git server {self.url}: `git {args[0]}` timed out after {timeout:.0f} s") from None
        if result.returncode != 0:
            raise DataVersionError(f"git server {self.url}: `git {args[0]}` failed: {result.stderr.strip()[-400:]}")
        return result.stdout

    def commit_table(self, frame: pd.DataFrame, name: str, message: str) -> TableVersion:
        name = self._table(name)
        self.settings.export_s3_env()  # DVC's S3 remote reads credentials from the environment
        last_error = None
        for _ in range(ATTEMPTS):
            with tempfile.TemporaryDirectory(prefix="mlops-data-", dir=self.settings.scratch_dir) as tmp:
                clone = Path(tmp) / "data"
                self._git("clone", "--quiet", self.url, str(clone))
                self._prepare(clone)
                worker = DataVersioner(self.settings)
                worker.root = clone
                version = worker.commit_table(frame, name, message)
                try:
                    self._git("push", "--quiet", "origin", "HEAD:refs/heads/main", f"refs/tags/{version.tag}",
                              cwd=clone)
                    return version
                except DataVersionError as exc:  # another run pushed first: start again from its commit
                    last_error = exc
        raise DataVersionError(f"cannot record {name} on {self.url} after {ATTEMPTS} attempts: {last_error}")

    def _prepare(self, clone: Path) -> None:
        """An identity for commits; `dvc init` once, in the remote's first commit."""
        self._git("config", "user.name", "mlops-platform", cwd=clone)
        self._git("config", "user.email", "mlops@localhost", cwd=clone)
        if not (clone / ".dvc").exists():
            from dvc.repo import Repo

            Repo.init(str(clone)).close()

    def read_table(self, name: str, rev: str | None = None, md5: str | None = None) -> pd.DataFrame:
        import io

        import dvc.api

        name = self._table(name)
        self.settings.export_s3_env()
        if md5:
            rev = version_tag(name, md5)
        try:
            data = dvc.api.read(f"{name}.parquet", repo=self.url, rev=rev or "main", mode="rb", remote="storage")
        except Exception as exc:
            raise DataVersionError(f"no version {rev or 'HEAD'} of {name} in {self.url}: {exc}") from exc
        return pd.read_parquet(io.BytesIO(data))

    def versions(self, name: str) -> list[str]:
        prefix = f"refs/tags/{self._table(name)}-"
        lines = self._git("ls-remote", "--tags", self.url).splitlines()
        return sorted(line.split("\t")[1][len(prefix):] for line in lines
                      if "\t" in line and line.split("\t")[1].startswith(prefix) and not line.endswith("^{}"))
