"""Read the serving's prediction log (JSON Lines, see docs/CONTRACTS.md) and join late labels.

Bad input is counted, never fatal: a line cut short by a crash or holding invalid JSON is a
``bad_line``; a label whose request id is in no log file is an ``unknown_label_id``. The online A/B
gate is stricter (:func:`unknown_label_ids`): a label delivered since its canary started that names
no logged request is an error naming the label file and the ids.

Predictions a shadow challenger made on a copy of the traffic (``"shadow": true``) are left out
unless ``include_shadow`` asks for them (then as a boolean ``shadow`` column): nobody got those
answers, so they are not the served model's performance or traffic.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Iterable

import pandas as pd

from mlops_assets.monitoring.stores import LocalMonitoring
from mlops_assets.settings import Settings

META_COLUMNS = ["request_id", "ts", "entity_id", "score", "prediction", "model_version", "revision"]
LABEL_COLUMN = "label"
_REQUEST_ID = re.compile(r'"request_id"\s*:\s*"([^"\\]*)"')
# A writer may stamp a request a moment before rotating; read one hour either side of the window.


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a frame (values and column names, not the index)."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()[:32]


def labels_dir(settings: Settings) -> Path:
    return settings.serving_dir / "labels"


def feature_columns(log: pd.DataFrame) -> list[str]:
    """The model-input columns of a frame returned by :func:`read_prediction_log`."""
    return [c for c in log.columns if c not in META_COLUMNS and c != LABEL_COLUMN]


def _store(source):
    """A monitoring store (resources.py picks it by profile); plain settings mean the local files."""
    if isinstance(source, Settings):
        return LocalMonitoring(source)
    return source


def read_prediction_log(source, start: datetime, end: datetime, with_labels: bool = True,
                        include_shadow: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows with ``start <= ts < end`` (UTC), features flattened to columns, labels joined.

    ``source`` is the ``monitoring`` resource (or settings, for the local files). Returns the frame
    and stats: ``rows``, ``bad_lines``, ``unknown_label_ids``, ``labelled``, ``bad_label_lines``,
    ``files``.
    """
    store = _store(source)
    start, end = _as_utc(start), _as_utc(end)
    in_window, outside = store.log_chunks(start, end)
    records, bad_lines = _parse_records(in_window)
    log = _to_frame(records)
    parsed_ids = set(log["request_id"])
    keep = (log["ts"] >= start) & (log["ts"] < end)
    if not include_shadow:
        keep &= ~log["shadow"]
    log = log[keep].reset_index(drop=True)
    if not include_shadow:
        log = log.drop(columns="shadow")
    stats = {"rows": len(log), "bad_lines": bad_lines, "files": len(in_window),
             "labelled": 0, "unknown_label_ids": 0, "bad_label_lines": 0}
    if with_labels:
        log, label_stats = _join_labels(log, store, parsed_ids, outside)
        stats.update(label_stats)
    return log, stats


def _as_utc(moment: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _parse_records(chunks: list[Iterable[str]]) -> tuple[list[dict], int]:
    records, bad = [], 0
    for lines in chunks:
        for line in lines:
            if not line.strip():
                continue
            record = _parse_line(line)
            if record is None:
                bad += 1
            else:
                records.append(record)
    return records, bad


def _parse_line(line: str) -> dict | None:
    """One log object, or None when the line is cut short, not JSON or misses a field."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("features"), dict):
        return None
    if not isinstance(obj.get("request_id"), str) or not isinstance(obj.get("ts"), str):
        return None
    if not isinstance(obj.get("score"), (int, float)) or obj.get("prediction") not in (0, 1):
        return None
    record = {name: obj.get(name) for name in META_COLUMNS}
    record["shadow"] = obj.get("shadow") is True
    record.update({k: v for k, v in obj["features"].items() if k not in record})
    return record


def _to_frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=None if records else [*META_COLUMNS, "shadow"])
    frame["shadow"] = frame["shadow"].astype(bool)
    # Unparseable timestamps become NaT and fall outside every window.
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, errors="coerce", format="ISO8601")
    frame["score"] = frame["score"].astype(float)
    return frame


def read_labels(source) -> tuple[dict[str, int], int, list[tuple[int, pd.Timestamp, int]]]:
    """Delivered labels as {request_id: label} (the last one wins), the bad-line count, and the
    labels given by entity and time as (entity_id, ts, label)."""
    labels, bad, by_entity = {}, 0, []
    for line in _store(source).label_lines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(obj, dict) or obj.get("label") not in (0, 1) or isinstance(obj.get("label"), bool):
            bad += 1
        elif isinstance(obj.get("request_id"), str):
            labels[obj["request_id"]] = int(obj["label"])
        elif isinstance(obj.get("entity_id"), int) and isinstance(obj.get("ts"), str):
            by_entity.append((obj["entity_id"], _as_utc(pd.Timestamp(obj["ts"])), int(obj["label"])))
        else:
            bad += 1
    return labels, bad, by_entity


def _entity_time_labels(log: pd.DataFrame, by_entity: list) -> dict[str, int]:
    """Each (entity, ts) label goes to that entity's latest logged prediction at or before ts."""
    if not by_entity or log.empty:
        return {}
    rows = log[["request_id", "entity_id", "ts"]].dropna().sort_values("ts")
    found = {}
    for entity, ts, label in by_entity:
        match = rows[(rows["entity_id"] == entity) & (rows["ts"] <= ts)]
        if len(match):
            found[match["request_id"].iloc[-1]] = label
    return found


def _join_labels(log: pd.DataFrame, store, parsed_ids: set[str],
                 other_files: list[Iterable[str]]) -> tuple[pd.DataFrame, dict[str, int]]:
    labels, bad, by_entity = read_labels(store)
    labels = {**_entity_time_labels(log, by_entity), **labels}
    log = log.assign(**{LABEL_COLUMN: log["request_id"].map(labels).astype("Float64")})
    unmatched = set(labels) - parsed_ids
    # Labels for requests outside the window are not "unknown": look their ids up cheaply.
    unknown = unmatched - _request_ids_in(other_files, unmatched) if unmatched else set()
    return log, {"labelled": int(log[LABEL_COLUMN].notna().sum()),
                 "unknown_label_ids": len(unknown), "bad_label_lines": bad}


def _request_ids_in(chunks: list[Iterable[str]], wanted: set[str]) -> set[str]:
    found: set[str] = set()
    for lines in chunks:
        for line in lines:
            found.update(i for i in _REQUEST_ID.findall(line) if i in wanted)
    return found


def unknown_label_ids(source, since: datetime) -> dict[str, list[str]]:
    """Label sources (files, or sink objects) delivered since ``since`` that name request ids no
    logged prediction has: ``{source name: [ids]}``, empty when every label joins."""
    store = _store(source)
    wanted: dict[str, set[str]] = {}
    for name, lines in store.label_sources(_as_utc(since)):
        for line in lines:
            try:
                obj = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("request_id"), str):
                wanted.setdefault(name, set()).add(obj["request_id"])
    if not wanted:
        return {}
    everything = set().union(*wanted.values())
    inside, outside = store.log_chunks(_as_utc(since), pd.Timestamp.now(tz="UTC"))
    known = _request_ids_in([*inside, *outside], everything)
    return {name: sorted(ids - known) for name, ids in wanted.items() if ids - known}
