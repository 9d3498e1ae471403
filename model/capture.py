"""The capture store: every prediction (and later its label) as parquet in dt=/hour= partitions.

Writing happens off the request path: the service appends rows to bounded in-memory buffers (one
per table, so a flood of labels cannot push predictions out) and a background thread flushes them
every `flush_seconds` (and at shutdown). A request's predictions are handed over as the column
arrays it already has (`PredictionColumns`); the flush turns all requests' columns into one Arrow
table per partition, so the request path builds nothing. One file per flush and process, so
concurrent writers never touch the same file. The store is a local directory or an S3-API bucket
(model/store.py), written through pyarrow's filesystem layer; a store that is down fails the
flush, never a request. Rows that cannot be kept are counted in
`driftloop_capture_dropped_total{kind}` and logged, one line at most every LOG_EVERY_SECONDS.

Event times are checked before anything is captured (`EventWindow`): a time before 1970, more
than `max_future_seconds` ahead of the server's clock, or (when set) more than `max_age_days`
old is refused, so one request cannot move the newest captured time or open a partition that
breaks later reads. Labels pass `LabelGate`: only for inference ids this server answered or the
store holds, and only the first label of each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from model.store import Store, as_store

PREDICTIONS = "predictions"
LABELS = "labels"
CAPTURE_DIR_ENV = "DRIFTLOOP_CAPTURE_DIR"
SAMPLE_RATE_ENV = "DRIFTLOOP_CAPTURE_SAMPLE_RATE"
FLUSH_SECONDS_ENV = "DRIFTLOOP_CAPTURE_FLUSH_SECONDS"
MAX_FUTURE_SECONDS_ENV = "DRIFTLOOP_CAPTURE_MAX_EVENT_FUTURE_SECONDS"
MAX_AGE_DAYS_ENV = "DRIFTLOOP_CAPTURE_MAX_EVENT_AGE_DAYS"
TOKEN_ENV = "DRIFTLOOP_CAPTURE_TOKEN"  # a secret: only ever from the environment

EARLIEST_EVENT = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_MAX_FUTURE_SECONDS = 300.0  # clock skew between a caller and this server
KNOWN_IDS = 1_000_000  # inference ids remembered for matching labels (and for first-label-wins)
LOG_EVERY_SECONDS = 10.0

log = logging.getLogger("driftloop.capture")


def auth_headers() -> dict[str, str]:
    """The Authorization header a client of /predict and /feedback sends: the bearer token from
    DRIFTLOOP_CAPTURE_TOKEN when it is set, else nothing."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


@functools.cache
def capture_counters() -> dict[str, Any]:
    """The capture's Prometheus counters, created on first use.

    prometheus_client is imported here, not at module import: BentoML points it at its
    multiprocess directory only after the service module is imported, and the counters must be
    created in that mode to appear on the server's /metrics.
    """
    from prometheus_client import Counter

    dropped = Counter(
        "driftloop_capture_dropped_total",
        "Captured rows lost before they reached the store (buffer full, write failed)",
        ["kind"],
    )
    for kind in (PREDICTIONS, LABELS):
        dropped.labels(kind=kind)
    return {
        "dropped": dropped,
        "unknown_labels": Counter(
            "driftloop_capture_unknown_labels_total",
            "Labels for inference ids neither this server nor the capture store has seen; "
            "not stored",
        ),
        "relabels": Counter(
            "driftloop_capture_relabels_total",
            "Labels for an inference id that already has one; the first label wins, these are "
            "not stored",
        ),
    }


def now_utc() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str | None) -> datetime:
    """An ISO timestamp as aware UTC; naive input is taken to be UTC.

    Raises ValueError for anything else, including times that cannot be moved to UTC
    (`0001-01-01T00:00+01:00`)."""
    if not value:
        return now_utc()
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value!r} is outside the years 1 to 9999 in UTC") from None


