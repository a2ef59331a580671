"""Training layer: point-in-time training frame, the fixed holdout, the candidate and its gates."""

import math
import subprocess
from typing import Any, Optional

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets.data.versioning import DataVersioner, DataVersionError
from mlops_assets.features.store import FeatureStoreClient
from mlops_assets.monitoring.stores import LocalMonitoring
from mlops_assets.registry.client import CHAMPION, ModelRegistry, RegistryError
from mlops_assets.settings import PROJECT_ROOT, Settings

from .gate import GateConfigError, GatePlan, auc, compare, non_finite
from .model import PRIMARY_METRIC, build_pipeline, log_model_artifacts, positive_scores, score
from .split import SplitPlan, TrainingDataError, class_counts, split

AUTOMATIC_TRIGGER_TAG = "mlops/trigger"  # set by the sensors and schedules: an automatic retrain


class SplitConfig(dg.Config):
    strategy: str = "time"  # time | stratified_time | random (see split.py)
    holdout_fraction: float = 0.2
    seed: int = 0  # random strategy only
    min_class_count: int = 10  # rows of each class each side must have

    def plan(self) -> SplitPlan:
        return SplitPlan(self.strategy, self.holdout_fraction, self.seed, self.min_class_count)


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
    dataset_md5 = dataset.attrs.get("dataset_md5", "unknown")
    plan = config.plan()
    try:
        frame = features.historical_features(labels)
        train, holdout = split(frame, spec, plan, dataset_md5)
    except TrainingDataError as exc:
        raise dg.Failure(description=str(exc)) from exc
    holdout_version = versioner.commit_table(holdout, "holdout", message=f"holdout ({plan.strategy} split)")
    counts = {"training": class_counts(train, spec), "holdout": class_counts(holdout, spec)}
    for part in (train, holdout):
        part.attrs.update(dataset_md5=dataset_md5, holdout_md5=holdout_version.md5, split=plan.params(),
                          class_counts=counts)
    context.log.info(f"{plan.strategy} split: {len(train):,} training rows {counts['training']}, "
                     f"{len(holdout):,} holdout rows {counts['holdout']} (md5 {holdout_version.md5})")
    yield dg.Output(train, output_name="training_set", metadata=_frame_metadata(train, spec, dataset_md5, plan))
    yield dg.Output(holdout, output_name="holdout_set", data_version=dg.DataVersion(holdout_version.md5),
                    metadata={**_frame_metadata(holdout, spec, dataset_md5, plan), "holdout_md5": holdout_version.md5,
                              "dvc_tag": holdout_version.tag})


def _frame_metadata(frame: pd.DataFrame, spec, dataset_md5: str, plan: SplitPlan) -> dict[str, Any]:
    return {"rows": len(frame), "label_rate": float(frame[spec.target].mean()),
            "from": str(frame[spec.timestamp].min()), "to": str(frame[spec.timestamp].max()),
            "dataset_md5": dataset_md5, **plan.params(), **class_counts(frame, spec)}


class GateConfig(dg.Config):
    policy: Optional[str] = None  # superiority | non_inferiority | plain; None: by trigger (automatic -> superiority)
    margin: float = 0.01  # non_inferiority: the candidate may be this much worse (ROC AUC)
    resamples: int = 1000  # paired bootstrap resamples
    level: float = 0.95  # confidence level of the interval
    seed: int = 0


class TrainingConfig(dg.Config):
    model_type: str = "logistic_regression"
    params: dict[str, Any] = {}
    seed: int = 7
    shuffle_labels: bool = False  # a deliberately worse candidate: shows the gate at work
    tolerance: float = 0.0  # plain policy: the candidate's point score may trail the champion's by this much
    floors: dict[str, float] = {"roc_auc": 0.6, "accuracy": 0.5}
    gate: GateConfig = GateConfig()
    golden_holdout: Optional[str] = None  # DVC md5, tag or git revision of a recorded holdout, scored as well


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_golden_holdout(versioner: DataVersioner, spec, ref: str) -> pd.DataFrame:
    """A recorded holdout by DVC md5 (32 hex digits) or by tag/git revision, with the spec's columns."""
    is_md5 = len(ref) == 32 and all(c in "0123456789abcdef" for c in ref.lower())
    try:
        frame = versioner.read_table("holdout", md5=ref) if is_md5 else versioner.read_table("holdout", rev=ref)
    except DataVersionError as exc:
        raise DataVersionError(f"golden holdout {ref!r} does not exist: {exc}") from exc
    missing = [c for c in [*spec.features, spec.target] if c not in frame.columns]
    if missing:
        raise DataVersionError(f"golden holdout {ref!r} lacks the columns {', '.join(missing)}")
    return frame


