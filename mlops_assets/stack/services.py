"""The `stack` profile's shared services as real servers on 127.0.0.1, with their data under one folder.

    python -m mlops_assets.stack up|down|status [--root DIR]

PostgreSQL (Dagster, MLflow and the Feast registry), Redis (Feast online store), moto's S3 server,
a git server for the DVC data repository (``git daemon``), the MLflow tracking server (PostgreSQL
backend, artifacts proxied to S3), Prometheus, Alertmanager, the Pushgateway and the payload-logger
sink. ``up`` writes ``stack.env``: the settings a `stack` profile process reads (see settings.py).
Binaries come from Debian packages (``dev.py stack up`` installs them) and from this venv.
Standard library only, apart from the project itself: this module starts what everything else needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mlops_assets.settings import PROJECT_ROOT

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DEFAULT_ROOT = PROJECT_ROOT / ".mlops-stack"
BUCKET = "mlops"
DB_USER = "mlops"
DATABASES = ("dagster", "mlflow", "feast")
# Fixed default ports (`stack up`); tests pass free ones.
DEFAULT_PORTS = {"postgres": 55432, "redis": 56379, "s3": 55000, "git": 59418, "mlflow": 55500,
                 "pushgateway": 59091, "alertmanager": 59093, "prometheus": 59090, "sink": 55600}
ORDER = ("postgres", "redis", "s3", "git", "mlflow", "pushgateway", "sink", "alertmanager", "prometheus")
AWS_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "stack", "AWS_SECRET_ACCESS_KEY": "stack-secret",
                        "AWS_DEFAULT_REGION": "us-east-1"}


class StackError(RuntimeError):
    """A service did not start or is not ready; the message names it, its URL and its log."""


@dataclass
class Stack:
    root: Path = DEFAULT_ROOT
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    python: str = sys.executable
    ready_timeout_s: float = 90.0
    # e.g. "5s": every alert rule's `for:` shortened (tests); None keeps deploy/monitoring's rules as they are
    alert_for: str | None = None

    # --- layout ------------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def env_file(self) -> Path:
        return self.root / "stack.env"

    def url(self, name: str) -> str:
        port = self.ports[name]
        return {"postgres": f"postgresql://{DB_USER}@127.0.0.1:{port}",
                "redis": f"127.0.0.1:{port}", "git": f"git://127.0.0.1:{port}/data.git"}.get(
            name, f"http://127.0.0.1:{port}")

    def settings_env(self) -> dict[str, str]:
        """What a `stack` profile process needs to find the services (written to ``stack.env``)."""
        return {"MLOPS_PROFILE": "stack", "MLOPS_S3_BUCKET": BUCKET,
                "MLOPS_S3_ENDPOINT_URL": self.url("s3"), "MLFLOW_TRACKING_URI": self.url("mlflow"),
                "MLOPS_POSTGRES_URL": self.url("postgres"), "MLOPS_REDIS": self.url("redis"),
                "MLOPS_DATA_GIT_URL": self.url("git"), "MLOPS_SINK_URL": self.url("sink"),
                "MLOPS_PUSHGATEWAY_URL": self.url("pushgateway"),
                "MLOPS_PROMETHEUS_URL": self.url("prometheus"),
                "MLOPS_ALERTMANAGER_URL": self.url("alertmanager"), **AWS_TEST_CREDENTIALS}

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(AWS_TEST_CREDENTIALS)
        env.update({"MLFLOW_S3_ENDPOINT_URL": self.url("s3"), "AWS_ENDPOINT_URL_S3": self.url("s3")})
        return env

    # --- commands ----------------------------------------------------------------------------
    def up(self, only: tuple[str, ...] = ORDER) -> dict[str, str]:
        for path in (self.root, self.logs, self.run_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.settings_env().items()))
        (self.run_dir / "ports.json").write_text(json.dumps(self.ports))
        for name in only:
            if self._ready(name):
                continue
            getattr(self, f"_start_{name}")()
            self._wait(name)
            if name == "s3":
                self._create_bucket()
        return self.status()

    def down(self) -> None:
        for name in reversed(ORDER):
            if name == "postgres":
                self._stop_postgres()
                continue
            pid_file = self.run_dir / f"{name}.pid"
            if pid_file.exists():
                _terminate(int(pid_file.read_text()))
                pid_file.unlink()

    def status(self) -> dict[str, str]:
        return {name: ("ready" if self._ready(name) else "down") + f" {self.url(name)}" for name in ORDER}

    # --- readiness ---------------------------------------------------------------------------
    def _ready(self, name: str) -> bool:
        port = self.ports[name]
        if name == "postgres":
            return subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
                                  check=False).returncode == 0
        if name in ("redis", "git"):
            return _port_open(port)
        path = {"s3": "/", "mlflow": "/health", "prometheus": "/-/ready", "alertmanager": "/-/ready",
                "pushgateway": "/-/ready", "sink": "/healthz"}[name]
        try:
            with urllib.request.urlopen(self.url(name) + path, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait(self, name: str) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._ready(name):
                return
            pid_file = self.run_dir / f"{name}.pid"
            if pid_file.exists() and not _alive(int(pid_file.read_text())):
                break
            time.sleep(0.3)
        log = self.logs / f"{name}.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise StackError(f"{name} at {self.url(name)} did not become ready within {self.ready_timeout_s:.0f} s; "
                         f"log {log}:\n{tail}")

    # --- starting each service ---------------------------------------------------------------
    def _spawn(self, name: str, command: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env or self._child_env(), cwd=cwd or self.root, start_new_session=True)
        (self.run_dir / f"{name}.pid").write_text(str(process.pid))

    @property
    def pg_data(self) -> Path:
        """``<root>/postgres``, or, when the ``postgres`` user cannot reach the root (a private
        folder of root's), a folder in that user's home named after the root."""
        owner = _postgres_owner()
        if owner and subprocess.run(["runuser", "-u", owner, "--", "test", "-x", str(self.root)],
                                    check=False).returncode != 0:
            digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
            return Path(pwd.getpwnam(owner).pw_dir) / f"mlops-stack-{digest}"
        return self.root / "postgres"

    def _start_postgres(self) -> None:
        data = self.pg_data
        owner = _postgres_owner()
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            _chown(data, owner)
            _as(owner, [str(PG_BIN / "initdb"), "-D", str(data), "-U", DB_USER, "-A", "trust", "-E", "UTF8"],
                data / "server.log")
        log = data / "server.log"  # in the data folder: the postgres user may not reach self.logs
        options = f"-p {self.ports['postgres']} -c listen_addresses=127.0.0.1 -k {data} -c max_connections=200"
        _as(owner, [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"], log)
        self._wait("postgres")
        for database in DATABASES:
            subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.ports["postgres"]),
                            "-U", DB_USER, database], check=False, capture_output=True)

    def _stop_postgres(self) -> None:
        data = self.pg_data
        if (data / "postmaster.pid").exists():
            _as(_postgres_owner(), [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                data / "server.log", check=False)

    def _start_redis(self) -> None:
        data = self.root / "redis"
        data.mkdir(exist_ok=True)
        self._spawn("redis", [_binary("redis-server"), "--bind", "127.0.0.1", "--port", str(self.ports["redis"]),
                              "--dir", str(data), "--appendonly", "yes", "--save", "", "--protected-mode", "no"])

    def _start_s3(self) -> None:
        self._spawn("s3", [str(Path(self.python).with_name("moto_server")), "-H", "127.0.0.1",
                           "-p", str(self.ports["s3"])])

    def _create_bucket(self) -> None:
        request = urllib.request.Request(f"{self.url('s3')}/{BUCKET}", method="PUT")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already there
                raise StackError(f"s3 at {self.url('s3')}: cannot create bucket {BUCKET}: {exc}") from exc

    def _start_git(self) -> None:
        base = self.root / "git"
        repo = base / "data.git"
        if not (repo / "HEAD").exists():
            subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(repo)], check=True)
        self._spawn("git", ["git", "daemon", "--reuseaddr", f"--base-path={base}", "--export-all",
                            "--enable=receive-pack", "--listen=127.0.0.1", f"--port={self.ports['git']}",
                            str(base)])

    def _start_mlflow(self) -> None:
        self._spawn("mlflow", [str(Path(self.python).with_name("mlflow")), "server", "--host", "127.0.0.1",
                               "--port", str(self.ports["mlflow"]), "--workers", "2",
                               "--backend-store-uri", self.url("postgres").replace("postgresql://", "postgresql+psycopg2://") + "/mlflow",
                               "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--serve-artifacts"])

    def _start_pushgateway(self) -> None:
        self._spawn("pushgateway", [_binary("prometheus-pushgateway"),
                                    f"--web.listen-address=127.0.0.1:{self.ports['pushgateway']}",
                                    f"--persistence.file={self.root / 'pushgateway.state'}",
                                    "--persistence.interval=5s"])

    def _start_sink(self) -> None:
        env = {**self._child_env(), **self.settings_env(), "MLOPS_STACK_ENV": str(self.env_file)}
        self._spawn("sink", [self.python, "-m", "mlops_assets.monitoring.sink", "--port", str(self.ports["sink"])],
                    env=env, cwd=PROJECT_ROOT)

    def _start_alertmanager(self) -> None:
        config = self.root / "alertmanager.yml"
        config.write_text(alertmanager_config(f"{self.url('sink')}/alerts"))
        data = self.root / "alertmanager"
        data.mkdir(exist_ok=True)
        self._spawn("alertmanager", [_binary("prometheus-alertmanager"), f"--config.file={config}",
                                     f"--storage.path={data}", "--cluster.listen-address=",
                                     f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']}"])

    def _start_prometheus(self) -> None:
        config = self.root / "prometheus.yml"
        config.write_text(prometheus_config(self))
        data = self.root / "prometheus"
        data.mkdir(exist_ok=True)
        self._spawn("prometheus", [_binary("prometheus"), f"--config.file={config}",
                                   f"--storage.tsdb.path={data}",
                                   f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}"])


def alertmanager_config(webhook: str) -> str:
    """deploy/monitoring/alertmanager/alertmanager.yml with the receiver pointed at ``webhook`` and
    no grouping delay (alerts must act, not wait)."""
    text = (PROJECT_ROOT / "deploy/monitoring/alertmanager/alertmanager.yml").read_text()
    text = text.replace("http://127.0.0.1:9095/alerts", webhook)
    return text.replace("group_wait: 10s", "group_wait: 1s").replace("group_interval: 1m", "group_interval: 5s")


def prometheus_config(stack: Stack) -> str:
    rules = PROJECT_ROOT / "deploy/monitoring/prometheus/alerts.yml"
    if stack.alert_for:
        text = re.sub(r"^(\s+)for: \S+$", rf"\1for: {stack.alert_for}", rules.read_text(), flags=re.M)
        rules = stack.root / "alerts.yml"
        rules.write_text(text)
    return json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{stack.ports['alertmanager']}"]}]}]},
        "scrape_configs": [
            {"job_name": "mlops-pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{stack.ports['pushgateway']}"]}]},
            {"job_name": "mlops-serving", "file_sd_configs": [{"files": [str(stack.root / "serving-targets.json")],
                                                               "refresh_interval": "2s"}]},
        ],
    }, indent=1)


# --- process helpers ---------------------------------------------------------------------------
def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not path:
        raise StackError(f"{name} is not installed: run `python3 dev.py stack up` (installs the Debian packages)")
    return path


def _postgres_owner() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("running as root needs the `postgres` user (installed with the postgresql package)") from None
    return "postgres"


def _chown(path: Path, owner: str | None) -> None:
    if owner:
        record = pwd.getpwnam(owner)
        os.chown(path, record.pw_uid, record.pw_gid)


def _as(owner: str | None, command: list[str], log: Path, check: bool = True) -> None:
    full = ["runuser", "-u", owner, "--", *command] if owner else command
    result = subprocess.run(full, capture_output=True, text=True, check=False, cwd="/")
    if check and result.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise StackError(f"postgres: `{' '.join(command)}` failed: {result.stderr.strip()}\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of this process is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _terminate(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM to the service's process group (it was started in its own session), then SIGKILL."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_ports(names=ORDER) -> dict[str, int]:
    sockets, ports = [], {}
    for name in names:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports[name] = sock.getsockname()[1]
    for sock in sockets:
        sock.close()
    return ports


def load(root: Path) -> Stack:
    """The stack rooted at ``root`` with the ports it was started on."""
    ports_file = root / "run" / "ports.json"
    ports = json.loads(ports_file.read_text()) if ports_file.exists() else dict(DEFAULT_PORTS)
    return Stack(root=root, ports=ports)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mlops_assets.stack")
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args(argv)
    stack = load(args.root.resolve())
    try:
        if args.command == "up":
            state = stack.up()
            print(json.dumps(state, indent=1))
            print(f"settings: {stack.env_file}  (MLOPS_PROFILE=stack reads it)")
        elif args.command == "down":
            stack.down()
            print("stack stopped")
        else:
            state = stack.status()
            print(json.dumps(state, indent=1))
            return 0 if all(v.startswith("ready") for v in state.values()) else 1
    except StackError as exc:
        print(f"stack {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0



