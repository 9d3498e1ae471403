"""Reading the capture store: a time window of predictions joined with the labels that arrived.

The store is a local directory or an S3 bucket (`capture_store`), read through pyarrow's
filesystem layer, so one code path serves both. Only the `dt=`/`hour=` directories whose hour
overlaps the window are listed; their files are read as one Arrow dataset, the feature struct is
flattened and the labels joined in Arrow, and the frame becomes pandas once, at the end.

The first label to arrive for an inference id is the one joined (the service stores only the
first, and the reader holds to it when two servers each stored one). A partition directory whose
name is not `dt=YYYY-MM-DD/hour=HH` is skipped with a warning rather than failing the read.

A window larger than `max_rows` is sampled uniformly without replacement while it is scanned,
batch by batch, so the whole window never sits in memory; the seed is fixed by the window's
bounds, so a rerun over the same files draws the same sample.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from model.capture import (
    CAPTURE_DIR_ENV,
    FLUSH_SECONDS_ENV,
    LABELS,
    MAX_AGE_DAYS_ENV,
    MAX_FUTURE_SECONDS_ENV,
    PREDICTIONS,
    SAMPLE_RATE_ENV,
    capture_schema,
)
from model.store import ENDPOINT_ENV, Store, is_url, open_store
from tasks.compaction import CompactionError, visible_files

log = logging.getLogger("driftloop.capture")
DAY = re.compile(r"dt=(\d{4}-\d{2}-\d{2})")
HOUR = re.compile(r"hour=([01]\d|2[0-3])")
META = ["inference_id", "timestamp", "bento", "model", "prediction", "probabilities"]
READ_ATTEMPTS = 5  # a file compacted away between listing and reading: list again this often
RETRY_PAUSE_SECONDS = 0.05
BATCH_ROWS = 65_536  # scanner batch while sampling: memory is the sample plus one batch


class CaptureReadError(RuntimeError):
    """The capture store could not be read; the message says which part and what to do."""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    frame: pd.DataFrame  # features, prediction, probabilities, label (NaN until it arrives), meta
    label_coverage: float  # of the rows in `frame` (the sample's, when sampled)
    rows_total: int | None = None  # rows in [start, end) before sampling; None: len(frame)
    sampled: bool = False  # the frame is a uniform sample of the window's rows

    @property
    def rows(self) -> int:
        return len(self.frame)

    @property
    def total(self) -> int:
        return self.rows if self.rows_total is None else self.rows_total

    @property
    def sample_note(self) -> str | None:
        """How the window was sampled, for notices, reports and records; None when it was not."""
        return f"sampled {self.rows:,} of {self.total:,} rows" if self.sampled else None


def capture_root(project: Project) -> Path:
    return project.resolve(project.config.capture.path)


def server_settings(project: Project) -> dict[str, str]:
    """The capture settings a bento server reads from its environment (model/capture.py), from
    config: the store (an s3:// URL as it is, a directory made absolute), its endpoint, the
    sampling and flush, and the event-time limits. A setting with no value is empty."""
    capture = project.config.capture
    age = capture.max_event_age_days
    return {
        CAPTURE_DIR_ENV: capture.path if is_url(capture.path) else str(capture_root(project)),
        ENDPOINT_ENV: project.config.storage.endpoint_url,
        SAMPLE_RATE_ENV: str(capture.sample_rate),
        FLUSH_SECONDS_ENV: str(capture.flush_seconds),
        MAX_FUTURE_SECONDS_ENV: str(capture.max_event_future_seconds),
        MAX_AGE_DAYS_ENV: "" if age is None else str(age),
    }


def capture_store(project: Project) -> Store:
    """The capture store named by `capture.path`: a local directory or an S3 bucket."""
    cfg = project.config
    return open_store(cfg.capture.path, base=project.root, endpoint_url=cfg.storage.endpoint_url)


def read_window(
    project: Project, start: datetime, end: datetime, *, max_rows: int | None = None
) -> Window:
    """Predictions with start <= timestamp < end, each with its label if one has arrived;
    past `max_rows` a uniform sample of them (`Window.sampled`, `Window.rows_total`)."""
    numeric, categorical = project.features
    schemas = capture_schema(numeric, categorical, project.config.data.task)
    store = capture_store(project)
    start, end = _utc(start), _utc(end)
    predictions, total = read_table(
        store, PREDICTIONS, schemas[PREDICTIONS], start, end, max_rows=max_rows
    )
    ids = predictions.column("inference_id")
    labels = _first_labels(store, schemas[LABELS], start, ids, only=total > predictions.num_rows)
    label = _label_column(predictions.column("inference_id"), labels)
    features = predictions.column("features")
    columns = [pc.struct_field(features, name) for name in numeric + categorical]
    columns += [predictions.column(name) for name in META] + [label]
    frame = pa.table(columns, names=numeric + categorical + META + ["label"]).to_pandas()
    coverage = float(frame["label"].notna().mean()) if len(frame) else 0.0
    return Window(
        start=start,
        end=end,
        frame=frame,
        label_coverage=coverage,
        rows_total=total,
        sampled=total > predictions.num_rows,
    )


def read_table(
    store: Store,
    table: str,
    schema: pa.Schema,
    start: datetime,
    end: datetime | None,
    *,
    max_rows: int | None = None,
    ids: pa.ChunkedArray | None = None,
) -> tuple[pa.Table, int]:
    """The rows of one capture table in [start, end) (or only those of `ids`) and their count
    before sampling. A file that vanished between listing and reading (a compaction replaced it)
    means listing again; the files a compaction superseded are never read."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return _scan(store, table, schema, start, end, max_rows, ids)
        except (OSError, pa.ArrowException, CompactionError) as exc:
            if not _gone(exc):
                raise CaptureReadError(
                    f"cannot read the capture table {store.url}/{table}: {exc}. A file there is "
                    "damaged or not parquet; move it out of the store and run again"
                ) from exc
            if attempt == READ_ATTEMPTS:
                raise CaptureReadError(
                    f"files under {store.url}/{table} kept vanishing while read ({exc}); is "
                    "a compaction deleting files with no grace period? Run again"
                ) from exc
            log.info(
                "capture: a file under %s/%s went away while read; listing again", store.url, table
            )
            time.sleep(RETRY_PAUSE_SECONDS * attempt)  # let the compaction's pass finish
    raise AssertionError("unreachable")  # pragma: no cover


def _scan(
    store: Store,
    table: str,
    schema: pa.Schema,
    start: datetime,
    end: datetime | None,
    max_rows: int | None,
    ids: pa.ChunkedArray | None,
) -> tuple[pa.Table, int]:
    """One listing and one read of it."""
    files = visible_files(store, list_files(store, store.join(table), start, end))
    if not files:
        return schema.empty_table(), 0
    dataset = ds.dataset(files, schema=schema, format="parquet", filesystem=store.fs)
    condition = _time_filter(schema, start, end)
    if ids is not None:
        condition &= ds.field("inference_id").isin(pc.unique(ids))
    if max_rows is None:
        rows = dataset.to_table(filter=condition)
        return rows, rows.num_rows
    batches = dataset.to_batches(filter=condition, batch_size=BATCH_ROWS)
    return sample_batches(batches, schema, max_rows, _window_seed(start, end))


def sample_batches(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, max_rows: int, seed: int
) -> tuple[pa.Table, int]:
    """A uniform sample without replacement of at most `max_rows` rows, in scan order, and the
    number of rows scanned. Each row draws a random key; the `max_rows` smallest keys win
    (bottom-k sampling), so only about twice the sample is ever held."""
    rng = np.random.default_rng(seed)
    held: list[pa.RecordBatch] = []
    keys: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    bound, total, count = np.inf, 0, 0
    for batch in batches:
        key = rng.random(batch.num_rows)
        keep = np.flatnonzero(key < bound)
        if len(keep):
            held.append(batch.take(pa.array(keep)) if len(keep) < batch.num_rows else batch)
            keys.append(key[keep])
            positions.append(total + keep)
            count += len(keep)
        total += batch.num_rows
        if count >= 2 * max_rows:
            held, keys, positions, bound = _smallest(held, keys, positions, max_rows)
            count = max_rows
    if count > max_rows:
        held, keys, positions, _ = _smallest(held, keys, positions, max_rows)
    table = pa.Table.from_batches(held, schema=schema)
    order = np.argsort(np.concatenate(positions) if positions else np.empty(0, int), kind="stable")
    return table.take(pa.array(order)), total


def _smallest(
    held: list[pa.RecordBatch], keys: list[np.ndarray], positions: list[np.ndarray], k: int
) -> tuple[list[pa.RecordBatch], list[np.ndarray], list[np.ndarray], float]:
    """The `k` held rows with the smallest keys, and the largest key among them."""
    key, position = np.concatenate(keys), np.concatenate(positions)
    best = np.argpartition(key, k - 1)[:k]
    table = pa.Table.from_batches(held).take(pa.array(best)).combine_chunks()
    return table.to_batches(), [key[best]], [position[best]], float(key[best].max())


def list_files(store: Store, root: str, start: datetime, end: datetime | None) -> list[str]:
    """The parquet files under `root` in hour partitions overlapping [start, end), listed one
    directory level at a time so nothing outside the window is ever listed. Anything not in a
    `dt=YYYY-MM-DD/hour=HH` directory is skipped, with one warning naming an example."""
    skipped: list[str] = []
    files: list[str] = []
    for day_dir in _entries(store.fs, root):
        day = _day(day_dir.base_name) if day_dir.type == pafs.FileType.Directory else None
        if day is None:
            skipped.append(day_dir.base_name)
            continue
        if not _overlaps(datetime.combine(day, datetime.min.time(), UTC), 24, start, end):
            continue
        for hour_dir in _entries(store.fs, day_dir.path):
            match = HOUR.fullmatch(hour_dir.base_name)
            if hour_dir.type != pafs.FileType.Directory or match is None:
                skipped.append(f"{day_dir.base_name}/{hour_dir.base_name}")
                continue
            began = datetime.combine(day, datetime.min.time(), UTC)
            if not _overlaps(began + timedelta(hours=int(match[1])), 1, start, end):
                continue
            for file in _entries(store.fs, hour_dir.path):
                if file.type == pafs.FileType.File and file.base_name.endswith(".parquet"):
                    files.append(file.path)
                else:
                    skipped.append(f"{day_dir.base_name}/{hour_dir.base_name}/{file.base_name}")
    if skipped:
        log.warning(
            "capture: skipped %d entr%s under %s not named dt=YYYY-MM-DD/hour=HH/*.parquet, "
            "e.g. %s",
            len(skipped),
            "y" if len(skipped) == 1 else "ies",
            root,
            min(skipped),
        )
    return sorted(files)


def _entries(fs: pafs.FileSystem, path: str) -> Iterator[pafs.FileInfo]:
    """The entries directly in `path`, hidden ones (`.tmp` files, markers) and `_` ones left out;
    a path that is not there has none."""
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    for info in fs.get_file_info(selector):
        if not info.base_name.startswith((".", "_")):
            yield info


def _day(name: str) -> date | None:
    match = DAY.fullmatch(name)
    if match is None:
        return None
    try:
        return date.fromisoformat(match[1])
    except ValueError:
        return None


def _overlaps(began: datetime, hours: int, start: datetime, end: datetime | None) -> bool:
    """Whether [began, began + hours) meets [start, end)."""
    try:
        ends = began + timedelta(hours=hours)
    except OverflowError:  # the last hours of year 9999
        ends = datetime.max.replace(tzinfo=UTC)
    return ends > start and (end is None or began < end)


def _time_filter(schema: pa.Schema, start: datetime, end: datetime | None) -> ds.Expression:
    kind = schema.field("timestamp").type
    condition = ds.field("timestamp") >= pa.scalar(start, type=kind)
    if end is not None:
        condition &= ds.field("timestamp") < pa.scalar(end, type=kind)
    return condition


def _utc(when: datetime) -> datetime:
    """Naive times are UTC, as everywhere in the capture store."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _window_seed(start: datetime, end: datetime | None) -> int:
    text = f"{start.isoformat()}|{end.isoformat() if end else ''}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _gone(exc: BaseException) -> bool:
    """A file listed a moment ago and missing now: compaction removed it."""
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    gone = ("No such file", "does not exist", "NoSuchKey", "Not Found", "deleted while")
    return any(s in text for s in gone)


def _first_labels(
    store: Store, schema: pa.Schema, start: datetime, ids: pa.ChunkedArray, only: bool
) -> pa.Table:
    """The labels that arrived from `start` on (`only`: just those of `ids`, a sample's, so
    memory stays bounded), the first to arrive first (by label time, ties in file order): the
    join below takes each id's first match."""
    if not len(ids):
        return schema.empty_table()
    labels, _ = read_table(store, LABELS, schema, start, None, ids=ids if only else None)
    return labels.take(pc.sort_indices(labels, sort_keys=[("timestamp", "ascending")]))


def _label_column(ids: pa.ChunkedArray, labels: pa.Table) -> pa.ChunkedArray:
    """Each prediction's first label, null where none has arrived: `index_in` finds the first
    occurrence in the time-ordered labels, a hash join that keeps the predictions' order."""
    where = pc.index_in(ids, value_set=labels.column("inference_id").combine_chunks())
    return labels.column("label").take(where)


def _read(root: Path, schema: pa.Schema, start: datetime, end: datetime | None) -> pa.Table:
    """The rows of one capture table in a local directory, in [start, end)."""
    store = Store(fs=pafs.LocalFileSystem(), root=str(root.parent), url=str(root.parent))
    return read_table(store, root.name, schema, start, end)[0]


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_current(project: Project, start: datetime, end: datetime) -> Window:
    """The monitor's window, sampled past `monitor.max_rows` so its memory stays bounded."""
    return read_window(project, start, end, max_rows=project.config.monitor.max_rows)
