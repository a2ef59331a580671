"""The Dagster UI of the code location, for real: webserver, GraphQL, headless Chromium.

Issue 5: the UI shows the asset graph with every layer's assets and their lineage (screenshot saved
as an artifact); issue 13: with the two example models, two graphs side by side (``churn/...`` and
``tumor/...``, one group per model and layer). Issue 2 item 6: `dagster definitions validate` passes and the webserver loads the
location with no version-mismatch warnings.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import warnings
from urllib.parse import quote

import pytest

from mlops_assets.settings import PROJECT_ROOT, get_settings
from tests.ui.conftest import ARTIFACTS_DIR, _executable

pytestmark = pytest.mark.integration

GROUPS = {
    "data": {"dataset"},
    "features": {"feature_table", "feature_store", "online_features"},
    "training": {"training_set", "holdout_set", "candidate_model", "model_explanations"},
    "registry": {"champion_model"},
    "deployment": {"inference_service", "batch_predictions", "online_evaluation"},
    "monitoring": {"prediction_log", "model_performance"},
    "drift": {"drift_report"},
}
ALL_ASSETS = sorted(set().union(*GROUPS.values()))
MODELS = ("churn", "tumor")  # examples/models

# The lineage the graph must show (each asset: upstream assets it must depend on).
LINEAGE = {
    "feature_table": {"dataset"},
    "feature_store": {"feature_table"},
    "online_features": {"feature_store"},
    "training_set": {"dataset", "feature_store"},
    "holdout_set": {"dataset", "feature_store"},
    "candidate_model": {"training_set", "holdout_set"},
    "model_explanations": {"candidate_model"},
    "champion_model": {"candidate_model"},
    "inference_service": {"champion_model"},
    "batch_predictions": {"champion_model"},
    "online_evaluation": {"inference_service"},
    "model_performance": {"prediction_log"},
    "drift_report": {"training_set", "prediction_log"},
}

ASSET_NODES = "{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"

MISMATCH = re.compile(r"version mismatch|mismatch.*version|version.*mismatch", re.IGNORECASE)


def _key(path: list[str]) -> str:
    return "/".join(path)


def test_graphql_serves_every_layer_and_its_lineage(webserver):
    nodes = webserver.graphql(ASSET_NODES)["assetNodes"]
    groups: dict[str, set[str]] = {}
    deps: dict[str, set[str]] = {}
    for node in nodes:
        key = _key(node["assetKey"]["path"])
        groups.setdefault(node["groupName"], set()).add(key)
        deps[key] = {_key(dep["path"]) for dep in node["dependencyKeys"]}

    assert groups == {f"{model}_{group}": {f"{model}/{asset}" for asset in assets}
                      for model in MODELS for group, assets in GROUPS.items()}
    for model in MODELS:  # each model's graph is whole and never reaches into the other's
        for asset, upstream in LINEAGE.items():
            key = f"{model}/{asset}"
            assert {f"{model}/{u}" for u in upstream} <= deps[key], \
                f"{key} depends on {sorted(deps[key])}, expected at least {sorted(upstream)}"
            assert all(dep.startswith(f"{model}/") for dep in deps[key]), deps[key]
        assert deps[f"{model}/dataset"] == set()


def test_lineage_shows_one_graph_per_model(webserver, browser_page):
    """The global lineage: the two models' groups (collapsed), as two separate graphs."""
    page = browser_page
    page.goto(f"{webserver.url}/asset-groups")  # "Global asset lineage" in Dagster 1.13
    page.get_by_text("Global asset lineage").wait_for()
    for model in MODELS:  # the groups render collapsed first
        for group in GROUPS:
            page.locator("svg").get_by_text(f"{model}_{group}", exact=True).first.wait_for()
    page.wait_for_load_state("networkidle")
    _screenshot(page, "asset_graph_two_models.png")


@pytest.mark.parametrize("model", MODELS)
def test_each_models_graph_shows_every_asset(webserver, browser_page, model):
    """One model's lineage (filtered by its key prefix), every group expanded: each asset once."""
    page = browser_page
    # the lineage filtered with Dagster's asset selection syntax (what typing it into the search box opens)
    page.goto(f"{webserver.url}/asset-groups~" + quote(f'tag:"mlops/model"="{model}"', safe="") + "/")
    page.locator("svg").get_by_text(f"{model}_data", exact=True).first.wait_for()
    # Expand every group (the graph's own "Expand all groups" shortcut), then reload the URL it
    # writes (`?expanded=...`) so the graph is laid out and zoomed to fit with all groups open.
    page.keyboard.press("Alt+KeyE")
    page.wait_for_url(re.compile(r"[?&]expanded="))
    page.goto(page.url)
    graph = page.locator("svg")
    for asset in ALL_ASSETS:
        node = graph.get_by_text(asset, exact=True)
        node.first.wait_for(state="visible")
        assert node.count() == 1, f"{asset} appears {node.count()} times in {model}'s graph"
    other = next(m for m in MODELS if m != model)
    assert graph.get_by_text(f"{other}_data", exact=True).count() == 0, "the other model's graph is shown too"
    assert not page.get_by_text("Join the Dagster community").is_visible()
    page.wait_for_load_state("networkidle")
    _screenshot(page, f"asset_graph_{model}.png")


def _screenshot(page, name: str) -> None:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS_DIR / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_definitions_validate_passes(tmp_path):
    settings = get_settings({"MLOPS_HOME": str(tmp_path / "home")})
    settings.ensure_dirs()
    result = subprocess.run(
        [_executable("dagster"), "definitions", "validate", "-w", str(PROJECT_ROOT / "workspace.yaml")],
        cwd=PROJECT_ROOT, env=settings.env_for_subprocess(), capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not MISMATCH.search(output), output


def test_webserver_starts_without_version_mismatch_warnings(webserver):
    log = webserver.log()
    assert "Serving dagster-webserver" in log, log[-4000:]
    offending = [line for line in log.splitlines() if MISMATCH.search(line)]
    assert not offending, "\n".join(offending)


def test_installed_dagster_libraries_agree_on_one_release():
    """The check dagster runs when a library registers, over every installed dagster-* package, so
    a lazily imported integration (dagster-k8s, -aws, -mlflow) cannot hide a mismatch."""
    from dagster_shared.libraries import check_dagster_package_version

    libraries = {dist.metadata["Name"].lower(): dist.version for dist in importlib.metadata.distributions()
                 if dist.metadata["Name"].lower().startswith("dagster-")}
    assert {"dagster-webserver", "dagster-graphql", "dagster-k8s", "dagster-aws", "dagster-mlflow",
            "dagster-pandera"} <= set(libraries), libraries
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, version in libraries.items():
            check_dagster_package_version(name, version)
    assert not caught, [str(w.message) for w in caught]
