"""The loop gauges: drift and model-quality numbers in a Prometheus textfile.

The drift and performance assets write ``settings.model_home / "metrics" / "loop.prom"``; the local
ingress appends every model's (:func:`merged_loop_gauges_text`) to its ``/metrics``. Each writer updates only the
gauges it passes and keeps the others, so the drift asset does not erase the accuracy.
"""

from __future__ import annotations

import fcntl
import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from mlops_assets.atomic import atomic_write_text
from mlops_assets.settings import Settings

# keyword accepted by write_loop_gauges -> (metric name from docs/CONTRACTS.md, help text)
LOOP_GAUGES: dict[str, tuple[str, str]] = {
    "drift_share": ("mlops_drift_share", "Share of feature columns drifted in the latest drift report."),
    "drifted_columns": ("mlops_drifted_columns", "Number of feature columns drifted in the latest drift report."),
    "accuracy": ("mlops_model_accuracy", "Accuracy of the served model on labelled traffic."),
    "roc_auc": ("mlops_model_roc_auc", "ROC AUC of the served model on labelled traffic."),
}
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{model_name="(?P<model>(?:[^"\\]|\\.)*)"\} (?P<value>\S+)$')


def loop_metrics_path(settings: Settings) -> Path:
    return settings.model_home / "metrics" / "loop.prom"


def write_loop_gauges(settings: Settings, **values: float | int | None) -> Path:
    """Set the given loop gauges for ``settings.model_name``; ``None`` removes a gauge.

    Keywords: ``drift_share``, ``drifted_columns``, ``accuracy``, ``roc_auc``. The file is replaced
    atomically (temp file + ``os.replace``), so a scrape never reads half a file, and writers are
    serialised by a lock so two assets finishing together do not lose each other's update.
    """
    updates = {_metric_name(key): _checked_value(key, value) for key, value in values.items()}
    path = loop_metrics_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(path):
        samples = _parse_samples(path.read_text() if path.exists() else "")
        for metric, value in updates.items():
            samples.pop((metric, settings.model_name), None)
            if value is not None:
                samples[(metric, settings.model_name)] = value
        atomic_write_text(path, _render(samples))
    return path


def read_loop_gauges_text(settings: Settings) -> str:
    """The textfile's content for a ``/metrics`` response ("" before any asset has written it)."""
    try:
        return loop_metrics_path(settings).read_text()
    except FileNotFoundError:
        return ""


def merged_loop_gauges_text(models: Iterable[Settings]) -> str:
    """Several models' textfiles as one exposition (each metric's HELP and TYPE once): what the
    one local ingress appends to its ``/metrics`` for every model it serves."""
    samples: dict[tuple[str, str], float] = {}
    for settings in models:
        samples.update(_parse_samples(read_loop_gauges_text(settings)))
    return _render(samples)


def read_loop_gauges(settings: Settings) -> dict[str, float]:
    """This model's gauges as ``{keyword: value}``, e.g. ``{"drift_share": 0.4}``."""
    samples = _parse_samples(read_loop_gauges_text(settings))
    names = {metric: key for key, (metric, _) in LOOP_GAUGES.items()}
    return {names[metric]: value for (metric, model), value in samples.items()
            if model == settings.model_name and metric in names}


def _metric_name(key: str) -> str:
    if key not in LOOP_GAUGES:
        raise ValueError(f"unknown loop gauge {key!r}; expected one of {', '.join(LOOP_GAUGES)}")
    return LOOP_GAUGES[key][0]


def _checked_value(key: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"loop gauge {key!r} needs a finite number or None, got {value!r}")
    return float(value)


def _parse_samples(text: str) -> dict[tuple[str, str], float]:
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            model = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], match["model"])
            samples[(match["name"], model)] = float(match["value"])
    return samples


def _render(samples: dict[tuple[str, str], float]) -> str:
    lines = []
    for metric, help_text in LOOP_GAUGES.values():
        rows = sorted((model, value) for (name, model), value in samples.items() if name == metric)
        if not rows:
            continue
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        lines += [f'{metric}{{model_name="{_escape(model)}"}} {value!r}' for model, value in rows]
    return "\n".join(lines) + "\n" if lines else ""


def _escape(label_value: str) -> str:
    return label_value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")




@contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
