"""The models of one code location: a folder of YAML specs (``MLOPS_MODELS_DIR``), one per model.

A spec is today's bring-your-own dataset config (under ``dataset:``) plus the model's own
training, gate, drift and serving settings::

    name: tumor                      # asset key prefix, registered model, Feast project, route
    dataset: {source: sklearn:breast_cancer, entity: patient_id, timestamp: event_timestamp,
              target: malignant, numeric: [mean_radius, ...]}
    training: {model_type: logistic_regression, floors: {roc_auc: 0.8}}
    gate: {policy: non_inferiority, margin: 0.01}
    drift: {threshold: 0.3, cooldown_minutes: 10}
    serving: {canary_percent: 20}

Without ``MLOPS_MODELS_DIR`` the catalog is the built-in churn demo (named ``MLOPS_MODEL_NAME``,
dataset from ``MLOPS_DATASET_CONFIG`` if set), so a single-model set-up needs no folder.
A bad spec is reported naming its file and field and left out; the other models still load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mlops_assets.data.load import load_spec_mapping, read_yaml
from mlops_assets.data.spec import DEMO_SPEC, DatasetSpec, DatasetSpecError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
BUILTIN_DEMO = "churn_demo"  # ``dataset: churn_demo``: the built-in churn generator
SECTIONS = ("name", "dataset", "training", "gate", "drift", "serving")
TRAINING_FIELDS = ("model_type", "params", "seed", "floors", "tolerance", "golden_holdout")
GATE_FIELDS = ("policy", "margin", "resamples", "level", "seed")
GATE_POLICIES = ("superiority", "non_inferiority", "plain")
DRIFT_FIELDS = ("threshold", "cooldown_minutes")
SERVING_FIELDS = ("canary_percent",)


class ModelSpecError(ValueError):
    """A spec is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dataset: DatasetSpec
    path: Path | None = None  # None: the built-in demo
    training: Mapping[str, Any] = field(default_factory=dict)
    gate: Mapping[str, Any] = field(default_factory=dict)
    drift_threshold: float | None = None
    cooldown_minutes: float | None = None
    canary_percent: int | None = None

    def candidate_config(self) -> dict:
        """``candidate_model``'s config defaults for this model's runs."""
        return {**self.training, **({"gate": dict(self.gate)} if self.gate else {})}

    def run_config(self) -> dict:
        """Run config carrying this spec's settings; empty for the demo's defaults."""
        ops: dict = {}
        if self.candidate_config():
            ops["candidate_model"] = {"config": self.candidate_config()}
        if self.canary_percent is not None:
            ops["inference_service"] = {"config": {"canary_percent": self.canary_percent}}
        return {"ops": ops} if ops else {}


@dataclass(frozen=True)
class Catalog:
    models: tuple[ModelSpec, ...]
    errors: tuple[str, ...] = ()
    folder: Path | None = None

    @property
    def names(self) -> list[str]:
        return [model.name for model in self.models]

    def get(self, name: str | None = None) -> ModelSpec:
        """The model called ``name`` (default: the first), or an error listing the models there are."""
        if name is None:
            if not self.models:
                raise ModelSpecError(f"no valid model spec in {self.folder}: " + "; ".join(self.errors))
            return self.models[0]
        for model in self.models:
            if model.name == name:
                return model
        raise ModelSpecError(f"no model named {name!r} (models: {', '.join(self.names) or 'none'})")


def _fail(path: Path, field_name: str, problem: str):
    raise ModelSpecError(f"{path}: {field_name}: {problem}")


