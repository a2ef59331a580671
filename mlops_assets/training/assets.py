"""Training layer: point-in-time training frame, the fixed holdout, the candidate and its gates."""

import subprocess
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets.data.versioning import DataVersioner
from mlops_assets.features.store import FeatureStoreClient
from mlops_assets.registry.client import CHAMPION, ModelRegistry, RegistryError
from mlops_assets.settings import PROJECT_ROOT, Settings

from .model import PRIMARY_METRIC, build_pipeline, log_model_artifacts, score
from .split import TrainingDataError, split_by_time


class SplitConfig(dg.Config):
    holdout_fraction: float = 0.2


@dg.multi_asset(
    outs={
        "training_set": dg.AssetOut(group_name="training", description="Point-in-time correct training frame (Feast)."),
        "holdout_set": dg.AssetOut(group_name="training", description="The most recent window, DVC-versioned; gates score on it."),
    },
    ins={"dataset": dg.AssetIn()},
    deps=["feature_store"],
)
def training_and_holdout(context: dg.AssetExecutionContext, config: SplitConfig,
                         settings: dg.ResourceParam[Settings], features: dg.ResourceParam[FeatureStoreClient],
                         versioner: dg.ResourceParam[DataVersioner], dataset: pd.DataFrame):
    spec = settings.dataset_spec()
    labels = dataset[[spec.entity, spec.timestamp, spec.target]]
    frame = features.historical_features(labels)
    try:
        train, holdout = split_by_time(frame, spec, config.holdout_fraction)
    except TrainingDataError as exc:
        raise dg.Failure(description=str(exc)) from exc
    holdout_version = versioner.commit_table(holdout, "holdout", message="holdout window")
    dataset_md5 = dataset.attrs.get("dataset_md5", "unknown")
    for part in (train, holdout):
        part.attrs.update(dataset_md5=dataset_md5, holdout_md5=holdout_version.md5)
    context.log.info(f"{len(train):,} training rows, {len(holdout):,} holdout rows (md5 {holdout_version.md5})")
    yield dg.Output(train, output_name="training_set", metadata=_frame_metadata(train, spec, dataset_md5))
    yield dg.Output(holdout, output_name="holdout_set", data_version=dg.DataVersion(holdout_version.md5),
                    metadata={**_frame_metadata(holdout, spec, dataset_md5), "holdout_md5": holdout_version.md5,
                              "dvc_tag": holdout_version.tag})


def _frame_metadata(frame: pd.DataFrame, spec, dataset_md5: str) -> dict[str, Any]:
    return {"rows": len(frame), "label_rate": float(frame[spec.target].mean()),
            "from": str(frame[spec.timestamp].min()), "to": str(frame[spec.timestamp].max()),
            "dataset_md5": dataset_md5}


class TrainingConfig(dg.Config):
    model_type: str = "logistic_regression"
    params: dict[str, Any] = {}
    seed: int = 7
    shuffle_labels: bool = False  # a deliberately worse candidate: shows the gate at work
    tolerance: float = 0.0  # the candidate may trail the champion by this much on the primary metric
    floors: dict[str, float] = {"roc_auc": 0.6, "accuracy": 0.5}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dg.asset(group_name="training", code_version="1",
          description="A trained Pipeline in an MLflow run, registered as a new version with @challenger.")
def candidate_model(context: dg.AssetExecutionContext, config: TrainingConfig,
                    settings: dg.ResourceParam[Settings], registry: dg.ResourceParam[ModelRegistry],
                    training_set: pd.DataFrame, holdout_set: pd.DataFrame) -> dg.Output[dict]:
    import mlflow

    spec = settings.dataset_spec()
    try:
        registry.ensure_reachable()
        model = build_pipeline(spec, config.model_type, config.params, config.seed)
    except (RegistryError, ValueError) as exc:
        raise dg.Failure(description=str(exc)) from exc
    labels = training_set[spec.target].to_numpy()
    if config.shuffle_labels:
        labels = np.random.default_rng(config.seed).permutation(labels)
    model.fit(training_set[spec.features], labels)
    train_metrics, holdout_metrics = score(model, training_set, spec), score(model, holdout_set, spec)
    tags = {"dataset_md5": training_set.attrs.get("dataset_md5", "unknown"),
            "holdout_md5": holdout_set.attrs.get("holdout_md5", "unknown"),
            "feature_service": settings.feature_service, "git_commit": git_commit(),
            "dagster_run_id": context.run.run_id}
    with mlflow.start_run(experiment_id=registry.experiment_id(), run_name=f"{config.model_type}-{context.run.run_id[:8]}",
                          tags={**tags, "holdout_hash": tags["holdout_md5"]}) as run:
        mlflow.log_params({"model_type": config.model_type, "seed": config.seed,
                           "shuffle_labels": config.shuffle_labels, "train_rows": len(training_set),
                           "holdout_rows": len(holdout_set), **{f"clf.{k}": v for k, v in config.params.items()}})
        mlflow.log_metrics({**{f"train_{k}": v for k, v in train_metrics.items()},
                            **{f"holdout_{k}": v for k, v in holdout_metrics.items()}})
        model_uri = log_model_artifacts(model, training_set, spec, config.seed)
    version = registry.register(model_uri, run.info.run_id, tags={**tags, "run_id": run.info.run_id})
    context.log.info(f"registered {registry.name}/{version} as @challenger ({PRIMARY_METRIC} "
                     f"{holdout_metrics[PRIMARY_METRIC]:.4f} on the holdout)")
    result = {"name": registry.name, "version": version, "run_id": run.info.run_id, "model_uri": model_uri,
              "model_type": config.model_type, "metrics": holdout_metrics, "train_metrics": train_metrics,
              "tolerance": config.tolerance, "floors": dict(config.floors), **tags}
    return dg.Output(result, metadata={
        "version": version, "run_id": run.info.run_id, "model_uri": model_uri,
        **{f"holdout_{k}": round(v, 5) for k, v in holdout_metrics.items()},
        "dataset_md5": tags["dataset_md5"], "holdout_md5": tags["holdout_md5"],
    })


