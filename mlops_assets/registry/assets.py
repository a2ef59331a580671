"""Registry layer: `champion_model` moves @champion (and @previous) once the gates pass (the
`rollback` job in the deployment layer moves it back)."""

import dagster as dg

from mlops_assets.naming import sibling_key

from .client import CHAMPION, PREVIOUS, ModelRegistry, RegistryError

GATES = ("beats_champion", "meets_floor")
RELEASE_POOL = "mlops_release"  # every step that moves an alias or changes serving: one at a time


def gate_reason(registry: ModelRegistry, version: str, run_ids: tuple[str, ...] = ()) -> str:
    """Why `version` may be promoted; refuses one whose blocking gates did not pass.

    With ``run_ids`` (this run and the runs it re-executes), the gates must also have been evaluated
    by one of them, and `@champion` must still be the version the gate compared against.
    """
    tags = registry.version_info(version)["version_tags"]
    unpassed = {gate: tags.get(f"gate.{gate}", "not run") for gate in GATES if tags.get(f"gate.{gate}") != "passed"}
    if unpassed:
        raise RegistryError(f"refusing to promote {registry.name}/{version}: gate "
                            + ", ".join(f"{gate} {state}" for gate, state in unpassed.items()))
    if run_ids and tags.get("gate.run_id") not in run_ids:
        raise RegistryError(f"refusing to promote {registry.name}/{version}: its gates were evaluated by run "
                            f"{tags.get('gate.run_id', 'unknown')}, not by this run")
    gated_against, now = tags.get("gate.champion_version"), registry.version_of(CHAMPION) or "none"
    if gated_against is not None and gated_against != now and now != version:
        def named(v: str) -> str:
            return "no version" if v == "none" else f"v{v}"

        raise RegistryError(f"refusing to promote {registry.name}/{version}: the gate compared it with @champion at "
                            f"{named(gated_against)}, but @champion has moved to {named(now)} since; "
                            "retrain to gate it again")
    return tags.get("gate.reason", "gates passed")


def run_family(run) -> tuple[str, ...]:
    """This run and the runs it re-executes: their outputs and gate results count as this run's."""
    return tuple(dict.fromkeys(r for r in (run.run_id, run.parent_run_id, run.root_run_id) if r))


@dg.asset(group_name="registry", code_version="2", pool=RELEASE_POOL,
          description="@champion points at the candidate that this run trained and gated; @previous at the one before.")
def champion_model(context: dg.AssetExecutionContext, registry: dg.ResourceParam[ModelRegistry],
                   candidate_model: dict) -> dg.Output[dict]:
    version = candidate_model["version"]
    family = run_family(context.run)
    try:
        already = registry.version_of(CHAMPION) == version  # re-materializing the champion: no alias moves
        reason = gate_reason(registry, version, () if already else family)
        if candidate_model.get("dagster_run_id") not in family and not already:
            raise RegistryError(
                f"refusing to promote {registry.name}/{version}: it was trained by run "
                f"{candidate_model.get('dagster_run_id', 'unknown')}, not this one; champion_model promotes only "
                "the candidate its own run trained and gated (materialize candidate_model with it)")
        moves = registry.promote(version, reason=reason, dagster_run_id=context.run.run_id)
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


def record_champion(context, registry: ModelRegistry, version: str, reason: str) -> None:
    """A `champion_model` materialization for an alias move made outside the asset (rollbacks), so
    the asset's page names the version that is champion now."""
    context.log_event(dg.AssetMaterialization(
        asset_key=sibling_key(context, "champion_model"), description=reason,
        metadata={"champion_version": version, "previous_version": registry.version_of(PREVIOUS) or "none",
                  "reason": reason}))
