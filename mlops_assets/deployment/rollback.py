"""The `rollback` job: @champion back to @previous, audited, and the restored champion rolled out
wherever an endpoint is serving. Both steps record what they changed as materializations of
`champion_model` and `inference_service`, so the asset pages show what is champion and serving now."""

import dagster as dg

from mlops_assets.naming import MODEL_TAG, job_name, sibling_key

from mlops_assets.registry.assets import RELEASE_POOL, record_champion
from mlops_assets.registry.client import ModelRegistry, RegistryError

from .assets import record_serving
from .backend import RolloutConfig, RolloutFailed, ServingBackend, ServingError


@dg.op(pool=RELEASE_POOL, description="Move @champion back to @previous (manual rollback).")
def rollback_champion(context: dg.OpExecutionContext, registry: dg.ResourceParam[ModelRegistry]) -> dict:
    try:
        moves = registry.rollback(dagster_run_id=context.run.run_id)
    except RegistryError as exc:
        raise dg.Failure(description=str(exc)) from exc
    context.log.info(f"@champion -> v{moves[0].to_version} (was v{moves[0].from_version})")
    record_champion(context, registry, moves[0].to_version, f"rollback from v{moves[0].from_version}")
    return {"champion": moves[0].to_version, "rolled_back_from": moves[0].from_version}


@dg.op(pool=RELEASE_POOL,
       description="If an endpoint is serving, roll the restored champion out to it (canary, smoke test, promote).")
def serve_restored_champion(context: dg.OpExecutionContext, serving: dg.ResourceParam[ServingBackend],
                            rolled_back: dict) -> dict:
    try:
        serving_now = serving.serving_version()
    except ServingError as exc:  # e.g. a 403: unknown is not "nothing is serving"
        raise dg.Failure(description=f"@champion moved to v{rolled_back['champion']}, but what serves is unknown "
                                     f"(the old model may still serve): {exc}") from exc
    if serving_now is None:
        context.log.info("nothing is serving: the restored champion will be served by the next inference_service")
        context.log_event(dg.AssetObservation(asset_key=sibling_key(context, "inference_service"), description="nothing is serving",
                                              metadata={"model_version": "none", "champion": rolled_back["champion"]}))
        return {"served": False}
    try:
        result = serving.roll_out(rolled_back["champion"], RolloutConfig(), log=context.log.info)
    except RolloutFailed as failed:
        raise dg.Failure(description=f"@champion is v{rolled_back['champion']} but serving it failed: {failed}") from failed
    record_serving(context, result, f"rollback to v{rolled_back['champion']}")
    return {"served": True, **result}


@dg.graph(description="Move @champion back to @previous and serve it wherever an endpoint is running.")
def rollback_graph():
    serve_restored_champion(rollback_champion())


def rollback_job(model: str) -> dg.JobDefinition:
    """``<model>_rollback``, tagged with its model (the ops' resources are that model's)."""
    return rollback_graph.to_job(name=job_name(model, "rollback"), tags={MODEL_TAG: model})


rollback = rollback_graph.to_job(name="rollback")  # unbound to a model: for one-model tests and scripts
