from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd

from mlops_assets.data.generator import production_window
from mlops_assets.data.spec import DEMO_SPEC
from mlops_assets.monitoring.prediction_log import feature_columns, read_prediction_log

from .traffic import WINDOW_END, log_records, write_labels, write_log

START = WINDOW_END - timedelta(hours=6)


def test_truncated_and_invalid_lines_are_counted_not_fatal(settings):
    records = log_records(production_window(40, seed=1, scenario="baseline"))
    cut_short = json.dumps(records[0])[:57]  # a crash mid-write
    write_log(settings, records, extra_lines=(cut_short, "not json at all", "[1, 2]",
                                              json.dumps({"request_id": "x", "ts": "2026-05-01"})))
    log, stats = read_prediction_log(settings, START, WINDOW_END)
    assert stats["rows"] == 40 and len(log) == 40
    assert stats["bad_lines"] == 4
    assert sorted(feature_columns(log)) == sorted(DEMO_SPEC.features)
    assert log["ts"].min() >= pd.Timestamp(START) and log["ts"].max() < pd.Timestamp(WINDOW_END)
    assert log.loc[log["request_id"] == "r0", "monthly_charges"].item() == records[0]["features"]["monthly_charges"]


def test_window_keeps_only_rows_inside_it(settings):
    write_log(settings, log_records(production_window(60, seed=2, scenario="baseline")))
    log, stats = read_prediction_log(settings, WINDOW_END - timedelta(hours=1), WINDOW_END)
    assert stats["rows"] == 10  # 60 rows evenly over 6 hours
    assert set(log["request_id"]) == {f"r{i}" for i in range(10)}


def test_labels_join_and_unknown_ids_are_counted(settings):
    records = log_records(production_window(30, seed=3, scenario="baseline"))
    older = log_records(production_window(5, seed=4, scenario="baseline"),
                        end=WINDOW_END - timedelta(days=2), prefix="old")
    write_log(settings, records + older)
    labels = {"r0": 1, "r1": 0, "r2": 1, "old0": 1, "ghost-1": 0, "ghost-2": 1}
    write_labels(settings, labels, extra_lines=('{"request_id": "r3", "label": 7}', '{"request_id": "r4"'))
    log, stats = read_prediction_log(settings, START, WINDOW_END)
    assert stats["labelled"] == 3
    # "old0" belongs to a request outside the window: not unknown. The ghosts are.
    assert stats["unknown_label_ids"] == 2
    assert stats["bad_label_lines"] == 2
    assert log.set_index("request_id").loc[["r0", "r1", "r2"], "label"].tolist() == [1, 0, 1]
    assert log.set_index("request_id")["label"].isna().sum() == 27


def test_empty_window_returns_an_empty_frame_with_the_columns(settings):
    write_labels(settings, {"ghost": 1})
    log, stats = read_prediction_log(settings, START, WINDOW_END)
    assert log.empty and {"request_id", "ts", "score", "label"} <= set(log.columns)
    assert stats == {"rows": 0, "bad_lines": 0, "files": 0, "labelled": 0,
                     "unknown_label_ids": 1, "bad_label_lines": 0}


def test_log_files_come_in_write_order_for_writer_and_reader(tmp_path):
    from mlops_assets.serving.prediction_log import log_files

    for name in ("predictions-2026112709-1.jsonl", "predictions-2026112709.jsonl", "predictions-2026112708.jsonl",
                 "predictions-2026112709-10.jsonl", "predictions-2026112709-2.jsonl", "notes.jsonl"):
        (tmp_path / name).write_text("")
    ordered = log_files(tmp_path)
    assert [path.name for path, _ in ordered] == [
        "predictions-2026112708.jsonl", "predictions-2026112709.jsonl", "predictions-2026112709-1.jsonl",
        "predictions-2026112709-2.jsonl", "predictions-2026112709-10.jsonl"]
    assert ordered[1][1].isoformat() == "2026-11-27T09:00:00+00:00"


def test_shadow_predictions_are_left_out_unless_asked_for(settings):
    records = log_records(production_window(20, seed=5, scenario="baseline"))
    shadows = [{**r, "revision": "canary", "model_version": "2", "shadow": True} for r in records]
    write_log(settings, records + shadows)
    write_labels(settings, {"r0": 1})
    served, _ = read_prediction_log(settings, START, WINDOW_END)
    assert len(served) == 20 and "shadow" not in served.columns and set(served["model_version"]) == {"1"}
    both, _ = read_prediction_log(settings, START, WINDOW_END, include_shadow=True)
    assert len(both) == 40 and both["shadow"].sum() == 20
    assert both.loc[both["request_id"] == "r0", "label"].tolist() == [1, 1]  # one label, both answers


def test_unknown_label_ids_name_the_label_file(settings):
    from mlops_assets.monitoring.prediction_log import unknown_label_ids

    write_log(settings, log_records(production_window(10, seed=6, scenario="baseline")))
    good = write_labels(settings, {"r0": 1, "r1": 0}, name="labels-good.jsonl")
    bad = write_labels(settings, {"r2": 1, "ghost-7": 0}, name="labels-bad.jsonl")
    assert unknown_label_ids(settings, WINDOW_END - timedelta(days=30)) == {str(bad): ["ghost-7"]}
    assert str(good) not in unknown_label_ids(settings, WINDOW_END - timedelta(days=30))