@dataclass(frozen=True)
class EventWindow:
    """Which event times the service captures: from 1970 (or `max_age_days` ago, when set) to
    `max_future_seconds` ahead of now. Replays of historical data need old times, so by default
    only the future is bounded; an operator tightens the past with `capture.max_event_age_days`.
    """

    max_future_seconds: float = DEFAULT_MAX_FUTURE_SECONDS
    max_age_days: float | None = None

    @classmethod
    def from_env(cls) -> EventWindow:
        future = os.environ.get(MAX_FUTURE_SECONDS_ENV, "").strip()
        age = os.environ.get(MAX_AGE_DAYS_ENV, "").strip()
        return cls(
            max_future_seconds=float(future) if future else DEFAULT_MAX_FUTURE_SECONDS,
            max_age_days=float(age) if age else None,
        )

    def check(self, value: Any, now: datetime) -> datetime:
        """`value` as aware UTC; ValueError saying why when it is not a time inside the window."""
        if not isinstance(value, str):
            raise ValueError(f"must be an ISO 8601 string, got {type(value).__name__}")
        if not value.strip():
            raise ValueError("is empty; leave timestamps out to stamp records on arrival")
        if len(value) > 64:
            raise ValueError(f"is {len(value)} characters long, not an ISO 8601 time")
        try:
            when = parse_time(value)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"{exc}; use ISO 8601, e.g. 2011-04-01T08:00:00Z") from None
        earliest = EARLIEST_EVENT
        if self.max_age_days is not None:
            with contextlib.suppress(OverflowError):  # a limit past year 1: 1970 is the floor
                earliest = max(earliest, now - timedelta(days=self.max_age_days))
        if when < earliest:
            raise ValueError(
                f"{value!r} is before {earliest:%Y-%m-%dT%H:%M:%SZ}, the earliest event time "
                f"captured (capture.max_event_age_days)"
            )
        if when > now + timedelta(seconds=self.max_future_seconds):
            raise ValueError(
                f"{value!r} is more than {self.max_future_seconds:g} s ahead of the server's "
                f"clock ({now:%Y-%m-%dT%H:%M:%SZ}; capture.max_event_future_seconds)"
            )
        return when


def partition(when: datetime) -> tuple[str, str]:
    """The dt=YYYY-MM-DD and hour=HH directory names of an event time, always zero-padded
    (strftime's %Y gives `999`, not `0999`, for early years)."""
    when = when.astimezone(UTC) if when.tzinfo else when
    return f"dt={when.year:04d}-{when.month:02d}-{when.day:02d}", f"hour={when.hour:02d}"


def capture_schema(numeric: list[str], categorical: list[str], task: str) -> dict[str, pa.Schema]:
    """Fixed parquet schemas so every file of a model unifies: numbers float64, categories str."""
    target_type = pa.float64() if task == "regression" else pa.string()
    features = pa.struct(
        [pa.field(c, pa.float64()) for c in numeric]
        + [pa.field(c, pa.string()) for c in categorical]
    )
    return {
        PREDICTIONS: pa.schema(
            [
                ("inference_id", pa.string()),
                ("timestamp", pa.timestamp("us", tz="UTC")),
                ("bento", pa.string()),
                ("model", pa.string()),
                ("features", features),
                ("prediction", target_type),
                ("probabilities", pa.list_(pa.float64())),
            ]
        ),
        LABELS: pa.schema(
            [
                ("inference_id", pa.string()),
                ("timestamp", pa.timestamp("us", tz="UTC")),
                ("label", target_type),
            ]
        ),
    }