def _mapping(path: Path, raw: Mapping, key: str, allowed: tuple[str, ...]) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        _fail(path, key, f"must be a mapping, not {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        _fail(path, f"{key}.{unknown[0]}", f"unknown field (allowed: {', '.join(allowed)})")
    return value


def _number(path: Path, name: str, value, low: float, high: float, *, low_open: bool = False):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(path, name, f"must be a number, not {value!r}")
    if not (low < value if low_open else low <= value) or not value <= high:
        _fail(path, name, f"{value!r} is outside {'(' if low_open else '['}{low:g}, {high:g}]")
    return value


def parse_spec(path: Path, raw) -> ModelSpec:
    if not isinstance(raw, dict):
        _fail(path, "(top level)", "a model spec must be a YAML mapping")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        _fail(path, unknown[0], f"unknown field (allowed: {', '.join(SECTIONS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        _fail(path, "name", f"{name!r} must be lower-case letters, digits or _ (starting with a letter, "
                            "at most 40 characters): it prefixes asset keys and names the registered model")
    if raw.get("dataset") == BUILTIN_DEMO:
        dataset = DEMO_SPEC
    elif not isinstance(raw.get("dataset"), dict):
        _fail(path, "dataset", f"missing: a mapping like a bring-your-own dataset config, or {BUILTIN_DEMO!r}")
    else:
        try:
            dataset = load_spec_mapping(raw["dataset"], base=path.parent, where=f"{path}: dataset")
        except DatasetSpecError as exc:
            raise ModelSpecError(str(exc)) from exc
    training = _mapping(path, raw, "training", TRAINING_FIELDS)
    gate = _mapping(path, raw, "gate", GATE_FIELDS)
    if gate.get("policy") is not None and gate["policy"] not in GATE_POLICIES:
        _fail(path, "gate.policy", f"{gate['policy']!r} is not one of {', '.join(GATE_POLICIES)}")
    _number(path, "gate.level", gate.get("level"), 0, 1, low_open=True)
    _number(path, "gate.margin", gate.get("margin"), 0, 1)
    drift = _mapping(path, raw, "drift", DRIFT_FIELDS)
    serving = _mapping(path, raw, "serving", SERVING_FIELDS)
    canary = _number(path, "serving.canary_percent", serving.get("canary_percent"), 1, 99)
    return ModelSpec(
        name=name, dataset=dataset, path=path, training=training, gate=gate,
        drift_threshold=_number(path, "drift.threshold", drift.get("threshold"), 0, 1, low_open=True),
        cooldown_minutes=_number(path, "drift.cooldown_minutes", drift.get("cooldown_minutes"), 0, 10_000),
        canary_percent=int(canary) if canary is not None else None)


def read_spec(path: Path) -> ModelSpec:
    return parse_spec(path, read_yaml(path, ModelSpecError, f"model spec {path}"))


def load_catalog(folder: Path | None, default: ModelSpec) -> Catalog:
    """Every ``*.yaml``/``*.yml`` spec in ``folder`` (sorted by file name), or just ``default``.
    A spec that fails, or reuses a name an earlier file took, is reported and left out."""
    if folder is None:
        return Catalog((default,))
    if not folder.is_dir():
        return Catalog((), (f"MLOPS_MODELS_DIR={folder} is not a folder",), folder)
    models: dict[str, ModelSpec] = {}
    errors = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            spec = read_spec(path)
        except ModelSpecError as exc:
            errors.append(str(exc))
            continue
        if spec.name in models:
            errors.append(f"{path}: name: {spec.name!r} is already the name of the model in "
                          f"{models[spec.name].path}; this spec is ignored (model names are unique)")
            continue
        models[spec.name] = spec
    if not models and not errors:
        errors.append(f"MLOPS_MODELS_DIR={folder} holds no *.yaml model spec")
    return Catalog(tuple(models.values()), tuple(errors), folder)


def catalog_for(settings) -> Catalog:
    """The catalog of ``settings.models_dir``; without one, the built-in model: the churn demo (or
    MLOPS_DATASET_CONFIG's dataset), named MLOPS_MODEL_NAME."""
    from mlops_assets.data.load import load_spec

    dataset = load_spec(settings.dataset_config) if settings.dataset_config else DEMO_SPEC
    return load_catalog(settings.models_dir, ModelSpec(name=settings.model_name, dataset=dataset))