@dg.asset(group_name="training", code_version="2",
          description="A trained Pipeline in an MLflow run, registered as a new version with @challenger.")
def candidate_model(context: dg.AssetExecutionContext, config: TrainingConfig,
                    settings: dg.ResourceParam[Settings], registry: dg.ResourceParam[ModelRegistry],
                    versioner: dg.ResourceParam[DataVersioner],
                    training_set: pd.DataFrame, holdout_set: pd.DataFrame) -> dg.Output[dict]:
    import mlflow

    spec = settings.dataset_spec()
    trigger = context.run.tags.get(AUTOMATIC_TRIGGER_TAG)
    try:
        gate = GatePlan.resolve(config.gate.policy, automatic=bool(trigger), margin=config.gate.margin,
                                tolerance=config.tolerance, resamples=config.gate.resamples,
                                level=config.gate.level, seed=config.gate.seed)
        golden = read_golden_holdout(versioner, spec, config.golden_holdout) if config.golden_holdout else None
        registry.ensure_reachable()
        model = build_pipeline(spec, config.model_type, config.params, config.seed)
    except (RegistryError, ValueError, GateConfigError, DataVersionError) as exc:
        raise dg.Failure(description=f"nothing registered: {exc}") from exc
    labels = training_set[spec.target].to_numpy()
    if config.shuffle_labels:
        labels = np.random.default_rng(config.seed).permutation(labels)
    model.fit(training_set[spec.features], labels)
    train_metrics, holdout_metrics = score(model, training_set, spec), score(model, holdout_set, spec)
    golden_metrics = score(model, golden, spec) if golden is not None else {}
    split_params, counts = holdout_set.attrs.get("split", {}), holdout_set.attrs.get("class_counts", {})
    dataset_md5 = training_set.attrs.get("dataset_md5", "unknown")
    undefined = {**non_finite(train_metrics), **non_finite(holdout_metrics),
                 **{f"golden_{k}": v for k, v in non_finite(golden_metrics).items()}}
    if undefined:
        raise dg.Failure(description=(
            f"nothing registered: undefined metrics {undefined} for dataset {dataset_md5}, split "
            f"{split_params.get('split.strategy', 'unknown')}, class counts {counts}"))
    tags = {"dataset_md5": dataset_md5, "holdout_md5": holdout_set.attrs.get("holdout_md5", "unknown"),
            "feature_service": settings.feature_service, "git_commit": git_commit(),
            "dagster_run_id": context.run.run_id, "split.strategy": str(split_params.get("split.strategy", "time")),
            "gate.policy": gate.policy, "trigger": trigger or "manual"}
    params = {"model_type": config.model_type, "seed": config.seed, "shuffle_labels": config.shuffle_labels,
              "train_rows": len(training_set), "holdout_rows": len(holdout_set), **split_params,
              **{f"{side}_{label}": n for side, c in counts.items() for label, n in c.items()},
              **{f"gate.{k}": v for k, v in gate.as_dict().items()},
              **{f"clf.{k}": v for k, v in config.params.items()}}
    with mlflow.start_run(experiment_id=registry.experiment_id(), run_name=f"{config.model_type}-{context.run.run_id[:8]}",
                          tags={**tags, "holdout_hash": tags["holdout_md5"]}) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({**{f"train_{k}": v for k, v in train_metrics.items()},
                            **{f"holdout_{k}": v for k, v in holdout_metrics.items()},
                            **{f"golden_{k}": v for k, v in golden_metrics.items()}})
        model_uri = log_model_artifacts(model, training_set, spec, config.seed)
    version = registry.register(model_uri, run.info.run_id, tags={**tags, "run_id": run.info.run_id})
    context.log.info(f"registered {registry.name}/{version} as @challenger ({PRIMARY_METRIC} "
                     f"{holdout_metrics[PRIMARY_METRIC]:.4f} on the holdout; gate policy {gate.policy})")
    result = {"name": registry.name, "version": version, "run_id": run.info.run_id, "model_uri": model_uri,
              "model_type": config.model_type, "metrics": holdout_metrics, "train_metrics": train_metrics,
              "tolerance": config.tolerance, "floors": dict(config.floors), "gate": gate.as_dict(),
              "golden_holdout": config.golden_holdout, "golden_metrics": golden_metrics,
              "split": split_params, "class_counts": counts, **tags}
    return dg.Output(result, metadata={
        "version": version, "run_id": run.info.run_id, "model_uri": model_uri,
        **{f"holdout_{k}": round(v, 5) for k, v in holdout_metrics.items()},
        **{f"golden_{k}": round(v, 5) for k, v in golden_metrics.items()},
        "dataset_md5": tags["dataset_md5"], "holdout_md5": tags["holdout_md5"], "gate_policy": gate.policy,
        **split_params, "class_counts": dg.MetadataValue.json(counts),
    })


