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
    PredictionColumns,
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


def test_first_label_wins_and_unknown_ids_are_ignored(tmp_path):
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
    assert labels["i0"] == 1.0  # a later label (another server stored it) never overrides
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


def dropped_metric(kind: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("driftloop_capture_dropped_total", {"kind": kind}) or 0.0


def test_a_flood_of_labels_never_pushes_predictions_out(tmp_path, caplog):
    proj = project(tmp_path)
    w = writer(proj, max_buffer=10)
    before = dropped_metric(LABELS), dropped_metric(PREDICTIONS)
    flood = [{"inference_id": f"x{i}", "label": 1.0} for i in range(1000)]
    with caplog.at_level("WARNING", logger="driftloop.capture"):
        for _ in range(5):
            w.add(LABELS, label_rows(flood, T0))
    w.add(PREDICTIONS, rows(10, T0, timedelta(0)))
    assert w.dropped_by_kind == {PREDICTIONS: 0, LABELS: 5000 - 10}
    assert dropped_metric(LABELS) - before[0] == 5000 - 10
    assert dropped_metric(PREDICTIONS) == before[1]
    drops = [r for r in caplog.records if "capture dropped" in r.getMessage()]
    assert len(drops) == 1  # one line, not one per request
    w.close()
    assert read_window(proj, T0, T0 + timedelta(seconds=1)).rows == 10


def test_a_group_that_cannot_be_written_is_counted_and_the_rest_still_lands(tmp_path):
    proj = project(tmp_path)
    w = writer(proj)
    before = dropped_metric(PREDICTIONS)
    bad = rows(1, T0 + timedelta(hours=1), timedelta(0), "bad")
    bad[0]["prediction"] = "not a float"
    w.add(PREDICTIONS, rows(3, T0, timedelta(0)) + bad)
    w.close()
    assert dropped_metric(PREDICTIONS) - before == 1
    assert read_window(proj, T0, T0 + timedelta(hours=2)).rows == 3


def test_partitions_have_four_digit_years(tmp_path):
    from model.capture import partition

    assert partition(datetime(999, 6, 1, 7, tzinfo=UTC)) == ("dt=0999-06-01", "hour=07")
    proj = project(tmp_path)
    w = writer(proj)
    w.add(PREDICTIONS, rows(1, datetime(1971, 2, 3, 4, tzinfo=UTC), timedelta(0)))
    w.close()
    (part,) = (tmp_path / "capture/predictions").rglob("*.parquet")
    assert part.parent.relative_to(tmp_path / "capture/predictions").as_posix() == (
        "dt=1971-02-03/hour=04"
    )


@pytest.mark.parametrize(
    "bad", ["dt=999-06-01/hour=00", "dt=2011-13-01/hour=00", "dt=garbage", "dt=2011-04-01/hour=x"]
)
def test_a_partition_that_does_not_parse_is_skipped_with_a_warning(tmp_path, caplog, bad):
    import pyarrow.parquet as pq

    proj = project(tmp_path)
    w = writer(proj)
    w.add(PREDICTIONS, rows(4, T0, timedelta(minutes=1)))
    w.close()
    good = next((tmp_path / "capture/predictions").rglob("*.parquet"))
    stray = tmp_path / "capture/predictions" / bad / "part-1.parquet"
    stray.parent.mkdir(parents=True)
    pq.write_table(pq.read_table(good), stray)  # the same rows again, in the wrong place
    with caplog.at_level("WARNING", logger="driftloop.capture"):
        window = read_window(proj, T0, T0 + timedelta(hours=1))
    assert window.rows == 4
    (line,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert bad.split("/")[0] in line


def test_classifier_predictions_and_labels_are_strings(tmp_path):
    proj = project(tmp_path, task="binary")
    w = writer(proj)
    feats = [{"x": 1.0, "c": "a"}]
    w.add(PREDICTIONS, prediction_rows(feats, ["yes"], [[0.2, 0.8]], ["i0"], [T0], "b:1", "m:1"))
    w.add(LABELS, label_rows([{"inference_id": "i0", "label": "no"}], T0))
    w.close()
    frame = read_window(proj, T0, T0 + timedelta(seconds=1)).frame
    assert frame[["prediction", "label"]].iloc[0].tolist() == ["yes", "no"]


def test_event_window_refuses_times_outside_it():
    from model.capture import EventWindow

    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    window = EventWindow()
    assert window.check("2011-04-01T08:00:00Z", now) == T0
    assert window.check("2026-06-01T12:04:00+00:00", now) > now  # within the 300 s of skew
    for bad, needle in [
        ("9999-12-30T00:00:00Z", "ahead of the server's clock"),
        ("0999-06-01T00:00:00Z", "before 1970-01-01"),
        ("0001-01-01T00:00+01:00", "outside the years 1 to 9999"),
        ("9999-12-31T23:00-05:00", "outside the years 1 to 9999"),
        ("999-06-01", "Invalid isoformat"),
        ("", "is empty"),
        ("2011-04-01" + " " * 100, "characters long"),
        (12, "must be an ISO 8601 string"),
    ]:
        with pytest.raises(ValueError, match=needle):
            window.check(bad, now)
    week = EventWindow(max_future_seconds=0, max_age_days=7)
    with pytest.raises(ValueError, match="before 2026-05-25"):
        week.check("2026-05-20T00:00:00Z", now)
    with pytest.raises(ValueError, match="ahead"):
        week.check("2026-06-01T12:00:01Z", now)


def test_recent_ids_forget_the_oldest_generation_only():
    from model.capture import RecentIds

    ids = RecentIds(capacity=8, generations=4)
    ids.add(f"a{i}" for i in range(8))
    assert all(f"a{i}" in ids for i in range(8))
    ids.add(["b0", "b1"])  # a fifth generation: the oldest two go
    assert "a0" not in ids and "a1" not in ids and "a2" in ids and "b1" in ids
    assert len(ids) <= 8


def test_labels_match_ids_another_server_wrote_to_the_store(tmp_path):
    from model.capture import LabelGate

    proj = project(tmp_path)
    other = writer(proj)  # the other slot: its predictions reach the store, not this memory
    other.add(PREDICTIONS, rows(3, T0, timedelta(minutes=1), "blue-"))
    other.close()
    gate = LabelGate(tmp_path / "capture" / PREDICTIONS)
    gate.answered(["green-0"])
    accepted, unknown, repeated = gate.admit(
        [
            {"inference_id": "blue-0", "label": 1.0},
            {"inference_id": "green-0", "label": 2.0},
            {"inference_id": "nobody", "label": 3.0},
            {"inference_id": "blue-0", "label": 4.0},
        ]
    )
    assert [a["label"] for a in accepted] == [1.0, 2.0]
    assert (unknown, repeated) == (1, 1)
    later = writer(proj)  # written after the first look: found on the next one
    later.add(PREDICTIONS, rows(1, T0, timedelta(0), "late-"))
    later.close()
    gate.store.min_interval = 0
    assert gate.admit([{"inference_id": "late-0", "label": 5.0}])[0] == [
        {"inference_id": "late-0", "label": 5.0}
    ]


def test_an_age_limit_past_year_one_leaves_1970_the_floor():
    from model.capture import EventWindow

    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert EventWindow(max_age_days=1e9).check("1970-01-01T00:00:00Z", now).year == 1970


def test_a_request_handed_over_as_columns_reads_back_as_the_same_rows(tmp_path):
    """The service's path (`PredictionColumns`, `add_predictions`) stores what dict rows would."""
    by_rows, by_columns = project(tmp_path / "rows"), project(tmp_path / "columns")
    feats = pd.DataFrame({"x": [0.5, float("nan"), 2.0], "c": ["a", float("nan"), "b"]}).astype(
        {"c": object}
    )
    times = [T0, T0, T0 + timedelta(hours=1)]  # two partitions
    ids, predictions = ["r0", "r1", "r2"], [1.0, 2.0, 3.0]
    w = writer(by_rows)
    typed = [{"x": 0.5, "c": "a"}, {"x": None, "c": None}, {"x": 2.0, "c": "b"}]
    w.add(PREDICTIONS, prediction_rows(typed, predictions, None, ids, times, "b:1", "m:1"))
    w.close()
    w = writer(by_columns)
    schema = w.schemas[PREDICTIONS]
    answer = {"predictions": predictions, "probabilities": None, "ids": ids, "times": times}
    w.add_predictions(PredictionColumns.of_frame(feats, schema, bento="b:1", model="m:1", **answer))
    w.close()
    window = (T0, T0 + timedelta(hours=2))
    expected = read_window(by_rows, *window).frame.sort_values("inference_id")
    got = read_window(by_columns, *window).frame.sort_values("inference_id")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    assert got["inference_id"].tolist() == ids and got["c"].isna().tolist() == [False, True, False]
    parts = sorted(p.parent.name for p in (tmp_path / "columns").rglob("*.parquet"))
    assert parts == ["hour=08", "hour=09"]


def test_requests_flushed_together_keep_their_own_times_bentos_and_models(tmp_path):
    """One flush builds one table from many requests: each row keeps its request's bento and
    model, and its own event time to the microsecond (one stamp per request, or one per row)."""
    proj = project(tmp_path)
    w = writer(proj)
    schema = w.schemas[PREDICTIONS]
    feats = pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]}).astype({"c": object})
    stamped = T0 + timedelta(microseconds=7)
    requests = [
        ("blue:1", "m:1", ["a0", "a1"], [stamped, stamped]),
        ("green:2", "m:2", ["b0", "b1"], [T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]),
    ]
    for bento, model, ids, times in requests:
        answer = {"predictions": [0.0, 0.0], "probabilities": None, "ids": ids, "times": times}
        w.add_predictions(
            PredictionColumns.of_frame(feats, schema, bento=bento, model=model, **answer)
        )
    w.close()
    frame = read_window(proj, T0, T0 + timedelta(hours=1)).frame.set_index("inference_id")
    assert frame.loc[["a0", "a1", "b0", "b1"], "bento"].tolist() == [
        "blue:1",
        "blue:1",
        "green:2",
        "green:2",
    ]
    assert frame.loc[["a0", "b1"], "model"].tolist() == ["m:1", "m:2"]
    stamps = frame.loc[["a0", "a1", "b0", "b1"], "timestamp"].tolist()
    assert stamps == [
        pd.Timestamp("2011-04-01T08:00:00.000007Z"),
        pd.Timestamp("2011-04-01T08:00:00.000007Z"),
        pd.Timestamp("2011-04-01T08:00:01Z"),
        pd.Timestamp("2011-04-01T08:00:02Z"),
    ]
    assert len(list(tmp_path.rglob("*.parquet"))) == 1  # one flush, one file


def test_columns_past_the_buffer_are_dropped_and_counted(tmp_path):
    proj = project(tmp_path)
    w = writer(proj, max_buffer=4)
    feats = pd.DataFrame({"x": [1.0] * 3, "c": ["a"] * 3}).astype({"c": object})
    schema = w.schemas[PREDICTIONS]
    for k in range(2):
        ids = [f"{k}-{i}" for i in range(3)]
        answer = {"predictions": [0.0] * 3, "probabilities": None, "ids": ids, "times": [T0] * 3}
        columns = PredictionColumns.of_frame(feats, schema, bento="b:1", model="m:1", **answer)
        w.add_predictions(columns)
    assert w.dropped == 2
    w.close()
    assert read_window(proj, T0, T0 + timedelta(seconds=1)).rows == 4
