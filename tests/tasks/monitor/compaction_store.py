"""A small capture store for the compaction tests: part files written as the service writes
them (one parquet file per flush, in dt=/hour= directories), and reads as a reader makes them."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from model.capture import LABELS, PREDICTIONS, capture_schema, partition
from model.store import Store, open_store
from tasks.compaction import visible_files

SCHEMAS = capture_schema(["temp"], ["season"], "regression")
HOUR = datetime(2011, 4, 1, 8, tzinfo=UTC)


def local_store(root: Path) -> Store:
    return open_store(root, base=root)


def write_labels(
    store: Store, rows: list[tuple[str, datetime, float]], *, age: float = 3600, name: str = ""
) -> str:
    """One labels part file of (inference_id, timestamp, label) rows, all in one hour, whose
    mtime is `age` seconds ago."""
    table = pa.table(
        {
            "inference_id": [r[0] for r in rows],
            "timestamp": [r[1] for r in rows],
            "label": [r[2] for r in rows],
        },
        schema=SCHEMAS[LABELS],
    )
    return write_part(store, LABELS, rows[0][1], table, age=age, name=name)


def write_predictions(
    store: Store, ids: list[str], when: datetime, *, age: float = 3600, name: str = ""
) -> str:
    """One predictions part file: temp = position in `ids`, season = its parity."""
    n = len(ids)
    table = pa.table(
        {
            "inference_id": ids,
            "timestamp": [when + timedelta(seconds=i) for i in range(n)],
            "bento": ["bike:1"] * n,
            "model": ["bike:m1"] * n,
            "features": [
                {"temp": float(i), "season": "spring" if i % 2 else "summer"} for i in range(n)
            ],
            "prediction": [float(i) * 2 for i in range(n)],
            "probabilities": [None] * n,
        },
        schema=SCHEMAS[PREDICTIONS],
    )
    return write_part(store, PREDICTIONS, when, table, age=age, name=name)


def write_part(
    store: Store, table_name: str, when: datetime, table: pa.Table, *, age: float, name: str
) -> str:
    day, hour = partition(when)
    directory = store.join(table_name, day, hour)
    store.fs.create_dir(directory, recursive=True)
    path = f"{directory}/{name or f'part-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet'}"
    pq.write_table(table, path, filesystem=store.fs)
    if store.is_local:
        stamp = datetime.now(UTC).timestamp() - age
        os.utime(path, (stamp, stamp))
    return path


def listed(store: Store, table_name: str) -> list[str]:
    """Every parquet file a reader lists under a table (dot and underscore files skipped)."""
    selector = pafs.FileSelector(store.join(table_name), recursive=True, allow_not_found=True)
    return sorted(
        info.path
        for info in store.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not info.base_name.startswith((".", "_"))
    )


def on_disk(store: Store, table_name: str) -> list[str]:
    """Every file under a table, dot files included, as names relative to the table."""
    selector = pafs.FileSelector(store.join(table_name), recursive=True, allow_not_found=True)
    base = store.join(table_name) + "/"
    return sorted(
        info.path.removeprefix(base)
        for info in store.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    )


def read_table(store: Store, table_name: str) -> pa.Table:
    """The table as a reader sees it: the visible files, in path order."""
    files = sorted(visible_files(store, listed(store, table_name)))
    parts = [pq.read_table(path, filesystem=store.fs) for path in files]
    if not parts:
        return SCHEMAS[table_name].empty_table()
    return pa.concat_tables([p.replace_schema_metadata(None) for p in parts])


def id_counts(store: Store, table_name: str) -> Counter:
    return Counter(read_table(store, table_name).column("inference_id").to_pylist())


def first_labels(store: Store) -> dict[str, float]:
    """The label a reader joins per inference id: earliest timestamp, ties by file order."""
    frame = read_table(store, LABELS).to_pandas()
    first = frame.sort_values("timestamp", kind="stable").drop_duplicates(
        "inference_id", keep="first"
    )
    return dict(zip(first["inference_id"], first["label"], strict=True))
