"""The loop gauges textfile: round trip, merge between writers, atomic replacement."""

from __future__ import annotations

import os
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlops_assets import atomic
from mlops_assets.monitoring.loop_metrics import (
    loop_metrics_path, read_loop_gauges, read_loop_gauges_text, write_loop_gauges,
)


def parsed(text: str) -> dict[tuple[str, str], float]:
    return {(sample.name, sample.labels["model_name"]): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_round_trip_writes_contract_names_in_prometheus_format(settings) -> None:
    path = write_loop_gauges(settings, drift_share=0.4, drifted_columns=3, accuracy=0.81, roc_auc=0.87)
    assert path == settings.home / "metrics" / "loop.prom"
    text = read_loop_gauges_text(settings)
    assert "# TYPE mlops_drift_share gauge" in text
    assert parsed(text) == {
        ("mlops_drift_share", "churn"): 0.4, ("mlops_drifted_columns", "churn"): 3.0,
        ("mlops_model_accuracy", "churn"): 0.81, ("mlops_model_roc_auc", "churn"): 0.87,
    }
    assert read_loop_gauges(settings) == {"drift_share": 0.4, "drifted_columns": 3.0,
                                          "accuracy": 0.81, "roc_auc": 0.87}


def test_read_before_any_write_is_empty(settings) -> None:
    assert read_loop_gauges_text(settings) == ""
    assert read_loop_gauges(settings) == {}


def test_a_writer_keeps_the_other_writers_gauges(settings) -> None:
    write_loop_gauges(settings, accuracy=0.8)  # performance asset
    write_loop_gauges(settings, drift_share=0.1, drifted_columns=1)  # drift asset
    write_loop_gauges(settings, drift_share=0.5)
    assert read_loop_gauges(settings) == {"accuracy": 0.8, "drift_share": 0.5, "drifted_columns": 1.0}


def test_none_removes_a_gauge(settings) -> None:
    write_loop_gauges(settings, drift_share=0.2, accuracy=0.9)
    write_loop_gauges(settings, drift_share=None)  # e.g. too little traffic: unknown, not zero
    assert read_loop_gauges(settings) == {"accuracy": 0.9}
    assert "mlops_drift_share" not in read_loop_gauges_text(settings)


def test_model_name_is_the_label_and_models_do_not_clash(settings) -> None:
    other = type(settings)(profile=settings.profile, home=settings.home, model_name='up"sell')
    write_loop_gauges(settings, accuracy=0.8)
    write_loop_gauges(other, accuracy=0.6)
    assert parsed(read_loop_gauges_text(settings)) == {
        ("mlops_model_accuracy", "churn"): 0.8, ("mlops_model_accuracy", 'up"sell'): 0.6}
    assert read_loop_gauges(other) == {"accuracy": 0.6}


@pytest.mark.parametrize("values, message", [
    ({"drift": 0.1}, "unknown loop gauge 'drift'"),
    ({"accuracy": "0.9"}, "finite number"),
    ({"accuracy": float("nan")}, "finite number"),
    ({"drifted_columns": True}, "finite number"),
])
def test_bad_values_are_refused_and_leave_the_file_alone(settings, values, message) -> None:
    write_loop_gauges(settings, accuracy=0.7)
    before = read_loop_gauges_text(settings)
    with pytest.raises(ValueError, match=message):
        write_loop_gauges(settings, **values)
    assert read_loop_gauges_text(settings) == before


def test_a_failed_replace_keeps_the_old_file_and_no_temp_file(settings, monkeypatch) -> None:
    write_loop_gauges(settings, accuracy=0.7)
    before = read_loop_gauges_text(settings)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)  # the shared whole-file writer loop_metrics uses
    with pytest.raises(OSError, match="disk full"):
        write_loop_gauges(settings, accuracy=0.1)
    assert read_loop_gauges_text(settings) == before
    leftovers = [p.name for p in loop_metrics_path(settings).parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_reader_never_sees_half_a_file(settings) -> None:
    write_loop_gauges(settings, drift_share=0.0, drifted_columns=0, accuracy=0.0, roc_auc=0.0)
    path, stop, torn = loop_metrics_path(settings), threading.Event(), []

    def read_continuously() -> None:
        while not stop.is_set():
            text = path.read_text()
            try:
                complete = len(parsed(text)) == 4 and text.endswith("\n")
            except ValueError:  # the parser refuses a line cut short
                complete = False
            if not complete:
                torn.append(text)

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        for i in range(300):
            write_loop_gauges(settings, drift_share=i / 300, drifted_columns=i, accuracy=0.5, roc_auc=0.6)
    finally:
        stop.set()
        reader.join()
    assert torn == []
    assert read_loop_gauges(settings)["drifted_columns"] == 299.0


def test_concurrent_writers_do_not_lose_updates(settings) -> None:
    def write_many(key: str) -> None:
        for i in range(100):
            write_loop_gauges(settings, **{key: float(i)})

    threads = [threading.Thread(target=write_many, args=(key,)) for key in ("drift_share", "accuracy")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert read_loop_gauges(settings) == {"drift_share": 99.0, "accuracy": 99.0}
    assert oct(os.stat(loop_metrics_path(settings)).st_mode & 0o777) == "0o644"
