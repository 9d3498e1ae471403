"""Where the capture store lives: clear errors for locations that cannot work, and the writer,
its marker and the label gate's id reader on a real S3-API server as on a local directory."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.capture import (
    LABELS,
    PREDICTIONS,
    CaptureWriter,
    RecentIds,
    StoreIds,
    capture_schema,
    marker_state,
    touch_marker,
    write_table_part,
)
from model.store import StoreError, open_store
from tests.s3_server import S3Server
from tests.support import free_port

WHEN = datetime(2011, 6, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("location", "endpoint", "needle"),
    [
        ("gs://bucket/capture", "", "only local directories and s3:// URLs are supported"),
        ("s3:///capture", "", "names no bucket; write s3://BUCKET/PREFIX"),
        ("s3://bucket/capture", "ftp://store.local", "is not an http(s) URL"),
        ("s3://bucket/capture", "http://", "is not an http(s) URL"),
    ],
    ids=["scheme", "no-bucket", "endpoint-scheme", "endpoint-host"],
)
def test_unusable_locations_are_refused_with_what_to_do(location, endpoint, needle):
    with pytest.raises(StoreError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        open_store(location, base=Path("/srv/project"), endpoint_url=endpoint)


def test_a_directory_is_relative_to_the_project(tmp_path):
    store = open_store(".driftloop/capture", base=tmp_path)
    assert store.is_local
    assert store.sub(PREDICTIONS).local_path() == tmp_path / ".driftloop/capture/predictions"
    s3 = open_store("s3://bucket/some/prefix/", base=tmp_path, endpoint_url="http://127.0.0.1:9")
    assert (s3.root, s3.url, s3.is_local) == (
        "bucket/some/prefix",
        "s3://bucket/some/prefix",
        False,
    )
    assert (
        s3.sub(PREDICTIONS, "dt=2011-06-01").root == "bucket/some/prefix/predictions/dt=2011-06-01"
    )


def test_a_local_part_file_is_renamed_into_place(tmp_path):
    path = Path(write_table_part(tmp_path / "hour=12", pa.table({"inference_id": ["a"]})))
    assert path.parent == tmp_path / "hour=12"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert pq.read_table(path).column(0).to_pylist() == ["a"]


def s3_store(server: S3Server, name: str):
    return open_store(server.prefix(name), base=Path.cwd(), endpoint_url=server.url)


def test_the_writer_flushes_to_s3_in_partitions(s3_server):
    store = s3_store(s3_server, "writer")
    writer = CaptureWriter(store, capture_schema(["x"], ["c"], "regression"), flush_seconds=60)
    writer.add(LABELS, [{"inference_id": "a", "timestamp": WHEN, "label": 3.5}])
    assert writer.flush() == 1
    writer.close()
    keys = s3_server.keys(f"s3://{store.root}")
    prefix = f"{store.root}/labels/"
    assert [k.removeprefix(prefix).split("/part-")[0] for k in keys] == [
        ".written",
        "dt=2011-06-01/hour=12",
    ]
    table = pq.read_table(keys[1], filesystem=s3_server.filesystem())
    assert table.to_pylist() == [{"inference_id": "a", "timestamp": WHEN, "label": 3.5}]


def test_a_store_that_is_down_counts_rows_dropped_and_never_blocks(tmp_path, caplog):
    down = open_store(
        "s3://bucket/capture", base=tmp_path, endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    writer = CaptureWriter(down, capture_schema(["x"], ["c"], "regression"), flush_seconds=60)
    began = time.monotonic()
    writer.add(
        LABELS, [{"inference_id": str(i), "timestamp": WHEN, "label": 1.0} for i in range(5)]
    )
    assert time.monotonic() - began < 0.5  # the request path only appends to a buffer
    assert writer.flush() == 0
    assert writer.dropped_by_kind == {PREDICTIONS: 0, LABELS: 5}
    writer.close()
    assert "capture dropped 5 labels row(s): writing labels/dt=2011-06-01/hour=12 failed" in (
        caplog.text
    )


def test_store_ids_sees_every_flush_on_s3_even_within_one_second(s3_server):
    table = s3_store(s3_server, "ids").sub(PREDICTIONS)
    seen = RecentIds()
    ids = StoreIds(table, seen)
    ids.min_interval = 0
    assert ids.refresh() is True  # the first look walks the (empty) table
    for name in ("first", "second"):  # two flushes of another server, well within a second
        write_table_part(table.sub("dt=2011-06-01", "hour=12"), pa.table({"inference_id": [name]}))
        touch_marker(table)
        assert ids.refresh() is True, f"the marker did not change after the {name} flush"
        assert name in seen
    assert ids.refresh() is False  # nothing new since: no listing
    assert len(seen) == 2


def test_the_marker_is_absent_until_a_flush(s3_server, tmp_path):
    for table in (s3_store(s3_server, "marker").sub(LABELS), open_store(tmp_path, base=tmp_path)):
        assert marker_state(table) is None
        touch_marker(table)
        assert marker_state(table) is not None
