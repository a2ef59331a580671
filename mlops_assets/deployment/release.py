"""What ``.github/workflows/deploy.yml`` runs: write the release of a *gated* model version into a
GitOps overlay of ``deploy/kserve`` (the workflow commits it; Argo CD syncs it).

The version is ``@champion`` unless one is named, and a named one must have passed every blocking
gate (``gate.<name>`` tag ``passed`` on the registered version); anything else is refused, naming the
tag and its value. It never takes a version on trust.

    python -m mlops_assets.deployment.release --overlay prod --image IMAGE [--model-version N] [--check]
"""

from __future__ import annotations

import argparse
import sys
from typing import Mapping

from mlops_assets.registry.assets import GATES  # the blocking checks on candidate_model
from mlops_assets.settings import get_settings

from .gitops import write_gitops_manifest
from .manifests import OVERLAYS, overlay_dir, render_inference_service



class ReleaseRefused(ValueError):
    """The model version may not be deployed; the message names why."""


def check_gates(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Refuse ``version`` unless every gate tag is ``passed``, naming each other value (or its absence)."""
    bad = [f"gate.{gate}={tags[f'gate.{gate}']!r}" if f"gate.{gate}" in tags else f"gate.{gate} is missing"
           for gate in GATES if tags.get(f"gate.{gate}") != "passed"]
    if bad:
        raise ReleaseRefused(f"refusing to deploy {name}/{version}: " + ", ".join(bad)
                             + " (only a version that passed every gate is deployed)")


def gated_version(registry, requested: str | None) -> str:
    """``requested`` if its gates passed, else ``@champion``'s version; refuses otherwise."""
    from mlops_assets.registry.client import CHAMPION, RegistryError

    version = requested or registry.version_of(CHAMPION)
    if version is None:
        raise ReleaseRefused(f"{registry.name} has no @champion and no --model-version was given")
    try:
        tags = registry.version_info(str(version))["version_tags"]
    except RegistryError as exc:
        raise ReleaseRefused(f"refusing to deploy {registry.name}/{version}: {exc}") from exc
    check_gates(registry.name, str(version), tags)
    return str(version)


def main(argv: list[str] | None = None, registry=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_assets.deployment.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--overlay", choices=OVERLAYS, required=True)
    parser.add_argument("--image", required=True, help="the serving image (MLOPS_SERVING_IMAGE)")
    parser.add_argument("--model-version", default=None, help="default: @champion; a named version must have passed its gates")
    parser.add_argument("--canary-percent", type=int, default=20)
    parser.add_argument("--check", action="store_true", help="only print the gated version; write nothing")
    options = parser.parse_args(argv)
    settings = get_settings()
    if registry is None:
        from mlops_assets.registry.client import ModelRegistry

        registry = ModelRegistry(settings)
    try:
        version = gated_version(registry, options.model_version)
    except ReleaseRefused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    if options.check:
        print(version)
        return 0
    manifest = render_inference_service(settings, f"models:/{settings.model_name}/{version}", version,
                                        options.image, options.canary_percent, overlay=options.overlay)
    print(write_gitops_manifest(overlay_dir(options.overlay) / "release.yaml", manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
