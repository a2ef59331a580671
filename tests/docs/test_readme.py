"""Documentation that runs: every shell line of README.md that a user can run on the local profile
is executed here, as written, against a real served model. The only changes are the ones a reader
makes: `PORT` becomes the served port, and the sizes shrink (`SMALLER`). A README line this test
neither runs nor names in `NOT_RUN` fails the test, so a new example cannot go untested."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import restore_environment
import yaml

from mlops_assets.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration

README = PROJECT_ROOT / "README.md"

# Lines not run, by their start, and why.
NOT_RUN = {
    "python3 dev.py demo": "the whole demo; tests/loop runs it against the real daemon",
    "python3 dev.py test": "runs this very test suite",
    "DAGSTER_HOME=$PWD/.mlops/dagster .venv/bin/dagster dev": "a long-running UI server",
    "MLOPS_DATASET_CONFIG=$PWD/my_dataset.yaml .venv/bin/dagster dev": "a long-running UI server (the next line "
                                                                       "checks the same config)",
    ".venv/bin/python benchmarks/loop_benchmark.py": "the whole closed loop; tests/loop runs it",
    "python3 dev.py stack": "the stack profile's services: tests/stack starts the same services itself",
    "MLOPS_PROFILE=stack python3 dev.py demo": "the stack demo: tests/stack/test_stack_loop.py runs it",
    ".venv/bin/python benchmarks/stack_benchmark.py": "both closed loops, local and stack; tests/stack runs the stack loop",
}

# The sizes a reader shrinks to try a command quickly.
SMALLER = [
    (r"--requests 500 --rate 50", "--requests 40 --rate 20"),
    (r"--sizes [0-9,]+", "--sizes 2000"),
    (r"(benchmarks/catalog_benchmark\.py)", r"\1 --repeat 1"),
    (r"(benchmarks/feast_import_benchmark\.py)", r"\1 --runs 1"),
    (r"(benchmarks/gate_benchmark\.py)", r"\1 --retrains 2 --rows 1500 --resamples 100"),
    (r"(benchmarks/serving_benchmark\.py)", r"\1 --requests 200 --seconds 2 --replicas 1 --home $MLOPS_HOME"),
]


def bash_lines(text: str) -> list[tuple[str, str]]:
    """(section heading, command) for every non-empty line of every ```bash block."""
    lines, section, block = [], "", False
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```"):
            block = line.strip() == "```bash" and not block
        elif block and line.strip() and not line.lstrip().startswith("#"):
            lines.append((section, line.strip()))
    return lines


def yaml_block(text: str, first_line: str) -> str:
    match = re.search(r"```yaml\n(" + re.escape(first_line) + r".*?)```", text, re.S)
    assert match, f"no yaml block starting with {first_line!r}"
    return match.group(1)


def shrink(command: str) -> str:
    for pattern, replacement in SMALLER:
        command = re.sub(pattern, replacement, command)
    return command


def run(command: str, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], env=env, cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A MLOPS_HOME with a registered @champion served by the local backend (one replica)."""
    from tests.serving.conftest import build_world

    home = tmp_path_factory.mktemp("readme-home")
    saved = {key: os.environ.get(key) for key in ("MLOPS_HOME",)}
    os.environ["MLOPS_HOME"] = str(home)
    from mlops_assets.serving.backend_local import LocalServingBackend

    world = build_world(home)
    world.settings = replace(world.settings, serving_replicas=1)
    backend = LocalServingBackend(world.settings)
    try:
        state = backend.deploy(world.versions["stable"])
        yield world, state["endpoint"]
    finally:
        backend.stop()
        restore_environment(saved)


def test_every_readme_shell_line_runs_on_the_local_profile(served, tmp_path):
    world, endpoint = served
    text = README.read_text()
    lines = bash_lines(text)
    port = endpoint.rsplit(":", 1)[1]
    env = {**world.settings.serving_env(), "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    scratch = tmp_path / "benchmarks-copy"  # benchmarks write their results next to themselves
    shutil.copytree(PROJECT_ROOT / "benchmarks", scratch / "benchmarks", ignore=shutil.ignore_patterns("results"))
    (scratch / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    byo = byo_dataset(world, text, tmp_path / "byo")

    ran, problems = [], []
    for section, line in lines:
        if any(line.startswith(prefix) for prefix in NOT_RUN):
            continue
        command, cwd, line_env = shrink(line.replace("PORT", port)), PROJECT_ROOT, env
        if "benchmarks/" in command:
            cwd = scratch
        if "my_dataset.yaml" in command:
            cwd, line_env = byo, {**env, "MLOPS_HOME": str(tmp_path / "byo-home")}
        done = run(command, line_env, cwd)
        ran.append(line)
        problem = check(line, done)
        if problem:
            problems.append(f"[{section}] {line}\n  -> {problem}\n  stdout: {done.stdout[-800:]}\n"
                            f"  stderr: {done.stderr[-1500:]}")
    assert problems == [], "\n".join(problems)
    documented = {line for _, line in lines}
    assert documented == set(ran) | {line for line in documented if any(line.startswith(p) for p in NOT_RUN)}
    assert any("curl" in line for line in ran) and any("mlops stop" in line for line in ran)
    assert any("gate_benchmark" in line for line in ran)
    assert any("serving_benchmark" in line for line in ran) and any("my_dataset.yaml" in line for line in ran)


def check(line: str, done: subprocess.CompletedProcess) -> str | None:
    """What the output of a README line must show, beyond a zero exit code."""
    if done.returncode != 0:
        return f"exit code {done.returncode}"
    if line.startswith("curl"):
        try:
            body = json.loads(done.stdout)
        except ValueError:
            return "not a JSON answer"
        if ":predict" in line and not (len(body.get("predictions", [])) == 1 and "model_version" in body):
            return "no prediction in the answer"
        if ":explain" in line and "shap_values" not in body.get("explanations", [{}])[0]:
            return "no SHAP values in the answer"
        if "/v2/models/churn" in line and not (body.get("inputs") and body.get("outputs")):
            return "metadata without inputs or outputs"
    if "mlops status" in line and not json.loads(done.stdout)["serving"]["running"]:
        return "status does not show serving running"
    if "mlops simulate" in line and "(0 failed)" not in done.stdout:
        return "simulated requests failed"
    if "serving_benchmark" in line and not re.search(r"\nentity_path +\d", done.stdout):
        return "no entity-path figures"
    if "drift_benchmark" in line and "written" not in done.stdout:
        return "no drift results written"
    return None


def byo_dataset(world, text: str, directory: Path) -> Path:
    """The README's bring-your-own config, as written, next to the table it names."""
    directory.mkdir(parents=True)
    (directory / ".venv").symlink_to(PROJECT_ROOT / ".venv")  # run from the config's folder, as from the repo
    config = yaml_block(text, "# my_dataset.yaml")
    (directory / "my_dataset.yaml").write_text(config)
    spec = yaml.safe_load(config)
    data = world.data.rename(columns={"churned": spec["target"]})
    columns = [spec["entity"], spec["timestamp"], spec["target"], *spec["numeric"], *spec["categorical"]]
    pd.DataFrame(data[columns]).to_parquet(directory / spec["source"], index=False)
    return directory