@dataclass
class CaptureWriter:
    """Buffers rows per kind and flushes them to parquet, by event hour, from a daemon thread.

    `root` is the capture store: a Store, or a directory or s3:// URL (model/store.py)."""

    root: Store | Path | str
    schemas: dict[str, pa.Schema]
    sample_rate: float = 1.0
    flush_seconds: float = 1.0
    max_buffer: int = 200_000  # per kind; beyond it rows are dropped and counted, never blocking

    def __post_init__(self) -> None:
        self.store = as_store(self.root)
        self._rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in self.schemas}
        self._columns: dict[tuple[str, str], list[PredictionColumns]] = {}  # by partition
        self._held = dict.fromkeys(self.schemas, 0)  # rows buffered per kind, in either form
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped_by_kind = dict.fromkeys(self.schemas, 0)
        self._unlogged = dict.fromkeys(self.schemas, 0)
        self._logged_at = dict.fromkeys(self.schemas, -math.inf)
        self._counter = capture_counters()["dropped"]
        self._thread = threading.Thread(target=self._loop, name="capture-flush", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_kind.values())

    def sampled(self) -> bool:
        return self.sample_rate >= 1 or random.random() < self.sample_rate

    def add(self, kind: str, rows: Iterable[dict[str, Any]]) -> None:
        """Rows as dicts (labels, tools); they become Arrow at the next flush."""
        rows = list(rows)
        with self._lock:
            room = max(self.max_buffer - self._held[kind], 0)
            self._rows[kind].extend(rows[:room])
            self._held[kind] += min(len(rows), room)
        if len(rows) > room:
            self._drop(kind, len(rows) - room, f"its buffer holds {self.max_buffer} rows")

    def add_predictions(self, columns: PredictionColumns) -> None:
        """One request's predictions as its own column arrays: the request path's way in. Only
        references are kept here; the flush builds the Arrow table."""
        with self._lock:
            room = max(self.max_buffer - self._held[PREDICTIONS], 0)
            kept = min(len(columns), room)
            if kept:
                part = columns if kept == len(columns) else columns.take(list(range(kept)))
                for key, piece in part.by_partition():
                    self._columns.setdefault(key, []).append(piece)
                self._held[PREDICTIONS] += kept
        if len(columns) > kept:
            n = len(columns) - kept
            self._drop(PREDICTIONS, n, f"its buffer holds {self.max_buffer} rows")

    def flush(self) -> int:
        with self._lock:
            rows, self._rows = self._rows, {kind: [] for kind in self.schemas}
            columns, self._columns = self._columns, {}
            self._held = dict.fromkeys(self.schemas, 0)
        written = 0
        for kind, schema in self.schemas.items():
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for row in rows[kind]:
                groups.setdefault(partition(row["timestamp"]), []).append(row)
            for key, group in groups.items():
                written += self._write(kind, key, len(group), pa.Table.from_pylist, group, schema)
            if kind == PREDICTIONS:
                for key, parts in columns.items():
                    n = sum(len(c) for c in parts)
                    written += self._write(kind, key, n, prediction_table, parts, schema)
            if groups or (kind == PREDICTIONS and columns):
                touch_marker(self.store.sub(kind))
        return written

    def _write(self, kind: str, key: tuple[str, str], n: int, build, *args: Any) -> int:
        """One partition's file; rows written, or 0 with the loss counted: a full disk or a bad
        row loses this group, not the rest."""
        day, hour = key
        try:
            write_table_part(self.store.sub(kind, day, hour), build(*args))
        except Exception as exc:
            self._drop(kind, n, f"writing {kind}/{day}/{hour} failed: {exc}")
            return 0
        return n

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _drop(self, kind: str, n: int, why: str) -> None:
        """Count lost rows; log one line per kind at most every LOG_EVERY_SECONDS."""
        self._counter.labels(kind=kind).inc(n)
        with self._lock:
            self.dropped_by_kind[kind] += n
            self._unlogged[kind] += n
            if time.monotonic() - self._logged_at[kind] < LOG_EVERY_SECONDS:
                return
            self._logged_at[kind] = time.monotonic()
            lost, self._unlogged[kind] = self._unlogged[kind], 0
        log.warning("capture dropped %d %s row(s): %s", lost, kind, why)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # the thread must outlive any one flush; the next tick retries
                log.exception("capture flush failed")


