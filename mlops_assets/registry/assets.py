"""Registry layer: `champion_model` moves @champion (and @previous) once the gates pass; the
`rollback` job moves it back."""

import dagster as dg

from mlops_assets.deployment.backend import RolloutConfig, RolloutFailed, ServingBackend, ServingError

from .client import CHAMPION, PREVIOUS, ModelRegistry, RegistryError

GATES = ("beats_champion", "meets_floor")


def gate_reason(registry: ModelRegistry, version: str) -> str:
    """Why `version` may be promoted; refuses one whose blocking gates did not pass.

    The blocking checks only skip `champion_model` when they run in the same run: materializing
    `champion_model` on its own would otherwise promote whatever candidate was stored last.
    """
    tags = registry.version_info(version)["version_tags"]
    unpassed = {gate: tags.get(f"gate.{gate}", "not run") for gate in GATES if tags.get(f"gate.{gate}") != "passed"}
    if unpassed:
        raise RegistryError(f"refusing to promote {registry.name}/{version}: gate "
                            + ", ".join(f"{gate} {state}" for gate, state in unpassed.items()))
    return tags.get("gate.reason", "gates passed")


@dg.asset(group_name="registry", code_version="1",
          description="@champion points at the candidate that passed the gates; @previous at the one before.")
def champion_model(context: dg.AssetExecutionContext, registry: dg.ResourceParam[ModelRegistry],
                   candidate_model: dict) -> dg.Output[dict]:
    version = candidate_model["version"]
    try:
        moves = registry.promote(version, reason=gate_reason(registry, version), dagster_run_id=context.run.run_id)
    except RegistryError as exc:
        raise dg.Failure(description=str(exc)) from exc
    previous = registry.version_of(PREVIOUS)
    context.log.info(f"@champion -> v{version}" + (f" (@previous -> v{previous})" if previous else "")
                     + ("" if moves else " (already champion)"))
    result = {"name": registry.name, "version": version, "previous": previous, "run_id": candidate_model["run_id"],
              "model_uri": f"models:/{registry.name}@{CHAMPION}", "metrics": candidate_model["metrics"]}
    return dg.Output(result, data_version=dg.DataVersion(f"v{version}"), metadata={
        "champion_version": version, "previous_version": previous or "none",
        "alias_moves": dg.MetadataValue.json([move.__dict__ for move in moves]),
        "holdout_roc_auc": candidate_model["metrics"]["roc_auc"],
    })


@dg.asset_check(asset=champion_model, description="Every alias points at a version that exists.")
def aliases_resolve(registry: dg.ResourceParam[ModelRegistry]) -> dg.AssetCheckResult:
    broken = registry.broken_aliases()
    return dg.AssetCheckResult(
        passed=not broken,
        description=", ".join(f"@{alias} points at deleted version {v}" for alias, v in broken.items())
        or "every alias resolves",
        metadata={"broken": dg.MetadataValue.json(broken)})


@dg.op(description="Move @champion back to @previous (manual rollback).")
def rollback_champion(context: dg.OpExecutionContext, registry: dg.ResourceParam[ModelRegistry]) -> dict:
    try:
        moves = registry.rollback(dagster_run_id=context.run.run_id)
    except RegistryError as exc:
        raise dg.Failure(description=str(exc)) from exc
    context.log.info(f"@champion -> v{moves[0].to_version} (was v{moves[0].from_version})")
    return {"champion": moves[0].to_version, "rolled_back_from": moves[0].from_version}


@dg.op(description="If an endpoint is serving, roll the restored champion out to it (canary, smoke test, promote).")
def serve_restored_champion(context: dg.OpExecutionContext, serving: dg.ResourceParam[ServingBackend],
                            rolled_back: dict) -> dict:
    try:
        serving_now = serving.serving_version()
    except ServingError as exc:  # e.g. a 403: unknown is not "nothing is serving"
        raise dg.Failure(description=f"@champion moved to v{rolled_back['champion']}, but what serves is unknown "
                                     f"(the old model may still serve): {exc}") from exc
    if serving_now is None:
        context.log.info("nothing is serving: the restored champion will be served by the next inference_service")
        return {"served": False}
    try:
        result = serving.roll_out(rolled_back["champion"], RolloutConfig(), log=context.log.info)
    except RolloutFailed as failed:
        raise dg.Failure(description=f"@champion is v{rolled_back['champion']} but serving it failed: {failed}") from failed
    return {"served": True, **result}


@dg.job(description="Move @champion back to @previous and serve it wherever an endpoint is running.")
def rollback():
    serve_restored_champion(rollback_champion())
