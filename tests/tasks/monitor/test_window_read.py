"""The window reader on the store: hour pruning, compacted files, files that vanish mid-read."""

from __future__ import annotations

import threading
from datetime import timedelta

import pyarrow.fs as pafs
import pytest

from model.capture import LABELS, PREDICTIONS, label_rows
from model.store import Store
from tasks.capture import CaptureReadError, capture_store, list_files, read_window
from tasks.compaction import compact_store
from tests.tasks.monitor.test_capture_window import T0, project, rows, writer


def fill(proj, hours: int, per_hour: int, files_per_hour: int = 1) -> None:
    """`per_hour` predictions in each of `hours` hours from T0, each labelled with its index."""
    for k in range(files_per_hour):
        w = writer(proj)
        n = per_hour // files_per_hour
        for h in range(hours):
            prefix = f"h{h}-f{k}-"
            w.add(PREDICTIONS, rows(n, T0 + timedelta(hours=h), timedelta(seconds=1), prefix))
            labelled = [{"inference_id": f"{prefix}{i}", "label": float(i)} for i in range(n)]
            w.add(LABELS, label_rows(labelled, T0 + timedelta(hours=h, minutes=30)))
        w.close()


def test_only_the_hours_that_overlap_the_window_are_listed(tmp_path):
    proj = project(tmp_path)
    fill(proj, hours=6, per_hour=5)
    store = capture_store(proj)
    start, end = T0 + timedelta(hours=2, minutes=30), T0 + timedelta(hours=4)
    files = list_files(store, store.join(PREDICTIONS), start, end)
    assert [f.split("/")[-2] for f in files] == ["hour=10", "hour=11"]
    labels_since = list_files(store, store.join(LABELS), start, None)
    assert [f.split("/")[-2] for f in labels_since] == ["hour=10", "hour=11", "hour=12", "hour=13"]
    # a damaged file in an hour outside the window is never opened
    (tmp_path / "capture/predictions/dt=2011-04-01/hour=13/part-bad.parquet").write_text("junk")
    window = read_window(proj, T0 + timedelta(hours=2), end)
    assert window.rows == 10 and window.label_coverage == 1.0


def test_a_damaged_file_inside_the_window_is_a_clear_error(tmp_path):
    proj = project(tmp_path)
    fill(proj, hours=1, per_hour=5)
    (tmp_path / "capture/predictions/dt=2011-04-01/hour=08/part-bad.parquet").write_text("junk")
    with pytest.raises(CaptureReadError, match="damaged or not parquet; move it out"):
        read_window(proj, T0, T0 + timedelta(hours=1))


def test_naive_times_are_utc(tmp_path):
    proj = project(tmp_path)
    fill(proj, hours=2, per_hour=4)
    naive = read_window(
        proj, T0.replace(tzinfo=None), (T0 + timedelta(hours=1)).replace(tzinfo=None)
    )
    assert naive.rows == 4 and set(naive.frame["inference_id"]) == {f"h0-f0-{i}" for i in range(4)}


def test_a_compacted_hour_reads_the_same_rows_once(tmp_path):
    proj = project(tmp_path)
    fill(proj, hours=2, per_hour=30, files_per_hour=3)
    window = (T0, T0 + timedelta(hours=2))
    before = read_window(proj, *window).frame.sort_values("inference_id").reset_index(drop=True)
    assert len(before) == 60 and before["inference_id"].is_unique
    store = capture_store(proj)
    # committed, sources still there (the readers' grace period): each row is still read once
    done = compact_store(store, quiet_seconds=0.0, now=T0 + timedelta(days=9999))
    assert done.files_out == 4  # two hours of predictions, two of labels
    after = read_window(proj, *window).frame.sort_values("inference_id").reset_index(drop=True)
    assert after.equals(before)
    names = {f.split("/")[-1][:8] for f in list_files(store, store.join(PREDICTIONS), *window)}
    assert names == {"compact-"}


def test_a_file_that_vanishes_between_listing_and_reading_means_listing_again(tmp_path, caplog):
    """A mover renames the hour's files while windows are read: every read is exact."""
    proj = project(tmp_path)
    fill(proj, hours=1, per_hour=200, files_per_hour=40)
    hour = tmp_path / "capture/predictions/dt=2011-04-01/hour=08"
    stop = threading.Event()

    def move() -> None:
        k = 0
        while not stop.is_set():
            for path in sorted(hour.glob("part-*.parquet")):
                k += 1
                path.replace(hour / f"part-moved-{k}.parquet")
            stop.wait(0.3)  # as a compaction: one pass, then the files stay a while

    mover = threading.Thread(target=move)
    mover.start()
    reads, retried = 0, False
    try:
        with caplog.at_level("INFO", logger="driftloop.capture"):
            while reads < 200 and not retried:
                window = read_window(proj, T0, T0 + timedelta(hours=1))
                assert window.rows == 200 and window.frame["inference_id"].is_unique
                reads += 1
                retried = any("went away" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        mover.join()
    assert retried, f"no read met a vanished file in {reads} reads"


def test_the_store_is_read_through_its_filesystem(tmp_path):
    """The reader takes any pyarrow filesystem: a SubTreeFileSystem rooted at the store."""
    proj = project(tmp_path)
    fill(proj, hours=2, per_hour=3)
    local = capture_store(proj)
    sub = Store(fs=pafs.SubTreeFileSystem(local.root, pafs.LocalFileSystem()), root="", url="x")
    files = list_files(sub, sub.join(PREDICTIONS), T0, T0 + timedelta(hours=2))
    assert [f.split("/")[-3:-1] for f in files] == [
        ["dt=2011-04-01", "hour=08"],
        ["dt=2011-04-01", "hour=09"],
    ]


def test_a_window_on_s3_reads_as_the_same_window_on_disk(tmp_path, s3_server):
    """The same capture files on the S3-API server: the same rows, labels, sample and pruning."""
    local = project(tmp_path / "disk")
    fill(local, hours=3, per_hour=400, files_per_hour=4)
    url = s3_server.prefix("window")
    pafs.copy_files(
        str(tmp_path / "disk/capture"),
        url.removeprefix("s3://"),
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=s3_server.filesystem(),
    )
    cfg = local.config.model_copy(
        update={
            "capture": local.config.capture.model_copy(update={"path": url}),
            "storage": local.config.storage.model_copy(update={"endpoint_url": s3_server.url}),
        }
    )
    remote = local.__class__(config=cfg, path=local.path, root=local.root)
    assert not capture_store(remote).is_local
    window = (T0 + timedelta(hours=1), T0 + timedelta(hours=3))
    on_disk, on_s3 = read_window(local, *window), read_window(remote, *window)
    assert on_s3.rows == 800 and on_s3.label_coverage == 1.0
    assert on_s3.frame.equals(on_disk.frame)
    sampled = read_window(remote, *window, max_rows=300)
    assert (sampled.rows, sampled.rows_total, sampled.sampled) == (300, 800, True)
    expected = read_window(local, *window, max_rows=300).frame["inference_id"].tolist()
    assert sampled.frame["inference_id"].tolist() == expected