def beats_champion_check(prefix: str | None = None) -> dg.AssetChecksDefinition:
    """The check on ``<prefix>/candidate_model`` reading ``<prefix>/holdout_set`` (the asset factory
    builds one per model: a prefix given when loading checks does not reach ``additional_ins``)."""
    def key(name: str) -> dg.AssetKey:
        return dg.AssetKey([prefix, name] if prefix else [name])

    return dg.asset_check(
        asset=key("candidate_model"), name="beats_champion", blocking=True,
        additional_ins={"holdout_set": dg.AssetIn(key=key("holdout_set"))},
        description="Candidate vs champion on the same holdout: a paired bootstrap interval of the "
                    "ROC AUC difference decides (superiority, non-inferiority or plain).")(_beats_champion)


def _beats_champion(context: dg.AssetCheckExecutionContext, settings: dg.ResourceParam[Settings],
                    registry: dg.ResourceParam[ModelRegistry], versioner: dg.ResourceParam[DataVersioner],
                    candidate_model: dict, holdout_set: pd.DataFrame) -> dg.AssetCheckResult:
    spec = settings.dataset_spec()
    plan = GatePlan(**candidate_model["gate"])
    candidate, holdout_md5 = candidate_model["version"], holdout_set.attrs.get("holdout_md5", "unknown")
    champion = alias_target = registry.version_of(CHAMPION)
    first = "first model"
    if champion is not None and not registry.version_exists(champion):
        champion, first = None, f"@champion points at missing version {champion}; treated as first model"
    y = holdout_set[spec.target].to_numpy()
    candidate_scores = positive_scores(registry.load_model(candidate), holdout_set, spec)
    base = {"metric": PRIMARY_METRIC, "holdout_md5": holdout_md5, "candidate_version": candidate,
            "champion_version": champion or "none", "policy": plan.policy}
    tags = {"gate.run_id": context.run.run_id, "gate.policy": plan.policy, "gate.holdout_md5": holdout_md5,
            "gate.champion_version": alias_target or "none"}
    if champion is None:
        finite = math.isfinite(auc(y, candidate_scores))
        description = first if finite else f"{first}, but its roc_auc on the holdout is undefined (NaN)"
        registry.tag_version(candidate, {**tags, "gate.beats_champion": "passed" if finite else "failed",
                                         "gate.reason": description})
        return dg.AssetCheckResult(passed=finite, description=description, metadata=base)
    champion_scores = positive_scores(registry.load_model(champion), holdout_set, spec)
    result = compare(plan, y, candidate_scores, champion_scores)
    golden = _golden_scores(versioner, registry, spec, candidate_model, candidate, champion)
    description = f"candidate v{candidate} {_verdict(result, plan)} champion v{champion}: {result.description}"
    registry.tag_version(candidate, {**tags, **result.tags(), **golden, "gate.level": plan.level,
                                     "gate.resamples": plan.resamples,
                                     "gate.beats_champion": "passed" if result.passed else "failed",
                                     "gate.reason": description[:4000]})
    return dg.AssetCheckResult(passed=result.passed, description=description, metadata={
        **base, "candidate_score": result.candidate_score, "champion_score": result.champion_score,
        "margin": result.difference, "ci_low": result.low, "ci_high": result.high, "level": plan.level,
        "resamples": plan.resamples, "tolerance": plan.tolerance, "non_inferiority_margin": plan.margin,
        **{k.replace("gate.", ""): float(v) for k, v in golden.items()}})


beats_champion = beats_champion_check()


