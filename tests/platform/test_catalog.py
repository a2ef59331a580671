"""Many models in one code location: model specs, the asset factory, and the bad specs of issue 13
(each a clear error naming the file and the field; the other models still load)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.catalog import ModelSpecError, load_catalog, read_spec
from mlops_assets.definitions import build_definitions
from mlops_assets.naming import RunModelError, run_model
from mlops_assets.settings import PROJECT_ROOT, SettingsError, get_settings

EXAMPLES = PROJECT_ROOT / "examples" / "models"
TUMOR = yaml.safe_load((EXAMPLES / "tumor.yaml").read_text())


def models_dir(tmp_path: Path, **specs) -> Path:
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    shutil.copy(EXAMPLES / "churn.yaml", folder / "churn.yaml")
    for name, spec in specs.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec) if isinstance(spec, dict) else spec)
    return folder


def settings_for(tmp_path: Path, folder: Path, **env):
    return get_settings({"MLOPS_HOME": str(tmp_path / "home"), "MLOPS_MODELS_DIR": str(folder), **env})


def test_the_example_folder_holds_two_models_with_their_own_settings(tmp_path):
    settings = settings_for(tmp_path, EXAMPLES)
    catalog = settings.catalog()
    assert catalog.names == ["churn", "tumor"] and catalog.errors == ()
    tumor = settings.for_model(catalog.get("tumor"))
    spec = tumor.dataset_spec()
    assert (spec.entity, spec.target, spec.categorical) == ("patient_id", "malignant", ())
    assert tumor.drift_threshold == 0.5 and tumor.retrain_cooldown_minutes == 5
    assert tumor.feature_service == "tumor_v1"
    # each model of a folder keeps its state apart; Dagster and MLflow stay shared
    assert tumor.model_home == settings.home / "models" / "tumor"
    assert tumor.serving_dir == tumor.model_home / "serving" and tumor.data_repo == tumor.model_home / "data"
    assert tumor.dagster_home == settings.dagster_home and tumor.mlflow_dir == settings.mlflow_dir
    # the selected model (first by default, or MLOPS_MODEL_NAME)
    assert settings.model_name == "churn"
    assert settings_for(tmp_path, EXAMPLES, MLOPS_MODEL_NAME="tumor").model_name == "tumor"


def test_without_a_folder_the_built_in_model_keeps_todays_layout(tmp_path):
    settings = get_settings({"MLOPS_HOME": str(tmp_path)})
    assert settings.catalog().names == ["churn"]
    churn = settings.for_model(settings.catalog().get())
    assert churn.model_home == settings.home and churn.serving_dir == settings.home / "serving"
    assert churn.feature_service == "churn_v1"


def test_each_model_is_its_own_graph_with_its_own_jobs_sensors_and_schedules(tmp_path):
    defs = build_definitions(settings_for(tmp_path, EXAMPLES))
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    for model in ("churn", "tumor"):
        assert {f"{model}/dataset", f"{model}/candidate_model", f"{model}/inference_service"} <= keys
        job = defs.resolve_job_def(f"{model}_retrain_job")
        assert {k.path[0] for k in job.asset_layer.executable_asset_keys} == {model}
        assert job.tags["mlops/model"] == model
        assert {f"{model}_drift_sensor", f"{model}_performance_sensor"} <= {s.name for s in defs.sensors}
        assert f"{model}_online_features_refresh" in {s.name for s in defs.schedules}
    assert {spec.group_name for spec in (graph.get(k).to_asset_spec() for k in graph.get_all_asset_keys())} == {
        f"{m}_{layer}" for m in ("churn", "tumor")
        for layer in ("data", "features", "training", "registry", "deployment", "monitoring", "drift")}
    # every check of a model checks that model's assets (and reads its holdout)
    check_keys = {f"{c.asset_key.to_user_string()}:{c.name}" for c in graph.asset_check_keys}
    assert {"tumor/candidate_model:beats_champion", "churn/candidate_model:beats_champion"} <= check_keys
    # the spec's training and serving settings are the tumor job's run config defaults
    config = dg.validate_run_config(defs.resolve_job_def("tumor_retrain_job"))
    assert config["ops"]["candidate_model"]["config"]["floors"] == {"roc_auc": 0.9, "accuracy": 0.8}
    assert config["ops"]["candidate_model"]["config"]["gate"]["policy"] == "non_inferiority"
    assert config["ops"]["inference_service"]["config"]["canary_percent"] == 20


def test_automatic_retrains_merge_retrain_yaml_over_the_spec(tmp_path):
    from mlops_assets.automation import retrain_run_config

    tumor = settings_for(tmp_path, EXAMPLES, MLOPS_MODEL_NAME="tumor")
    tumor.model_home.mkdir(parents=True)
    (tumor.model_home / "retrain.yaml").write_text("ops: {candidate_model: {config: {shuffle_labels: true}}}")
    config = retrain_run_config(tumor)["ops"]["candidate_model"]["config"]
    assert config["shuffle_labels"] is True and config["floors"] == {"roc_auc": 0.9, "accuracy": 0.8}


@pytest.mark.parametrize("spec, field", [
    ({**TUMOR, "trainng": {}}, "trainng: unknown field"),
    ({**TUMOR, "name": "Tumor Model"}, "name: 'Tumor Model' must be lower-case"),
    ({**TUMOR, "dataset": None}, "dataset: missing"),
    ({**TUMOR, "gate": {"policy": "best"}}, "gate.policy: 'best' is not one of"),
    ({**TUMOR, "gate": {"level": 1.5}}, "gate.level: 1.5 is outside (0, 1]"),
    ({**TUMOR, "drift": {"threshold": 0}}, "drift.threshold: 0 is outside (0, 1]"),
    ({**TUMOR, "training": {"model_typ": "x"}}, "training.model_typ: unknown field"),
    ({**TUMOR, "serving": {"canary_percent": 100}}, "serving.canary_percent: 100 is outside [1, 99]"),
    ({**TUMOR, "dataset": {**TUMOR["dataset"], "numeric": ["mean_radius", "tumour_size"]}},
     "dataset: numeric: column 'tumour_size' is not in sklearn:breast_cancer"),
    ({**TUMOR, "dataset": {**TUMOR["dataset"], "target": "benign"}},
     "dataset: target: column 'benign' is not in sklearn:breast_cancer"),
    ("name: [unclosed", "not valid YAML"),
])
def test_a_bad_spec_names_its_file_and_field_and_the_other_models_still_load(tmp_path, spec, field):
    folder = models_dir(tmp_path, tumor=spec)
    with pytest.raises(ModelSpecError) as error:
        read_spec(folder / "tumor.yaml")
    assert str(folder / "tumor.yaml") in str(error.value) and field in str(error.value)
    catalog = settings_for(tmp_path, folder).catalog()
    assert catalog.names == ["churn"] and len(catalog.errors) == 1 and field in catalog.errors[0]
    defs = build_definitions(settings_for(tmp_path, folder))
    keys = {key.path[0] for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"churn"}
    assert field in str(defs.metadata["model_spec_errors"].value)


def test_a_csv_dataset_lacking_a_declared_column_is_named_at_load(tmp_path):
    csv = tmp_path / "scores.csv"
    csv.write_text("id,ts,x,y\n1,2025-01-01,0.5,1\n")
    spec = {"name": "scores", "dataset": {"source": str(csv), "entity": "id", "timestamp": "ts", "target": "y",
                                          "numeric": ["x", "z"]}}
    folder = models_dir(tmp_path, scores=spec)
    [error] = settings_for(tmp_path, folder).catalog().errors
    assert str(folder / "scores.yaml") in error and "numeric: column 'z' is not in" in error


def test_two_specs_with_the_same_name_keep_the_first_and_name_both_files(tmp_path):
    folder = models_dir(tmp_path, tumor=TUMOR, zz_tumor_again=TUMOR)
    catalog = load_catalog(folder, default=None)
    assert catalog.names == ["churn", "tumor"]
    [error] = catalog.errors
    assert str(folder / "zz_tumor_again.yaml") in error and str(folder / "tumor.yaml") in error
    assert "name: 'tumor' is already the name of the model" in error


def test_an_unknown_model_or_an_empty_folder_is_a_clear_settings_error(tmp_path):
    with pytest.raises(SettingsError, match=r"no model named 'fraud' \(models: churn, tumor\)"):
        settings_for(tmp_path, EXAMPLES, MLOPS_MODEL_NAME="fraud")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SettingsError, match="holds no \\*.yaml model spec"):
        settings_for(tmp_path, empty)
    with pytest.raises(SettingsError, match="is not a folder"):
        settings_for(tmp_path, tmp_path / "missing")


def test_a_run_belongs_to_one_model(tmp_path):
    models = ["churn", "tumor"]

    def run(tags=None, assets=None):
        return dg.DagsterRun(job_name="__ASSET_JOB", tags=tags or {},
                             asset_selection=frozenset(dg.AssetKey(a.split("/")) for a in assets) if assets else None)

    assert run_model(run(tags={"mlops/model": "tumor"}), models) == "tumor"
    assert run_model(run(assets=["tumor/dataset", "tumor/feature_table"]), models) == "tumor"
    assert run_model(run(), ["churn"]) == "churn"
    with pytest.raises(RunModelError, match="one model's assets at a time; this one selects churn, tumor"):
        run_model(run(assets=["churn/dataset", "tumor/dataset"]), models)
    with pytest.raises(RunModelError, match="cannot tell which model"):
        run_model(run(), models)
    with pytest.raises(RunModelError, match="names no model"):
        run_model(run(tags={"mlops/model": "fraud"}), models)


def test_the_code_location_loads_with_a_bad_spec_through_dagster(tmp_path):
    """What an operator sees: ``dagster definitions validate`` passes and logs the skipped spec."""
    folder = models_dir(tmp_path, tumor={**TUMOR, "gate": {"level": 2}})
    settings = settings_for(tmp_path, folder)
    settings.ensure_dirs()
    env = {**settings.env_for_subprocess(), "MLOPS_MODELS_DIR": str(folder)}
    result = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate",
                             "-m", "mlops_assets.definitions"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "model spec skipped" in output and "gate.level: 2 is outside (0, 1]" in output


def test_the_fast_linear_scorer_handles_a_numeric_only_model():
    """Found by the tumor model: a pipeline whose categorical branch has no columns (never fitted)
    still compiles to the numpy scorer, and it agrees with scikit-learn."""
    import numpy as np

    from mlops_assets.serving.predictor import compile_linear_scorer
    from mlops_assets.serving.validation import FeatureSchema
    from mlops_assets.training.model import build_pipeline

    spec = read_spec(EXAMPLES / "tumor.yaml").dataset
    from mlops_assets.data.load import read_source

    frame = read_source(spec)
    pipeline = build_pipeline(spec, "logistic_regression", {}, seed=7).fit(frame[spec.features], frame[spec.target])
    scorer = compile_linear_scorer(pipeline, FeatureSchema.from_spec(spec))
    assert scorer is not None
    columns = {name: frame[name].tolist() for name in spec.features}
    np.testing.assert_allclose(scorer(columns), pipeline.predict_proba(frame[spec.features])[:, 1], rtol=1e-9)


def test_in_k8s_each_model_has_its_deploy_job_and_its_own_inference_service(tmp_path):
    from mlops_assets.deployment.manifests import render_inference_service
    from tests.k8s_profile.conftest import SERVING_IMAGE, k8s_env

    settings = get_settings({**k8s_env(tmp_path), "MLOPS_MODELS_DIR": str(EXAMPLES)})
    defs = build_definitions(settings)
    for model in settings.catalog().models:
        job = defs.resolve_job_def(f"{model.name}_deploy_job")
        assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {f"{model.name}/inference_service"}
        manifest = render_inference_service(settings.for_model(model), f"models:/{model.name}/1", 1, SERVING_IMAGE)
        assert manifest["metadata"]["name"] == model.name
    sensors = {s.name: s for s in defs.sensors}
    assert {"churn_deploy_new_champion", "tumor_deploy_new_champion"} <= set(sensors)
