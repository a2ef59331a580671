"""The real Dagster UI: `dagster-webserver` on the project's workspace.yaml, in a temporary home.

One webserver per session (startup is a few seconds). Its stdout/stderr go to files in the temporary
home so a test can read the startup log (version-mismatch warnings) and a failure can show it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mlops_assets.settings import PROJECT_ROOT, get_settings

CHROMIUM = "/usr/bin/chromium"
# Flags for Debian's chromium on a closed network, as root (see the machine notes).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STARTUP_TIMEOUT_S = 60
ARTIFACTS_DIR = PROJECT_ROOT / "artifacts" / "ui"


@dataclass
class Webserver:
    url: str
    process: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    dagster_home: Path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                              timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, f"GraphQL errors: {body['errors']}"
        return body["data"]

    def log(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _executable(name: str) -> str:
    """The console script next to this interpreter (the project venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is not installed in the test environment"
    return found


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


_LOCATION_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def _wait_until_loaded(server: Webserver) -> None:
    """Until the webserver answers and the `mlops_assets` location has finished loading."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"dagster-webserver exited with {server.process.returncode}:\n"
                                 f"{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/server_info", timeout=2).status_code == 200:
                entries = server.graphql(_LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
                entry = next((e for e in entries if e["name"] == "mlops_assets"), None)
                last = repr(entry)
                if entry and entry["loadStatus"] == "LOADED":
                    error = entry["locationOrLoadError"]
                    assert error and error["__typename"] == "RepositoryLocation", \
                        f"the mlops_assets location failed to load: {error}"
                    return
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise AssertionError(f"dagster-webserver not ready in {STARTUP_TIMEOUT_S} s ({last}):\n"
                         f"{server.log()[-4000:]}")


@pytest.fixture(scope="session")
def webserver(tmp_path_factory) -> Webserver:
    # two models in one code location: the example folder (churn demo + tumor from scikit-learn)
    models = {"MLOPS_MODELS_DIR": str(PROJECT_ROOT / "examples" / "models")}
    settings = get_settings({"MLOPS_HOME": str(tmp_path_factory.mktemp("ui-home")), **models})
    settings.ensure_dirs()
    env = {**settings.env_for_subprocess(), **models}
    env["PYTHONUNBUFFERED"] = "1"
    port = _free_port()
    stdout_path = settings.logs_dir / "webserver.out"
    stderr_path = settings.logs_dir / "webserver.err"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [_executable("dagster-webserver"), "-w", str(PROJECT_ROOT / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            start_new_session=True)  # own process group: teardown also ends the code server
    server = Webserver(url=f"http://127.0.0.1:{port}", process=process, stdout_path=stdout_path,
                       stderr_path=stderr_path, dagster_home=settings.dagster_home)
    try:
        _wait_until_loaded(server)
        # The first visit to a new instance opens the "Join the Dagster community" dialog over the
        # graph; mark it seen through the UI's own mutation.
        server.graphql("mutation { setNuxSeen }")
        yield server
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} is missing: the UI tests need Debian's Chromium "
                    f"(run `apt-get update && apt-get install -y chromium`)", pytrace=False)
    return CHROMIUM


@pytest.fixture
def browser_page(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()
