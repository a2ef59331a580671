"""SHAP explanations: additivity for the linear and tree explainers on models loaded back from the
MLflow registry, and what the `model_explanations` asset records (plot, top features, MLflow artifact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlops_assets.data.spec import DEMO_SPEC
from mlops_assets.training.explain import SAMPLE_ROWS, explain

from tests.conftest import check_results, make_platform, materialized
from tests.training.conftest import TRAINING_SELECTION, asset_metadata, gate_line, run_config, stored_output

MODELS = {"logistic_regression": ("1", "linear"), "hist_gradient_boosting": ("2", "tree")}


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """v1: logistic regression (promoted); v2: gradient boosting, explained but not promoted."""
    platform = make_platform(tmp_path_factory.mktemp("explain"))
    linear = platform.materialize(TRAINING_SELECTION, run_config())
    assert linear.success
    print(gate_line("explain/logistic_regression", linear))
    tree = platform.materialize(["candidate_model", "model_explanations"],
                                {"ops": {"candidate_model": {"config": {"model_type": "hist_gradient_boosting",
                                                                        "tolerance": 1.0,
                                                                        "gate": {"policy": "plain"}}}}})
    assert tree.success and materialized(tree) == {"candidate_model", "model_explanations"}
    print(gate_line("explain/hist_gradient_boosting", tree))
    return platform, {"logistic_regression": linear, "hist_gradient_boosting": tree}


@pytest.mark.parametrize("model_type", MODELS)
def test_expected_value_plus_shap_values_is_the_raw_output(explained, model_type):
    platform, _ = explained
    version, kind = MODELS[model_type]
    registry = platform.resource("registry")
    model = registry.load_model(version)
    assert type(model.named_steps["clf"]).__name__ == {"logistic_regression": "LogisticRegression",
                                                       "hist_gradient_boosting": "HistGradientBoostingClassifier"}[model_type]
    features = stored_output(platform, "training_set")[DEMO_SPEC.features]
    rows = features.sample(40, random_state=11)
    background = features.sample(100, random_state=12)
    explanation = explain(model, rows, background)
    assert explanation.kind == kind
    assert explanation.values.shape == (40, len(model.named_steps["prep"].get_feature_names_out()))
    raw = np.asarray(model.decision_function(rows), float)  # log-odds, computed independently
    reconstructed = explanation.expected_value + explanation.values.sum(axis=1)
    scale = max(1.0, float(np.abs(raw).max()))
    error = float(np.abs(reconstructed - raw).max())
    assert error <= 1e-6 * scale, f"{kind}: max additivity error {error:.2e} (scale {scale:.2f})"
    assert np.abs(explanation.values).sum() > 0.1 * len(rows), "SHAP values are suspiciously all zero"
    # predicted probabilities are the logistic of that raw output
    np.testing.assert_allclose(model.predict_proba(rows)[:, 1], 1 / (1 + np.exp(-raw)), rtol=1e-9)


@pytest.mark.parametrize("model_type", MODELS)
def test_model_explanations_asset_records_plot_top_features_and_artifact(explained, model_type):
    platform, results = explained
    version, kind = MODELS[model_type]
    registry = platform.resource("registry")
    meta = asset_metadata(results[model_type], "model_explanations")
    assert meta["explainer"] == kind and meta["model_version"] == version
    training = stored_output(platform, "training_set")
    assert meta["rows_explained"] == min(SAMPLE_ROWS, len(training))
    # the plot: a PNG on disk and inline in the UI metadata
    plot = Path(meta["plot"])
    assert plot.name == f"{registry.name}-v{version}-shap.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5_000
    assert meta["summary"].startswith("![SHAP summary](data:image/png;base64,")
    # top features: mean |SHAP| of the same sample, recomputed here, sorted descending
    top = meta["top_features"]
    assert 1 <= len(top) <= 10 and list(top.values()) == sorted(top.values(), reverse=True)
    features = training[DEMO_SPEC.features]
    again = explain(registry.load_model(version), features.sample(min(SAMPLE_ROWS, len(features)), random_state=0),
                    features.sample(min(100, len(features)), random_state=1)).mean_abs().head(10)
    assert list(top) == list(again.index)
    assert list(top.values()) == pytest.approx(again.to_numpy(), abs=1e-5)
    assert top[next(iter(top))] > 0.05
    # the artifact is logged under the candidate's MLflow run, next to the serving background
    run_id = asset_metadata(results[model_type], "candidate_model")["run_id"]
    logged = {artifact.path for artifact in registry.client.list_artifacts(run_id, "explain")}
    assert logged == {f"explain/{plot.name}", "explain/background.parquet"}
    local = registry.client.download_artifacts(run_id, f"explain/{plot.name}", str(plot.parent.parent / f"dl-{version}"))
    assert Path(local).read_bytes() == plot.read_bytes()


def test_tolerance_lets_a_slightly_worse_candidate_through(explained):
    _, results = explained
    tree = results["hist_gradient_boosting"]
    gate = check_results(tree)["beats_champion"]
    meta = {key: value.value for key, value in gate.metadata.items()}
    assert gate.passed and meta["tolerance"] == 1.0
    assert -1.0 <= meta["margin"] < 0, meta
    assert gate.description.startswith("candidate v2 is within tolerance of champion v1: PASS (plain): roc_auc ")