MARKER = ".written"  # touched after each flush; readers of the store skip dot files


def touch_marker(table: Store | Path) -> None:
    """Tell other servers' StoreIds that `table` has new files (a cheap stat instead of a walk).

    On S3 the marker holds a fresh token: an object's time has only second resolution, so two
    flushes in one second would otherwise look the same."""
    table = as_store(table)
    with contextlib.suppress(OSError):  # else they find the files on their next full walk
        if table.is_local:
            table.local_path(MARKER).touch()
        else:
            with table.fs.open_output_stream(table.join(MARKER)) as out:
                out.write(uuid.uuid4().hex.encode())


def marker_state(table: Store) -> str | None:
    """What the marker says now (its time locally, its token on S3); None when it is absent."""
    try:
        if table.is_local:
            return str(table.local_path(MARKER).stat().st_mtime_ns)
        with table.fs.open_input_stream(table.join(MARKER)) as marker:
            return marker.read().decode(errors="replace")
    except (OSError, pa.ArrowException):
        return None


@dataclass(frozen=True)
class PredictionColumns:
    """One request's predictions as the arrays the service already holds: the feature frame's
    columns (float64 or object, NaN for a missing value) in the schema's order, and the lists
    of its answer."""

    features: list[np.ndarray]
    predictions: list[Any]
    probabilities: list[list[float]] | None
    ids: list[str]
    times: list[datetime]
    bento: str
    model: str

    @classmethod
    def of_frame(cls, frame: Any, schema: pa.Schema, **answer: Any) -> PredictionColumns:
        """From a feature DataFrame: its columns as arrays (views, no copy) in the order of the
        predictions schema's feature struct, and the answer."""
        names = [f.name for f in schema.field("features").type]
        return cls(features=[frame[name].to_numpy() for name in names], **answer)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: list[int]) -> PredictionColumns:
        pick = np.asarray(index, dtype=np.intp)
        return dataclasses.replace(
            self,
            features=[column[pick] for column in self.features],
            predictions=[self.predictions[i] for i in index],
            probabilities=None
            if self.probabilities is None
            else [self.probabilities[i] for i in index],
            ids=[self.ids[i] for i in index],
            times=[self.times[i] for i in index],
        )

    def by_partition(self) -> list[tuple[tuple[str, str], PredictionColumns]]:
        """These rows by the dt=/hour= partition of their event times (one part, usually)."""
        if len(set(self.times)) <= 1:
            return [(partition(self.times[0]), self)] if self.times else []
        rows: dict[tuple[str, str], list[int]] = {}
        for i, when in enumerate(self.times):
            rows.setdefault(partition(when), []).append(i)
        return [(key, self.take(index)) for key, index in rows.items()]


def prediction_table(parts: list[PredictionColumns], schema: pa.Schema) -> pa.Table:
    """The predictions table of many requests, column by column (NaN becomes null), holding
    what `prediction_rows` would. Event times become integers once per distinct time of a
    request, and a request's bento and model names are repeated by index, not per row."""
    struct = schema.field("features").type
    columns = [
        pa.array(
            np.concatenate([part.features[i] for part in parts]), type=f.type, from_pandas=True
        )
        for i, f in enumerate(struct)
    ]

    def flat(values) -> list[Any]:
        return [value for part in parts for value in values(part)]

    n = sum(len(part) for part in parts)
    owner = pa.array(np.repeat(np.arange(len(parts)), [len(part) for part in parts]))
    probabilities = flat(lambda p: p.probabilities or [None] * len(p))
    return pa.Table.from_arrays(
        [
            pa.array(flat(lambda p: p.ids), pa.string()),
            pa.array(
                np.concatenate([micros(p.times) for p in parts]), schema.field("timestamp").type
            ),
            pa.array([p.bento for p in parts], pa.string()).take(owner),
            pa.array([p.model for p in parts], pa.string()).take(owner),
            pa.StructArray.from_arrays(columns, fields=list(struct)),
            pa.array(flat(lambda p: p.predictions), schema.field("prediction").type),
            pa.array(probabilities, schema.field("probabilities").type)
            if any(p.probabilities is not None for p in parts)
            else pa.nulls(n, schema.field("probabilities").type),
        ],
        schema=schema,
    )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def micros(times: list[datetime]) -> np.ndarray:
    """Aware event times as microseconds since 1970; a request stamped once (the usual case)
    converts one time, not one per row."""
    if times and times.count(times[0]) == len(times):
        return np.full(len(times), _micro(times[0]), dtype=np.int64)
    return np.array([_micro(t) for t in times], dtype=np.int64)


