"""Late labels settle earlier windows' estimates: each is read again once its labels arrived, set
beside the realised value, counted in the band's live coverage, and never settled twice."""

from __future__ import annotations

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
from tasks.capture import Window
from tasks.monitor.history import MonitorRecord, save_record
from tasks.monitor.outcome import monitor_metrics
from tasks.monitor.results import CheckResult
from tasks.monitor.settle import read_settled, settle_estimates

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def project(tmp_path: Path, per_run: int = 3) -> Project:
    cfg = DriftloopConfig.model_validate(
        {
            "data": {
                "path": "d.csv",
                "target": "y",
                "task": "regression",
                "numeric": ["x"],
                "categorical": ["c"],
            },
            "train": {"estimator": "sklearn.linear_model.Ridge"},
            "capture": {"path": str(tmp_path / "capture")},
            "evaluate": {"metrics": ["rmse"], "primary": "rmse"},
            "monitor": {"min_labels": 50},
            "estimate": {"settle_days": 2, "settle_per_run": per_run},
        }
    )
    return Project(config=cfg, path=tmp_path / "c.yaml", root=tmp_path)


def capture(proj: Project, start: datetime, tag: str, n: int = 80, off_by: float | None = None):
    """`n` predictions (2x) in the hour from `start`; with `off_by`, every label is the
    prediction plus that much, so the window's realised rmse is exactly `off_by`."""
    writer = CaptureWriter(
        proj.resolve(proj.config.capture.path), capture_schema(["x"], ["c"], "regression"), 60
    )
    ids = [f"{tag}{i}" for i in range(n)]
    times = [start + timedelta(seconds=30 * i) for i in range(n)]
    features = [{"x": float(i), "c": "a"} for i in range(n)]
    writer.add(
        PREDICTIONS,
        prediction_rows(features, [2.0 * i for i in range(n)], None, ids, times, "b", "m"),
    )
    if off_by is not None:
        labels = [{"inference_id": ids[i], "label": 2.0 * i + off_by} for i in range(n)]
        writer.add(LABELS, label_rows(labels, NOW))
    writer.close()


def record(proj: Project, run_id: str, start: datetime, lower: float, upper: float) -> None:
    """A monitor run that estimated rmse (midway in its band) before any label came."""
    save_record.fn(
        proj,
        MonitorRecord(
            run_id=run_id,
            model=proj.config.project.name,
            window_start=start.isoformat(),
            window_end=(start + timedelta(hours=1)).isoformat(),
            serving_bento="b",
            data_rev="r",
            verdict="no_drift",
            rows=80,
            label_coverage=0.0,
            dataset_drift=False,
            quality_breached=False,
            usable=True,
            finished_at=start.isoformat(),
            result={},
            estimate={
                "metric": "rmse",
                "value": (lower + upper) / 2,
                "lower": lower,
                "upper": upper,
            },
        ),
    )


def test_a_window_is_settled_once_its_labels_arrive_and_only_once(tmp_path):
    proj = project(tmp_path)
    early = NOW - timedelta(hours=5)
    capture(proj, early, "a")
    record(proj, "run-a", early, lower=1.0, upper=3.0)

    waiting = settle_estimates.fn(proj, NOW)
    assert waiting.settled_now == [] and waiting.coverage is None  # no label yet

    capture(proj, early, "late", n=0)  # nothing new in the window itself
    labels = [{"inference_id": f"a{i}", "label": 2.0 * i + 2.5} for i in range(80)]
    writer = CaptureWriter(
        proj.resolve(proj.config.capture.path), capture_schema(["x"], ["c"], "regression"), 60
    )
    writer.add(LABELS, label_rows(labels, NOW))
    writer.close()

    settled = settle_estimates.fn(proj, NOW)
    [only] = settled.settled_now
    assert (only.run_id, only.metric, only.labelled_rows) == ("run-a", "rmse", 80)
    assert only.realised == pytest.approx(2.5)
    assert only.error == pytest.approx(2.0 - 2.5)
    assert only.inside
    assert (settled.coverage, settled.windows) == (1.0, 1)

    again = settle_estimates.fn(proj, NOW)
    assert again.settled_now == [] and len(read_settled(proj)) == 1


def test_coverage_counts_bands_that_missed_and_metrics_carry_it(tmp_path):
    proj = project(tmp_path)
    for k, (lower, upper) in enumerate([(2.0, 3.0), (0.5, 1.0)]):
        start = NOW - timedelta(hours=10 - k)
        capture(proj, start, f"w{k}-", off_by=2.5)
        record(proj, f"run-{k}", start, lower, upper)
    summary = settle_estimates.fn(proj, NOW)
    assert [(s.run_id, s.inside) for s in summary.settled_now] == [
        ("run-0", True),
        ("run-1", False),
    ]
    assert summary.coverage == 0.5

    result = CheckResult(verdict="no_drift", message="", drift_share_threshold=0.3)
    metrics = monitor_metrics(result, Window(None, None, pd.DataFrame(), 0.0), 1.0, summary)
    assert (metrics.band_coverage, metrics.settled_windows) == (0.5, 2)
    assert metrics.estimate_error == (("rmse", pytest.approx(0.75 - 2.5)),)


def test_only_earlier_windows_within_the_horizon_a_few_per_run(tmp_path):
    proj = project(tmp_path, per_run=2)
    starts = {
        "too-old": NOW - timedelta(days=3),  # past estimate.settle_days (2)
        "current": NOW,  # the window this run checks itself
        "first": NOW - timedelta(hours=30),
        "second": NOW - timedelta(hours=20),
        "third": NOW - timedelta(hours=10),
    }
    for run_id, start in starts.items():
        capture(proj, start, f"{run_id}-", off_by=1.0)
        record(proj, run_id, start, 0.5, 1.5)
    first = settle_estimates.fn(proj, NOW)
    assert [s.run_id for s in first.settled_now] == ["first", "second"]
    second = settle_estimates.fn(proj, NOW)
    assert [s.run_id for s in second.settled_now] == ["third"]
    assert settle_estimates.fn(proj, NOW).settled_now == []
    assert {s.run_id for s in read_settled(proj)} == {"first", "second", "third"}
