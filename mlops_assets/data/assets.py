"""Data layer: the DVC-versioned `dataset` asset and its blocking schema gate."""

import dagster as dg
import pandas as pd

from mlops_assets.monitoring.stores import LocalMonitoring
from mlops_assets.settings import Settings

from .feedback import labelled_feedback
from .generator import SCENARIOS, generate_churn
from .load import read_source
from .schema import validate_dataset
from .spec import DatasetSpecError
from .versioning import DataVersioner, DataVersionError


class DatasetConfig(dg.Config):
    """How the demo table is generated (ignored for a bring-your-own dataset)."""

    rows: int = 10_000
    seed: int = 7
    scenario: str = "baseline"
    include_feedback: bool = True  # append labelled production traffic from the prediction log


def build_table(config: DatasetConfig, settings: Settings) -> tuple[pd.DataFrame, str]:
    spec = settings.dataset_spec()
    if spec.source:
        return read_source(spec), spec.source
    if config.scenario not in SCENARIOS:
        raise DatasetSpecError(f"unknown scenario {config.scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if not 1 <= config.rows <= 5_000_000:
        raise DatasetSpecError(f"rows={config.rows} is outside 1..5,000,000")
    frame = generate_churn(config.rows, seed=config.seed, scenario=config.scenario)
    return frame, f"churn generator (rows={config.rows}, seed={config.seed}, scenario={config.scenario})"


@dg.asset(group_name="data", code_version="1",
          description="The raw table, versioned with DVC; its data version is the DVC md5.")
def dataset(context: dg.AssetExecutionContext, config: DatasetConfig,
            settings: dg.ResourceParam[Settings],
            versioner: dg.ResourceParam[DataVersioner],
            monitoring: dg.ResourceParam[LocalMonitoring]) -> dg.Output[pd.DataFrame]:
    try:
        frame, origin = build_table(config, settings)
        feedback = {}
        if config.include_feedback:
            extra, feedback = labelled_feedback(monitoring, settings.dataset_spec())
            if len(extra):
                frame = pd.concat([frame, extra], ignore_index=True)
                origin += f" + {len(extra):,} labelled production rows"
        context.log.info(f"writing {len(frame):,} rows from {origin} and pushing to {versioner.remote}")
        version = versioner.commit_table(frame, "dataset", message=f"dataset from {origin}")
    except (DatasetSpecError, DataVersionError) as exc:
        raise dg.Failure(description=str(exc)) from exc
    frame.attrs["dataset_md5"] = version.md5  # travels with the frame to training's MLflow tags
    return dg.Output(
        frame,
        data_version=dg.DataVersion(version.md5),
        metadata={
            "rows": len(frame), "columns": len(frame.columns), "md5": version.md5,
            "remote": version.remote, "path": dg.MetadataValue.path(versioner.location(version)),
            "git_rev": version.rev, "dvc_tag": version.tag, "origin": origin,
            "label_rate": float(frame[settings.dataset_spec().target].mean()) if len(frame) else 0.0,
            "preview": dg.MetadataValue.md(frame.head(5).to_markdown(index=False)),
        },
    )


@dg.asset_check(asset=dataset, blocking=True,
                description="Columns, dtypes, nulls in keys, duplicated (entity, timestamp), empty table, label in {0,1}.")
def dataset_schema(settings: dg.ResourceParam[Settings], dataset: pd.DataFrame) -> dg.AssetCheckResult:
    violations = validate_dataset(dataset, settings.dataset_spec())
    return dg.AssetCheckResult(
        passed=not violations,
        description="; ".join(map(str, violations)) if violations else f"{len(dataset):,} rows match the schema",
        metadata={"violations": dg.MetadataValue.json([v.__dict__ for v in violations]),
                  "rows_checked": len(dataset)},
    )