def _micro(when: datetime) -> int:
    """Naive times are UTC, as Arrow takes them."""
    return ((when if when.tzinfo else when.replace(tzinfo=UTC)) - EPOCH) // MICROSECOND


def write_table_part(directory: Store | Path, table: pa.Table) -> str:
    """One parquet file, its name unique to this process and call; returns its path.

    Readers never see half of it: locally it is written to a temp name and renamed; on S3 an
    object appears whole when its upload completes, so the final key is written directly."""
    directory = as_store(directory)
    name = f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"
    if not directory.is_local:
        pq.write_table(table, directory.join(name), filesystem=directory.fs)
        return directory.join(name)
    local = directory.local_path()
    local.mkdir(parents=True, exist_ok=True)
    tmp = local / f".{name}.tmp"
    pq.write_table(table, tmp)
    tmp.replace(local / name)
    return str(local / name)


def prediction_rows(
    features: list[dict[str, Any]],
    predictions: list[Any],
    probabilities: list[list[float]] | None,
    ids: list[str],
    times: list[datetime],
    bento: str,
    model: str,
) -> list[dict[str, Any]]:
    """Rows for the predictions table; `features` are already typed (float / str / None)."""
    return [
        {
            "inference_id": ids[i],
            "timestamp": times[i],
            "bento": bento,
            "model": model,
            "features": record,
            "prediction": predictions[i],
            "probabilities": None if probabilities is None else probabilities[i],
        }
        for i, record in enumerate(features)
    ]


def label_rows(labels: list[dict[str, Any]], received: datetime) -> list[dict[str, Any]]:
    """Labels keyed by inference id; `timestamp` is when the label arrived."""
    return [
        {"inference_id": str(item["inference_id"]), "timestamp": received, "label": item["label"]}
        for item in labels
    ]


class RecentIds:
    """A bounded set of recent ids: `generations` sets, the oldest forgotten when the newest is
    full. Holds hashes, not the strings (a 64-bit hash per id; a false match is ~1 in 10^13)."""

    def __init__(self, capacity: int = KNOWN_IDS, generations: int = 4) -> None:
        self._per = max(capacity // generations, 1)
        self._sets: list[set[int]] = [set() for _ in range(generations)]
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str]) -> None:
        with self._lock:
            for i in ids:
                if len(self._sets[0]) >= self._per:
                    self._sets = [set(), *self._sets[:-1]]
                self._sets[0].add(hash(i))

    def __contains__(self, i: str) -> bool:
        h = hash(i)
        return any(h in generation for generation in self._sets)

    def __len__(self) -> int:
        return sum(len(generation) for generation in self._sets)


