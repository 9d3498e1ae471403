"""Compaction of the capture store: quiet hours' part files become one file, every row exactly
once in every read before, during and after, and sources deleted only after the grace period."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from model.capture import LABELS, PREDICTIONS
from model.store import open_store
from tasks.compaction import (
    LOCK_NAME,
    CompactionError,
    CompactionResult,
    compact_capture,
    compact_store,
    visible_files,
)
from tests.s3_server import S3Server
from tests.tasks.monitor.compaction_store import (
    HOUR,
    first_labels,
    id_counts,
    listed,
    local_store,
    on_disk,
    read_table,
    write_labels,
    write_predictions,
)

NEXT_HOUR = HOUR + timedelta(hours=1)


def two_hours_of_predictions(store) -> None:
    """Hour 08: ids a0..a14 in 5 files; hour 09: ids b0..b11 in 4 files."""
    for f in range(5):
        write_predictions(store, [f"a{3 * f + i}" for i in range(3)], HOUR + timedelta(minutes=f))
    for f in range(4):
        write_predictions(store, [f"b{3 * f + i}" for i in range(3)], NEXT_HOUR)


def rows(store) -> Counter:
    """Every predictions row as (id, time, temp, season, prediction), counted."""
    table = read_table(store, PREDICTIONS)
    features = table.column("features").combine_chunks()
    return Counter(
        zip(
            table.column("inference_id").to_pylist(),
            table.column("timestamp").to_pylist(),
            features.field("temp").to_pylist(),
            features.field("season").to_pylist(),
            table.column("prediction").to_pylist(),
            strict=True,
        )
    )


def test_compaction_keeps_every_row_once_in_one_file_per_hour(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    two_hours_of_predictions(store)
    before = rows(store)
    assert sum(before.values()) == 27 and len(listed(store, PREDICTIONS)) == 9

    result = compact_store(store, quiet_seconds=60)

    assert result == CompactionResult(hours=2, files_in=9, files_out=2, rows=27, deleted=0)
    assert rows(store) == before
    visible = visible_files(store, listed(store, PREDICTIONS))
    assert [Path(p).name.startswith("compact-") for p in visible] == [True, True]
    assert [Path(p).parent.name for p in visible] == ["hour=08", "hour=09"]
    assert len(listed(store, PREDICTIONS)) == 11  # the sources stay for readers that listed them
    assert sum(pq.read_metadata(p).num_rows for p in visible) == 27


def test_sources_are_deleted_only_after_the_grace_period(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    two_hours_of_predictions(store)
    before = rows(store)
    compact_store(store, quiet_seconds=60)

    soon = compact_store(store, quiet_seconds=60, now=datetime.now(UTC) + timedelta(seconds=30))
    assert soon == CompactionResult()
    assert len(listed(store, PREDICTIONS)) == 11

    later = compact_store(store, quiet_seconds=60, now=datetime.now(UTC) + timedelta(seconds=61))
    assert later == CompactionResult(deleted=9)
    assert [p.split("/")[-1][:8] for p in on_disk(store, PREDICTIONS)] == ["compact-"] * 2
    assert rows(store) == before


def test_an_hour_with_a_fresh_file_is_left_alone(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    for f in range(3):
        write_labels(store, [(f"old{f}", HOUR, 1.0)])
    write_labels(store, [("fresh", HOUR, 2.0)], age=5)
    for f in range(2):
        write_labels(store, [(f"next{f}", NEXT_HOUR, 3.0)])

    result = compact_store(store, quiet_seconds=60)

    assert (result.hours, result.files_in, result.files_out) == (1, 2, 1)
    hours = [p.split("/")[-2] for p in visible_files(store, listed(store, LABELS))]
    assert sorted(hours) == ["hour=08"] * 4 + ["hour=09"]
    assert id_counts(store, LABELS) == Counter(
        {"old0": 1, "old1": 1, "old2": 1, "fresh": 1, "next0": 1, "next1": 1}
    )


def test_the_first_label_of_each_id_still_wins(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    t = HOUR + timedelta(minutes=10)
    # "late": the earlier time wins though its file sorts last; "tie": equal times, file order
    write_labels(
        store, [("late", t + timedelta(minutes=5), 1.0), ("tie", t, 3.0)], name="part-1-a.parquet"
    )
    write_labels(store, [("tie", t, 4.0)], name="part-1-b.parquet")
    write_labels(store, [("late", t, 2.0), ("other", t, 5.0)], name="part-1-c.parquet")
    expected = {"late": 2.0, "tie": 3.0, "other": 5.0}
    assert first_labels(store) == expected

    compact_store(store, quiet_seconds=0, grace_seconds=0)

    assert [name.split("/")[-1][:8] for name in on_disk(store, LABELS)] == ["compact-"]
    assert first_labels(store) == expected


def test_late_files_are_compacted_with_the_hours_compacted_file(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    for f in range(3):
        write_labels(store, [(f"x{f}", HOUR, 1.0)])
    compact_store(store, quiet_seconds=60)
    write_labels(store, [("late", HOUR, 2.0)], age=120)

    result = compact_store(store, quiet_seconds=60)

    assert (result.files_in, result.files_out) == (2, 1)  # the compacted file and the late one
    assert id_counts(store, LABELS) == Counter({"x0": 1, "x1": 1, "x2": 1, "late": 1})
    assert len(visible_files(store, listed(store, LABELS))) == 1
    done = compact_store(store, quiet_seconds=60, now=datetime.now(UTC) + timedelta(seconds=61))
    assert done.deleted == 5  # three parts, the first compacted file, the late part
    assert id_counts(store, LABELS) == Counter({"x0": 1, "x1": 1, "x2": 1, "late": 1})


def test_every_read_is_exact_for_every_set_of_deleted_sources(tmp_path: Path) -> None:
    """A committed compacted file, with any subset of what it holds already deleted (a crash
    between deletes, in any order), and with a second run's duplicate commit beside it."""
    origin = local_store(tmp_path / "origin")
    for f in range(2):
        write_labels(origin, [(f"x{f}", HOUR, 1.0)])
    compact_store(origin, quiet_seconds=60)
    write_labels(origin, [("late", HOUR, 2.0)], age=120)
    compact_store(origin, quiet_seconds=60)  # holds the first compacted file, x0, x1, late
    hour_dir = Path(listed(origin, LABELS)[0]).parent
    newest = max(
        hour_dir.glob("compact-*"),
        key=lambda p: len(json.loads(pq.read_metadata(p).metadata[b"driftloop.compacted_from"])),
    )
    held = sorted(p.name for p in hour_dir.iterdir() if p != newest)
    assert len(held) == 4
    expected = Counter({"x0": 1, "x1": 1, "late": 1})

    for k in range(len(held) + 1):
        for gone in itertools.combinations(held, k):
            for twin in (False, True):
                copy = tmp_path / f"case-{k}-{'-'.join(gone)}-{twin}"
                shutil.copytree(tmp_path / "origin", copy)
                copy_hour = copy / hour_dir.relative_to(tmp_path / "origin")
                for name in gone:
                    (copy_hour / name).unlink()
                if twin:  # a second run's commit of the same sources
                    shutil.copy(copy_hour / newest.name, copy_hour / "compact-zz.parquet")
                assert id_counts(local_store(copy), LABELS) == expected, (gone, twin)