def _verdict(result, plan: GatePlan) -> str:
    if not result.passed:
        return "does not beat, beyond noise," if result.difference >= 0 else "loses to"
    if result.difference > 0:
        return "beats"
    if result.difference == 0:
        return "ties"
    return "is within tolerance of" if plan.policy == "plain" else "is not inferior to"


def _golden_scores(versioner, registry, spec, candidate_model: dict, candidate: str, champion: str) -> dict[str, str]:
    """Both models' ROC AUC on the pinned golden holdout (recorded, not gated), if one is set."""
    ref = candidate_model.get("golden_holdout")
    if not ref:
        return {}
    golden = read_golden_holdout(versioner, spec, ref)
    y = golden[spec.target].to_numpy()
    return {f"gate.golden_{who}_score": f"{auc(y, positive_scores(registry.load_model(v), golden, spec)):.6f}"
            for who, v in (("candidate", candidate), ("champion", champion))}


@dg.asset_check(asset=candidate_model, blocking=True,
                description="Each holdout metric meets its absolute floor; an undefined (NaN/inf) metric fails.")
def meets_floor(context: dg.AssetCheckExecutionContext, registry: dg.ResourceParam[ModelRegistry],
                candidate_model: dict) -> dg.AssetCheckResult:
    metrics, floors = candidate_model["metrics"], candidate_model["floors"]
    undefined = non_finite(metrics)
    unknown = [name for name in floors if name not in metrics]
    below = {name: (metrics[name], floor) for name, floor in floors.items()
             if name in metrics and name not in undefined and not metrics[name] >= floor}
    passed = not below and not unknown and not undefined
    parts = [f"{name} {value:.4f} < floor {floor}" for name, (value, floor) in below.items()]
    parts += [f"unknown metric {name!r} in floors" for name in unknown]
    parts += [f"{name} is undefined ({value})" for name, value in undefined.items()]
    registry.tag_version(candidate_model["version"], {"gate.meets_floor": "passed" if passed else "failed",
                                                      "gate.run_id": context.run.run_id})
    return dg.AssetCheckResult(
        passed=passed, description="; ".join(parts) or "every metric meets its floor",
        metadata={**{f"{k}": v for k, v in metrics.items() if k not in undefined},
                  "undefined": dg.MetadataValue.json({k: str(v) for k, v in undefined.items()}),
                  "floors": dg.MetadataValue.json(floors)})


# Nothing downstream needs it (serving warms its own explainer from the background candidate_model
# logs): a lower priority runs it after the release steps, so the rollout does not wait for SHAP.
@dg.asset(group_name="training", code_version="1", op_tags={"dagster/priority": "-1"},
          description="SHAP summary of the candidate on a bounded sample: plot, top features, logged to MLflow.")
def model_explanations(context: dg.AssetExecutionContext, settings: dg.ResourceParam[Settings],
                       registry: dg.ResourceParam[ModelRegistry], monitoring: dg.ResourceParam[LocalMonitoring],
                       candidate_model: dict,
                       training_set: pd.DataFrame) -> dg.MaterializeResult:
    from .explain import SAMPLE_ROWS, explain, markdown_image, summary_plot_png

    spec = settings.dataset_spec()
    features = training_set[spec.features]
    sample = features.sample(min(SAMPLE_ROWS, len(features)), random_state=0)
    background = features.sample(min(100, len(features)), random_state=1)
    explanation = explain(registry.load_model(candidate_model["version"]), sample, background)
    png = summary_plot_png(explanation)
    path = monitoring.report_path(f"explanations/{registry.name}-v{candidate_model['version']}-shap.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    registry.client.log_artifact(candidate_model["run_id"], str(path), artifact_path="explain")
    url = monitoring.publish_report(path)  # a file URL locally; in `stack` an S3 URL that opens anywhere
    top = explanation.mean_abs().head(10)
    context.log.info("top features: " + ", ".join(f"{k} {v:.3f}" for k, v in top.items()))
    return dg.MaterializeResult(metadata={
        "explainer": explanation.kind, "rows_explained": len(sample),
        "plot": dg.MetadataValue.url(url) if not url.startswith("file:") else dg.MetadataValue.path(str(path)),
        "summary": dg.MetadataValue.md(markdown_image(png, "SHAP summary")),
        "top_features": dg.MetadataValue.json({k: round(float(v), 5) for k, v in top.items()}),
        "model_version": candidate_model["version"],
    })