class StoreIds:
    """Inference ids of the predictions in the capture store, read incrementally.

    Another server (the other slot during a release, a replica or pod, this server before a
    restart) may have answered the prediction a label is for. `refresh` reads the
    `inference_id` column of prediction files written since its last look: when a writer's
    marker says there are new files (checked at most every `min_interval` seconds), else every
    FULL_WALK_SECONDS. Locally an hour directory whose mtime is older than the last look is
    skipped without listing it; S3 has no directories, so there the table is listed whole (one
    request per 1,000 files: compaction keeps that small).
    """

    SLACK_NS = 5_000_000_000  # files renamed into place a little after they were written
    FULL_WALK_SECONDS = 5.0

    def __init__(self, root: Store | Path, into: RecentIds, capacity: int = KNOWN_IDS) -> None:
        self.store = as_store(root)
        self.into = into
        self.capacity = capacity
        self.min_interval = 0.1
        self._lock = threading.Lock()
        self._looked = self._walked = -math.inf
        self._marker: str | None = None
        self._watermark: int | None = None  # newest file mtime (ns) read so far
        self._read: dict[str, int] = {}  # recent files already read -> mtime

    def refresh(self) -> bool:
        """Read what is new; False when there was nothing to look at (or it just looked)."""
        with self._lock:
            now = time.monotonic()
            if now - self._looked < self.min_interval:
                return False
            self._looked = now
            marker = marker_state(self.store)
            if marker == self._marker and now - self._walked < self.FULL_WALK_SECONDS:
                return False
            self._marker, self._walked = marker, now
            self._walk()
            return True

    def _walk(self) -> None:
        cutoff = None if self._watermark is None else self._watermark - self.SLACK_NS
        files = sorted(self._new_files(cutoff), reverse=True)  # newest first
        ids: list[str] = []
        for mtime, path in files:
            if len(ids) >= self.capacity:
                break
            try:
                column = self._ids_of(path)
            except (OSError, pa.ArrowException):
                continue  # removed or unreadable since it was listed
            ids += [i for i in column.to_pylist() if i is not None]
            self._read[path] = mtime
            self._watermark = max(self._watermark or 0, mtime)
        if self._watermark is None:
            self._watermark = 0
        floor = self._watermark - self.SLACK_NS
        self._read = {p: m for p, m in self._read.items() if m >= floor}
        self.into.add(reversed(ids[: self.capacity]))  # oldest first: the newest stay longest

    def _ids_of(self, path: str) -> pa.ChunkedArray:
        if self.store.is_local:
            return pq.ParquetFile(path).read(columns=["inference_id"]).column(0)
        with self.store.fs.open_input_file(path) as source:
            return pq.ParquetFile(source).read(columns=["inference_id"]).column(0)

    def _new_files(self, cutoff: int | None) -> Iterable[tuple[int, str]]:
        listed = self._local_files(cutoff) if self.store.is_local else self._listed_files()
        for mtime, path in listed:
            if (cutoff is None or mtime >= cutoff) and path not in self._read:
                yield mtime, path

    def _local_files(self, cutoff: int | None) -> Iterable[tuple[int, str]]:
        for day in _subdirs(self.store.local_path(), "dt="):
            for hour in _subdirs(Path(day.path), "hour="):
                try:
                    if cutoff is not None and hour.stat().st_mtime_ns < cutoff:
                        continue
                    entries = list(os.scandir(hour.path))
                except OSError:
                    continue
                for entry in entries:
                    if entry.name.startswith(".") or not entry.name.endswith(".parquet"):
                        continue
                    try:
                        mtime = entry.stat().st_mtime_ns
                    except OSError:
                        continue
                    yield mtime, entry.path

    def _listed_files(self) -> Iterable[tuple[int, str]]:
        """Every part file of the table with its modification time, in one recursive listing."""
        selector = pafs.FileSelector(self.store.root, allow_not_found=True, recursive=True)
        try:
            infos = self.store.fs.get_file_info(selector)
        except (OSError, pa.ArrowException) as exc:
            log.warning("capture store %s cannot be listed: %s", self.store.url, exc)
            return
        for info in infos:
            if info.type != pafs.FileType.File or not _is_part(info.path, self.store.root):
                continue
            yield (0 if info.mtime is None else int(info.mtime.timestamp() * 1e9)), info.path


