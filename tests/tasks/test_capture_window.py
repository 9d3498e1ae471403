"""The capture store round trip: writer partitions by event hour, the reader windows and joins."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from config.loader import Project
from config.schema import DriftloopConfig
from model.capture import (
    LABELS,
    PREDICTIONS,
    CaptureWriter,
    capture_schema,
    label_rows,
    prediction_rows,
)
from tasks.capture import read_window

T0 = datetime(2011, 4, 1, 8, tzinfo=UTC)


def project(tmp_path: Path, task: str = "regression") -> Project:
    estimator = (
        "sklearn.linear_model.Ridge"
        if task == "regression"
        else ("sklearn.linear_model.LogisticRegression")
    )
    cfg = DriftloopConfig.model_validate(
        {
            "data": {
                "path": "d.csv",
                "target": "y",
                "task": task,
                "numeric": ["x"],
                "categorical": ["c"],
            },
            "train": {"estimator": estimator},
            "capture": {"path": str(tmp_path / "capture")},
        }
    )
    return Project(config=cfg, path=tmp_path / "c.yaml", root=tmp_path)


def writer(proj: Project, **kw) -> CaptureWriter:
    return CaptureWriter(
        proj.resolve(proj.config.capture.path),
        capture_schema(["x"], ["c"], proj.config.data.task),
        flush_seconds=kw.pop("flush_seconds", 60),
        **kw,
    )


def rows(n: int, start: datetime, step: timedelta, prefix: str = "i"):
    feats = [{"x": float(i), "c": "a" if i % 2 else None} for i in range(n)]
    times = [start + i * step for i in range(n)]
    return prediction_rows(
        feats,
        [float(i) * 2 for i in range(n)],
        None,
        [f"{prefix}{i}" for i in range(n)],
        times,
        "b:1",
        "m:1",
    )


def test_window_selects_by_event_time_and_joins_labels(tmp_path):
    proj = project(tmp_path)
    w = writer(proj)
    w.add(PREDICTIONS, rows(48, T0, timedelta(hours=1)))  # two days, one row an hour
    w.add(
        LABELS,
        label_rows(
            [{"inference_id": f"i{i}", "label": 1.5} for i in range(0, 48, 4)],
            T0 + timedelta(days=3),
        ),
    )
    w.close()
    parts = sorted(p.parent.name for p in (tmp_path / "capture/predictions").rglob("*.parquet"))
    assert len(parts) == 48 and parts[0] == "hour=00"
    window = read_window(proj, T0 + timedelta(hours=10), T0 + timedelta(hours=34))
    assert window.rows == 24
    assert window.frame["timestamp"].min() == pd.Timestamp(T0 + timedelta(hours=10))
    assert window.frame["x"].tolist() == [float(i) for i in range(10, 34)]
    assert window.frame["c"].isna().sum() == 12  # None stays missing, not "None"
    assert window.label_coverage == pytest.approx(6 / 24)


def test_latest_label_wins_and_unknown_ids_are_ignored(tmp_path):
    proj = project(tmp_path)
    w = writer(proj)
    w.add(PREDICTIONS, rows(2, T0, timedelta(minutes=1)))
    w.add(LABELS, label_rows([{"inference_id": "i0", "label": 1.0}], T0 + timedelta(hours=1)))
    w.add(
        LABELS,
        label_rows(
            [{"inference_id": "i0", "label": 2.0}, {"inference_id": "nobody", "label": 9.0}],
            T0 + timedelta(hours=2),
        ),
    )
    w.close()
    labels = read_window(proj, T0, T0 + timedelta(hours=1)).frame.set_index("inference_id")["label"]
    assert labels["i0"] == 2.0
    assert pd.isna(labels["i1"])
    assert "nobody" not in labels.index


def test_empty_store_gives_an_empty_window_with_the_columns(tmp_path):
    window = read_window(project(tmp_path), T0, T0 + timedelta(hours=1))
    assert window.rows == 0 and window.label_coverage == 0.0
    assert {"x", "c", "prediction", "label"} <= set(window.frame.columns)


def test_background_flush_and_concurrent_writers(tmp_path):
    proj = project(tmp_path)
    w = writer(proj, flush_seconds=0.05)
    threads = [
        threading.Thread(target=w.add, args=(PREDICTIONS, rows(500, T0, timedelta(0), f"t{k}-")))
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    assert read_window(proj, T0, T0 + timedelta(seconds=1)).rows == 2000
    assert not list((tmp_path / "capture").rglob(".*.tmp"))  # no half-written file left


def test_full_buffer_drops_and_counts_instead_of_blocking(tmp_path):
    proj = project(tmp_path)
    w = writer(proj, max_buffer=10)
    w.add(PREDICTIONS, rows(15, T0, timedelta(0)))
    assert w.dropped == 5
    w.close()
    assert read_window(proj, T0, T0 + timedelta(seconds=1)).rows == 10


def test_classifier_predictions_and_labels_are_strings(tmp_path):
    proj = project(tmp_path, task="binary")
    w = writer(proj)
    feats = [{"x": 1.0, "c": "a"}]
    w.add(PREDICTIONS, prediction_rows(feats, ["yes"], [[0.2, 0.8]], ["i0"], [T0], "b:1", "m:1"))
    w.add(LABELS, label_rows([{"inference_id": "i0", "label": "no"}], T0))
    w.close()
    frame = read_window(proj, T0, T0 + timedelta(seconds=1)).frame
    assert frame[["prediction", "label"]].iloc[0].tolist() == ["yes", "no"]
