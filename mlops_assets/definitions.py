"""The code location: one asset graph per model of the catalog (mlops_assets.factory); this module
only merges them and picks resources and the executor for the settings it is given. Heavy libraries
are imported inside asset bodies."""

import logging

import dagster as dg

from mlops_assets.factory import model_definitions
from mlops_assets.resources import build_resources
from mlops_assets.settings import Settings, base_settings

log = logging.getLogger("mlops.definitions")


def build_definitions(settings: Settings) -> dg.Definitions:
    catalog = settings.catalog()
    for error in catalog.errors:  # a bad spec is left out; the other models still load
        log.warning("model spec skipped: %s", error)
    models = [settings.for_model(model) for model in catalog.models]
    return dg.Definitions.merge(
        *(model_definitions(model) for model in models),
        dg.Definitions(
            resources=build_resources(models),
            # local and stack: one run worker process per run (in stack its throwaway directory dies with it)
            executor=dg.in_process_executor if settings.profile != "k8s" else None,
            metadata={"models": dg.MetadataValue.json(catalog.names),
                      "model_spec_errors": dg.MetadataValue.json(list(catalog.errors))},
        ),
    )


defs = build_definitions(base_settings())