def _is_part(path: str, root: str) -> bool:
    """A finished part file under dt=/hour= (not a marker, a temp file or a stray object)."""
    parts = path[len(root) :].strip("/").split("/")
    return (
        len(parts) == 3
        and parts[0].startswith("dt=")
        and parts[1].startswith("hour=")
        and not parts[2].startswith(".")
        and parts[2].endswith(".parquet")
    )


def _subdirs(path: Path, prefix: str) -> list[os.DirEntry]:
    try:
        return [
            e
            for e in os.scandir(path)
            if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)
        ]
    except OSError:
        return []


class LabelGate:
    """Which labels are stored: those for an inference id this server answered or the capture
    store holds, and only the first label of each id. The rest are counted, never stored."""

    def __init__(self, store: Store | Path | None, capacity: int = KNOWN_IDS) -> None:
        """`store`: the predictions table of the capture store (None: only this server's ids)."""
        self.seen = RecentIds(capacity)
        self.labelled = RecentIds(capacity)
        self.store = None if store is None else StoreIds(store, self.seen, capacity)
        self._lock = threading.Lock()
        self._counters = capture_counters()
        if self.store is not None:  # read what the store holds while the server starts up
            threading.Thread(target=self.store.refresh, name="capture-ids", daemon=True).start()

    def answered(self, ids: Iterable[str]) -> None:
        self.seen.add(ids)

    def admit(self, labels: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, int]:
        """(labels to store, unknown ids, repeated labels)."""
        if self.store is not None and any(x["inference_id"] not in self.seen for x in labels):
            self.store.refresh()
        accepted: list[dict[str, Any]] = []
        unknown = repeated = 0
        with self._lock:  # check and mark together: two requests cannot both be "first"
            for item in labels:
                i = item["inference_id"]
                if i not in self.seen:
                    unknown += 1
                elif i in self.labelled:
                    repeated += 1
                else:
                    self.labelled.add([i])
                    accepted.append(item)
        if unknown:
            self._counters["unknown_labels"].inc(unknown)
        if repeated:
            self._counters["relabels"].inc(repeated)
        return accepted, unknown, repeated


# ---------------------------------------------------------------- a shadow stage's answers

MIRROR_SECRET_ENV = "DRIFTLOOP_MIRROR_SECRET"  # what nginx puts in MIRROR_HEADER, per stage
SHADOW_DIR_ENV = "DRIFTLOOP_SHADOW_DIR"
MIRROR_HEADER = "x-driftloop-mirror"
SHADOW_MAX_ROWS = 200_000  # per process: a stage longer than planned cannot fill the disk


@dataclass
class ShadowLog:
    """A candidate's answers to requests nginx mirrored to it, kept beside (never in) the
    capture store: one JSON line per request, one file per process.

    Only a request whose MIRROR_HEADER equals the secret nginx was given is mirrored; a client
    that sends the header itself (nginx clears it on the clients' path anyway) is a client."""

    directory: Path
    secret: bytes
    rows: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @classmethod
    def from_env(cls) -> ShadowLog | None:
        secret = os.environ.get(MIRROR_SECRET_ENV, "").strip()
        directory = os.environ.get(SHADOW_DIR_ENV, "").strip()
        if not secret or not directory:
            return None
        return cls(Path(directory), secret.encode())

    def marks(self, header: str) -> bool:
        return hmac.compare_digest(header.encode(), self.secret)

    def add(self, records: list[dict], predictions: list, probabilities: list | None) -> None:
        line = {"records": records, "predictions": predictions, "probabilities": probabilities}
        with self.lock:
            if self.rows + len(records) > SHADOW_MAX_ROWS:
                return
            self.rows += len(records)
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.directory / f"answers-{os.getpid()}.jsonl", "a") as out:
                out.write(json.dumps(line, default=str) + "\n")