def test_a_run_is_exact_for_a_reader_at_every_step(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    two_hours_of_predictions(store)
    expected = Counter({f"a{i}": 1 for i in range(15)} | {f"b{i}": 1 for i in range(12)})
    seen: list[str] = []

    def check(step: str) -> None:
        seen.append(step)
        assert id_counts(store, PREDICTIONS) == expected, step

    compact_store(store, quiet_seconds=0, grace_seconds=0, on_step=check)

    assert (
        seen
        == ["written", "committed"] + ["deleted"] * 5 + ["written", "committed"] + ["deleted"] * 4
    )
    assert id_counts(store, PREDICTIONS) == expected


def test_rows_per_file_are_capped_and_schemas_kept_apart(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    for f in range(4):
        write_labels(store, [(f"l{f}-{i}", HOUR, 1.0) for i in range(10)])
    for f in range(2):  # a new model mid-hour: another schema, compacted on its own
        write_predictions(store, [f"p{f}"], HOUR)
    one = pq.read_table(listed(store, PREDICTIONS)[0]).drop_columns(["probabilities"])
    for f in range(2):
        pq.write_table(one, Path(listed(store, PREDICTIONS)[0]).parent / f"part-9-{f}.parquet")
    for path in Path(tmp_path).rglob("part-9-*"):
        os.utime(path, (time.time() - 3600,) * 2)

    result = compact_store(store, quiet_seconds=60, max_rows_per_file=20)

    assert (result.files_in, result.files_out, result.rows) == (8, 4, 44)
    label_files = visible_files(store, listed(store, LABELS))
    assert sorted(pq.read_metadata(p).num_rows for p in label_files) == [20, 20]
    prediction_files = visible_files(store, listed(store, PREDICTIONS))
    assert sorted(len(pq.read_schema(p).names) for p in prediction_files) == [6, 7]


def test_a_held_lock_skips_the_run_and_a_dead_holders_lock_is_taken(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    for f in range(2):
        write_labels(store, [(f"x{f}", HOUR, 1.0)])
    lock = tmp_path / LOCK_NAME
    host = socket.gethostname()
    lock.write_text(
        json.dumps({"token": "t", "host": host, "pid": os.getpid(), "expires": time.time() + 600})
    )

    skipped = compact_store(store, quiet_seconds=60)

    assert skipped == CompactionResult(held_by=f"pid {os.getpid()} on {host}")
    assert len(listed(store, LABELS)) == 2
    dead = 2**22 + 12345  # above pid_max's default: no such process
    lock.write_text(
        json.dumps({"token": "t", "host": host, "pid": dead, "expires": time.time() + 600})
    )

    taken = compact_store(store, quiet_seconds=60)

    assert (taken.files_in, taken.files_out) == (2, 1)
    assert not lock.exists()


def test_a_foreign_file_named_like_a_compacted_one_is_a_clear_error(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    write_labels(store, [("x", HOUR, 1.0)])
    write_labels(store, [("y", HOUR, 1.0)], name="compact-mine.parquet")

    with pytest.raises(CompactionError, match=r"names no sources.*move it out"):
        visible_files(store, listed(store, LABELS))


WRITER = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
from model.capture import LABELS, CaptureWriter, capture_schema

root, progress, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
schemas = {LABELS: capture_schema([], [], "regression")[LABELS]}
writer = CaptureWriter(root=root, schemas=schemas, flush_seconds=3600)
hours = [datetime(2011, 4, 1, 8, tzinfo=UTC), datetime(2011, 4, 1, 9, tzinfo=UTC)]
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    times = [*hours, datetime.now(UTC)]
    writer.add(LABELS, [
        {"inference_id": f"id{n + i}", "timestamp": when, "label": 1.0}
        for i, when in enumerate(times)
    ])
    writer.flush()
    n += len(times)
    progress.with_suffix(".tmp").write_text(str(n))
    progress.with_suffix(".tmp").replace(progress)
    time.sleep(0.1)
writer.close()
"""


def test_every_read_is_exact_while_a_writer_and_compaction_run(tmp_path: Path) -> None:
    """A writer process flushing every 0.1 s into two old hours and the current one, a reader
    loop, and compaction run again and again: each read holds every id flushed before it began,
    once."""
    store = local_store(tmp_path / "capture")
    progress = tmp_path / "progress"
    repo = Path(__file__).resolve().parents[3]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, store.root, str(progress), "6"], cwd=repo
    )
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def read_loop() -> None:
        nonlocal reads
        while not stop.is_set():
            flushed = int(progress.read_text())
            counts = id_counts(store, LABELS)
            missing = {f"id{i}" for i in range(flushed)} - set(counts)
            twice = sorted(i for i, n in counts.items() if n != 1)
            if missing or twice:
                failures.append(f"read {reads}: missing {sorted(missing)[:5]}, twice {twice[:5]}")
            reads += 1

    try:
        deadline = time.monotonic() + 20
        while not progress.exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        reader = threading.Thread(target=read_loop)
        reader.start()
        done = CompactionResult()
        until = time.monotonic() + 4
        while time.monotonic() < until:
            done += compact_store(store, quiet_seconds=0, grace_seconds=1.5)
            time.sleep(0.05)
        stop.set()
        reader.join(30)
        assert writer.wait(20) == 0  # its last flush counted in `progress`
    finally:
        stop.set()
        writer.kill()
        writer.wait(10)

    assert failures == []
    assert reads >= 10
    assert done.files_out >= 10 and done.deleted >= 10
    assert sum(id_counts(store, LABELS).values()) == int(progress.read_text())


def test_the_task_compacts_after_the_quiet_period_and_none_turns_it_off(tmp_path: Path) -> None:
    store = local_store(tmp_path / "capture")
    for f in range(3):
        write_labels(store, [(f"x{f}", HOUR, 1.0)], age=120)

    off = compact_capture.fn(store, None)
    assert off == CompactionResult()
    assert len(listed(store, LABELS)) == 3

    on = compact_capture.fn(store, 60)
    assert on == CompactionResult(hours=1, files_in=3, files_out=1, rows=3)
    assert id_counts(store, LABELS) == Counter({"x0": 1, "x1": 1, "x2": 1})


def test_compaction_on_an_s3_api_store(tmp_path: Path, s3_server: S3Server) -> None:
    """The same protocol against a real S3-API server: one PUT commits, the lock is an object."""
    url = s3_server.prefix("compaction")
    store = open_store(url, base=tmp_path, endpoint_url=s3_server.url)
    for f in range(4):
        write_labels(store, [(f"x{f}", HOUR, 1.0), (f"y{f}", HOUR, 2.0)])

    result = compact_store(store, quiet_seconds=0, grace_seconds=60)

    assert result == CompactionResult(hours=1, files_in=4, files_out=1, rows=8)
    assert id_counts(store, LABELS) == Counter({f"{c}{f}": 1 for c in "xy" for f in range(4)})
    assert len(s3_server.keys(url)) == 5
    later = datetime.now(UTC) + timedelta(seconds=120)
    assert compact_store(store, quiet_seconds=0, grace_seconds=60, now=later).deleted == 4
    keys = [key.split("/")[-1] for key in s3_server.keys(url)]
    assert [key[:8] for key in keys] == ["compact-"]  # no lock object left either
    assert id_counts(store, LABELS) == Counter({f"{c}{f}": 1 for c in "xy" for f in range(4)})