@dg.asset_check(asset=candidate_model, blocking=True, additional_ins={"holdout_set": dg.AssetIn()},
                description="The candidate's primary metric on the holdout is at least the champion's (both scored afresh).")
def beats_champion(settings: dg.ResourceParam[Settings], registry: dg.ResourceParam[ModelRegistry],
                   candidate_model: dict, holdout_set: pd.DataFrame) -> dg.AssetCheckResult:
    spec = settings.dataset_spec()
    candidate, holdout_md5 = candidate_model["version"], holdout_set.attrs.get("holdout_md5", "unknown")
    champion = registry.version_of(CHAMPION)
    base = {"metric": PRIMARY_METRIC, "holdout_md5": holdout_md5, "candidate_version": candidate}
    if champion is None or not registry.version_exists(champion):
        why = "first model" if champion is None else f"@champion points at missing version {champion}; treated as first model"
        registry.tag_version(candidate, {"gate.beats_champion": "passed", "gate.reason": why})
        return dg.AssetCheckResult(passed=True, description=why, metadata={**base, "champion_version": "none"})
    candidate_score = score(registry.load_model(candidate), holdout_set, spec)[PRIMARY_METRIC]
    champion_score = score(registry.load_model(champion), holdout_set, spec)[PRIMARY_METRIC]
    margin = candidate_score - champion_score
    passed = margin >= -candidate_model["tolerance"]
    verdict = "beats" if margin > 0 else "ties" if margin == 0 else "is within tolerance of" if passed else "loses to"
    description = (f"candidate v{candidate} {verdict} champion v{champion}: {PRIMARY_METRIC} "
                   f"{candidate_score:.4f} vs {champion_score:.4f} (margin {margin:+.4f}, tolerance {candidate_model['tolerance']})")
    registry.tag_version(candidate, {"gate.beats_champion": "passed" if passed else "failed",
                                     "gate.candidate_score": f"{candidate_score:.6f}", "gate.champion_score": f"{champion_score:.6f}",
                                     "gate.champion_version": champion, "gate.margin": f"{margin:.6f}",
                                     "gate.holdout_md5": holdout_md5, "gate.reason": description})
    return dg.AssetCheckResult(passed=passed, description=description, metadata={
        **base, "champion_version": champion, "candidate_score": candidate_score,
        "champion_score": champion_score, "margin": margin, "tolerance": candidate_model["tolerance"]})


@dg.asset_check(asset=candidate_model, blocking=True, description="Each holdout metric meets its absolute floor.")
def meets_floor(registry: dg.ResourceParam[ModelRegistry], candidate_model: dict) -> dg.AssetCheckResult:
    metrics, floors = candidate_model["metrics"], candidate_model["floors"]
    unknown = [name for name in floors if name not in metrics]
    below = {name: (metrics[name], floor) for name, floor in floors.items() if name in metrics and metrics[name] < floor}
    passed = not below and not unknown
    parts = [f"{name} {value:.4f} < floor {floor}" for name, (value, floor) in below.items()]
    parts += [f"unknown metric {name!r} in floors" for name in unknown]
    registry.tag_version(candidate_model["version"], {"gate.meets_floor": "passed" if passed else "failed"})
    return dg.AssetCheckResult(
        passed=passed, description="; ".join(parts) or "every metric meets its floor",
        metadata={**{f"{k}": v for k, v in metrics.items()}, "floors": dg.MetadataValue.json(floors)})


@dg.asset(group_name="training", code_version="1",
          description="SHAP summary of the candidate on a bounded sample: plot, top features, logged to MLflow.")
def model_explanations(context: dg.AssetExecutionContext, settings: dg.ResourceParam[Settings],
                       registry: dg.ResourceParam[ModelRegistry], candidate_model: dict,
                       training_set: pd.DataFrame) -> dg.MaterializeResult:
    from .explain import SAMPLE_ROWS, explain, markdown_image, summary_plot_png

    spec = settings.dataset_spec()
    features = training_set[spec.features]
    sample = features.sample(min(SAMPLE_ROWS, len(features)), random_state=0)
    background = features.sample(min(100, len(features)), random_state=1)
    explanation = explain(registry.load_model(candidate_model["version"]), sample, background)
    png = summary_plot_png(explanation)
    out_dir = settings.reports_dir / "explanations"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{registry.name}-v{candidate_model['version']}-shap.png"
    path.write_bytes(png)
    registry.client.log_artifact(candidate_model["run_id"], str(path), artifact_path="explain")
    top = explanation.mean_abs().head(10)
    context.log.info("top features: " + ", ".join(f"{k} {v:.3f}" for k, v in top.items()))
    return dg.MaterializeResult(metadata={
        "explainer": explanation.kind, "rows_explained": len(sample), "plot": dg.MetadataValue.path(str(path)),
        "summary": dg.MetadataValue.md(markdown_image(png, "SHAP summary")),
        "top_features": dg.MetadataValue.json({k: round(float(v), 5) for k, v in top.items()}),
        "model_version": candidate_model["version"],
    })
