"""Compaction of the capture store: each quiet hour's one-second flush files become a few files.

Readers never see a row twice or miss one:
- A compacted file `compact-<uuid>.parquet` names the files it holds in its parquet key-value
  metadata and appears in one step (a rename on a local disk, a single object PUT on S3): that is
  its commit. Before it, readers read the sources; from then on `visible_files` drops them, even
  while they still exist.
- Sources are deleted only once the compacted file is older than the grace period, so a reader
  that listed them just before the commit still finds them.
- A crash before the commit leaves a dot-prefixed temp file, which readers skip and the next run
  removes; a crash after it leaves sources that readers already drop and the next run deletes.

An hour is compacted when its newest file is older than the quiet period: event times may be old
(a replay), so the clock alone cannot say that an hour is closed. A file a writer adds meanwhile
is simply not a source. A compacted file may itself be a source (an hour that got late files);
the files it still hides are then named too, so that one committed file hides all of them.
One compaction runs at a time per store, under a lease in `_compaction.lock` (readers skip `_`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from model.capture import LABELS, PREDICTIONS
from model.store import Store

log = logging.getLogger("driftloop.compaction")

COMPACT_PREFIX = "compact-"
TEMP_SUFFIX = ".tmp"
SOURCES_KEY = b"driftloop.compacted_from"  # JSON list of the file names a compacted file holds
LOCK_NAME = "_compaction.lock"
LEASE_SECONDS = 900.0  # a lock older than this belongs to a run that died elsewhere
LOCK_SETTLE_SECONDS = 0.5  # S3 has no create-if-absent: write, wait, read back
MAX_ROWS_PER_FILE = 1_000_000  # rows held in memory while one compacted file is built
TABLES = (PREDICTIONS, LABELS)

Step = Callable[[str], None]  # told "written", "committed", "deleted" as a run goes


class CompactionError(RuntimeError):
    """The store cannot be read as compaction left it, with what to do about it."""


@dataclass(frozen=True)
class CompactionResult:
    """What one run did; `held_by` names another run's lock when this one did nothing."""

    hours: int = 0
    files_in: int = 0
    files_out: int = 0
    rows: int = 0
    deleted: int = 0
    held_by: str = ""

    def __add__(self, other: CompactionResult) -> CompactionResult:
        return CompactionResult(
            hours=self.hours + other.hours,
            files_in=self.files_in + other.files_in,
            files_out=self.files_out + other.files_out,
            rows=self.rows + other.rows,
            deleted=self.deleted + other.deleted,
            held_by=self.held_by or other.held_by,
        )


# --- what a reader sees -------------------------------------------------------------------------


def visible_files(store: Store, files: Iterable[str]) -> list[str]:
    """The files of `files` (every parquet path a reader listed under one table) to read: those
    no committed compacted file holds. Only compacted files' footers are read, once each."""
    files = list(files)
    by_directory: dict[str, dict[str, str]] = {}
    for path in files:
        directory, name = split(path)
        by_directory.setdefault(directory, {})[name] = path
    hidden: set[str] = set()
    for names in by_directory.values():
        held = {
            name: compacted_sources(store, path)
            for name, path in names.items()
            if name.startswith(COMPACT_PREFIX)
        }
        hidden |= {names[name] for name in resolve(held, set(names))}
    return [path for path in files if path not in hidden]


def resolve(held: dict[str, frozenset[str]], present: set[str]) -> dict[str, str]:
    """Each hidden file name -> the compacted file that hides it.

    Compacted files are taken widest first, so one that holds another comes before it and hides
    it with everything it holds. Two compacted files holding the same file otherwise can only
    come from two runs that both took the lock: the later one in that order is hidden whole
    (the files only it holds stay visible), so a read stays exact either way.
    """
    reach = {name: closure(name, held) for name in held}
    taken: dict[str, str] = {}  # file name -> the accepted compacted file holding it
    hidden: dict[str, str] = {}
    for name in sorted(held, key=lambda n: (-len(reach[n]), n)):
        if name in taken:
            continue
        clash = next((taken[s] for s in sorted(reach[name]) if s in taken), None)
        if clash is not None:
            hidden[name] = clash
            continue
        taken |= dict.fromkeys(reach[name], name)
    hidden |= {source: owner for source, owner in taken.items() if source in present}
    return hidden


def closure(name: str, held: dict[str, frozenset[str]]) -> set[str]:
    """Every file `name` holds, through the compacted files it holds."""
    seen: set[str] = set()
    todo = list(held.get(name, ()))
    while todo:
        source = todo.pop()
        if source not in seen:
            seen.add(source)
            todo.extend(held.get(source, ()))
    return seen


_SOURCES: dict[tuple[str, str], frozenset[str]] = {}  # compacted files never change: cache
_SOURCES_MAX = 100_000


def compacted_sources(store: Store, path: str) -> frozenset[str]:
    """The file names a compacted file holds, from its footer."""
    key = (store.url, path)
    if key in _SOURCES:
        return _SOURCES[key]
    try:
        with store.fs.open_input_file(path) as handle:
            metadata = pq.read_metadata(handle).metadata or {}
    except FileNotFoundError:
        raise CompactionError(
            f"{path} was deleted while it was read: reading took longer than "
            "capture.compact_after_seconds; read again, or raise that setting"
        ) from None
    except (OSError, pa.ArrowException) as exc:
        raise CompactionError(
            f"{path} is not a readable parquet file ({exc}); files named {COMPACT_PREFIX}* "
            "belong to compaction: move it out of the capture store"
        ) from None
    try:
        sources = frozenset(json.loads(metadata[SOURCES_KEY]))
    except (KeyError, ValueError, TypeError):
        raise CompactionError(
            f"{path} names no sources in its metadata; files named {COMPACT_PREFIX}* belong "
            "to compaction: move it out of the capture store"
        ) from None
    if len(_SOURCES) >= _SOURCES_MAX:
        _SOURCES.clear()
    _SOURCES[key] = sources
    return sources


def split(path: str) -> tuple[str, str]:
    directory, _, name = path.rstrip("/").rpartition("/")
    return directory, name


# --- compaction ---------------------------------------------------------------------------------


@dataclass
class Hour:
    """One dt=/hour= directory as listed: its parquet files, compaction temps and ages."""

    directory: str
    files: dict[str, float] = field(default_factory=dict)  # name -> mtime (epoch seconds)
    temps: list[str] = field(default_factory=list)

    def path(self, name: str) -> str:
        return f"{self.directory}/{name}"


def compact_store(
    store: Store,
    *,
    quiet_seconds: float = 300.0,
    grace_seconds: float | None = None,
    now: datetime | None = None,
    max_rows_per_file: int = MAX_ROWS_PER_FILE,
    on_step: Step | None = None,
) -> CompactionResult:
    """Compact every hour of both tables whose newest file is older than `quiet_seconds`, and
    delete the files that compacted files older than `grace_seconds` (default: the quiet period)
    hold: a reader that listed them before the commit has that long to read them."""
    clock = now.timestamp() if now is not None else time.time()
    grace = quiet_seconds if grace_seconds is None else grace_seconds
    step = on_step or (lambda _: None)
    if store.fs.get_file_info(store.root).type == pafs.FileType.NotFound:
        return CompactionResult()
    with lease(store) as held_by:
        if held_by:
            log.info("compaction skipped: %s holds %s", held_by, store.join(LOCK_NAME))
            return CompactionResult(held_by=held_by)
        result = CompactionResult()
        for table in TABLES:
            for hour in list_hours(store, table):
                result += compact_hour(
                    store, hour, clock, quiet_seconds, grace, max_rows_per_file, step
                )
        return result


def list_hours(store: Store, table: str) -> list[Hour]:
    """The table's hour directories with their files, in one recursive listing."""
    selector = pafs.FileSelector(store.join(table), recursive=True, allow_not_found=True)
    hours: dict[str, Hour] = {}
    for info in store.fs.get_file_info(selector):
        directory, name = split(info.path)
        if info.type != pafs.FileType.File or not split(directory)[1].startswith("hour="):
            continue
        hour = hours.setdefault(directory, Hour(directory))
        if name.startswith("." + COMPACT_PREFIX) and name.endswith(TEMP_SUFFIX):
            hour.temps.append(name)
        elif name.endswith(".parquet") and not name.startswith((".", "_")):
            hour.files[name] = info.mtime.timestamp()
    return [hours[key] for key in sorted(hours)]


def compact_hour(
    store: Store, hour: Hour, now: float, quiet: float, grace: float, max_rows: int, step: Step
) -> CompactionResult:
    """Clean up after earlier runs, then compact the hour if it is quiet."""
    for temp in hour.temps:  # a dead run's: this run holds the lock
        delete(store, hour.path(temp))
    held = {
        name: compacted_sources(store, hour.path(name))
        for name in hour.files
        if name.startswith(COMPACT_PREFIX)
    }
    deleted = delete_held(store, hour, held, now, grace, step)
    hidden = resolve(held, set(hour.files))
    visible = sorted(n for n in hour.files if n not in hidden)  # the readers' file order
    parts = [hour.files[n] for n in visible if not n.startswith(COMPACT_PREFIX)]
    if len(visible) < 2 or max(parts, default=now) > now - quiet:  # writers may be busy
        return CompactionResult(deleted=deleted)
    files_in = files_out = rows = 0
    for group in source_groups(store, hour, visible, max_rows):
        if len(group) < 2:
            continue
        holds = set(group).union(*(closure(n, held) for n in group)) & set(hour.files)
        name, written = write_compacted(store, hour, group, sorted(holds), step)
        held[name] = frozenset(holds)
        hour.files[name] = time.time()
        files_in, files_out, rows = files_in + len(group), files_out + 1, rows + written
    if grace <= 0:  # no grace: what was just compacted goes now
        deleted += delete_held(store, hour, held, time.time(), grace, step)
    return CompactionResult(
        hours=int(files_out > 0), files_in=files_in, files_out=files_out, rows=rows, deleted=deleted
    )


def delete_held(
    store: Store, hour: Hour, held: dict[str, frozenset[str]], now: float, grace: float, step: Step
) -> int:
    """Delete the files hidden for longer than `grace`; how many went. A reader that listed
    before then reads the compacted file, which stays until what hides it is that old too."""
    gone = 0
    for name, owner in sorted(resolve(held, set(hour.files)).items()):
        if hidden_since(name, owner, hour, held) > now - grace:
            continue
        delete(store, hour.path(name))
        hour.files.pop(name)
        held.pop(name, None)
        gone += 1
        step("deleted")
    return gone


def hidden_since(name: str, owner: str, hour: Hour, held: dict[str, frozenset[str]]) -> float:
    """When `name` was first hidden: the commit of the oldest compacted file, among its owner
    and those the owner holds, that holds it."""
    hiders = [owner] + [
        inner
        for inner in closure(owner, held)
        if inner in held and inner in hour.files and name in closure(inner, held)
    ]
    return min(hour.files[hider] for hider in hiders)


def source_groups(store: Store, hour: Hour, names: list[str], max_rows: int) -> list[list[str]]:
    """The files to compact together: one schema per group (a model change mid-hour keeps its
    own), at most `max_rows` rows each. An unreadable file is left alone, as readers skip it."""
    groups: dict[pa.Schema, list[list[str]]] = {}
    sizes: dict[str, int] = {}
    for name in names:
        try:
            with store.fs.open_input_file(hour.path(name)) as handle:
                meta = pq.ParquetFile(handle).metadata
                schema = meta.schema.to_arrow_schema().remove_metadata()
        except (OSError, pa.ArrowException) as exc:
            log.warning("compaction: %s left alone, unreadable: %s", hour.path(name), exc)
            continue
        chunks = groups.setdefault(schema, [[]])
        if chunks[-1] and sum(sizes[n] for n in chunks[-1]) + meta.num_rows > max_rows:
            chunks.append([])
        chunks[-1].append(name)
        sizes[name] = meta.num_rows
    return [chunk for chunks in groups.values() for chunk in chunks]


def write_compacted(
    store: Store, hour: Hour, group: list[str], holds: list[str], step: Step
) -> tuple[str, int]:
    """One compacted file of `group`'s rows, committed in one step; (its name, rows)."""
    tables = []
    for name in group:
        with store.fs.open_input_file(hour.path(name)) as handle:
            tables.append(pq.read_table(handle))
    table = pa.concat_tables(tables)
    if "timestamp" in table.column_names:  # stable: equal times keep the readers' file order
        table = table.take(pc.sort_indices(table, sort_keys=[("timestamp", "ascending")]))
    metadata = dict(table.schema.metadata or {}) | {SOURCES_KEY: json.dumps(holds).encode()}
    table = table.replace_schema_metadata(metadata)
    name = f"{COMPACT_PREFIX}{uuid.uuid4().hex}.parquet"
    if store.is_local:  # written aside, then renamed: the rename is the commit
        temp = hour.path(f".{name}{TEMP_SUFFIX}")
        pq.write_table(table, temp, filesystem=store.fs)
        step("written")
        store.fs.move(temp, hour.path(name))
    else:  # an S3 object appears whole when its upload completes: the upload is the commit
        step("written")
        pq.write_table(table, hour.path(name), filesystem=store.fs)
    step("committed")
    return name, table.num_rows


def delete(store: Store, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        store.fs.delete_file(path)


# --- one run at a time --------------------------------------------------------------------------


@contextlib.contextmanager
def lease(store: Store) -> Iterator[str]:
    """Hold the store's compaction lock: yields "" when held, else who holds it."""
    path = store.join(LOCK_NAME)
    token = uuid.uuid4().hex
    holder = take_lock(store, path, token)
    if holder is not None and expire_lock(store, path):
        holder = take_lock(store, path, token)
    if holder is not None:
        yield holder
        return
    try:
        yield ""
    finally:
        if read_lock(store, path).get("token") == token:
            delete(store, path)


def take_lock(store: Store, path: str, token: str) -> str | None:
    """None when this run now holds the lock, else a description of its holder."""
    body = json.dumps(
        {
            "token": token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires": time.time() + LEASE_SECONDS,
        }
    ).encode()
    if store.is_local:
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return holder_text(read_lock(store, path))
        with os.fdopen(handle, "wb") as out:
            out.write(body)
        return None
    if store.fs.get_file_info(path).type != pafs.FileType.NotFound:
        return holder_text(read_lock(store, path))
    with store.fs.open_output_stream(path) as out:
        out.write(body)
    time.sleep(LOCK_SETTLE_SECONDS)  # a run that wrote at the same moment: the last write wins
    found = read_lock(store, path)
    return None if found.get("token") == token else holder_text(found)


def expire_lock(store: Store, path: str) -> bool:
    """Remove a lock whose run is gone (past its lease, or a dead process on this host); True
    when it did."""
    found = read_lock(store, path)
    expired = float(found.get("expires", 0)) < time.time()
    dead = found.get("host") == socket.gethostname() and not alive(int(found.get("pid", 0)))
    if not (expired or dead):
        return False
    log.warning("compaction: removing the stale lock of %s", holder_text(found))
    delete(store, path)
    return True


def read_lock(store: Store, path: str) -> dict:
    try:
        with store.fs.open_input_stream(path) as handle:
            found = json.loads(handle.read())
    except (FileNotFoundError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def holder_text(found: dict) -> str:
    if not found:
        return "another compaction"
    return f"pid {found.get('pid')} on {found.get('host')}"


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the task -----------------------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def compact_capture(store: Store, quiet_seconds: float | None) -> CompactionResult:
    """Compact the capture store's quiet hours (capture.compact_after_seconds; None: never)."""
    if quiet_seconds is None:
        return CompactionResult()
    result = compact_store(store, quiet_seconds=quiet_seconds)
    log.info(
        "compaction: %d hour(s), %d file(s) into %d, %d row(s); %d file(s) deleted",
        result.hours,
        result.files_in,
        result.files_out,
        result.rows,
        result.deleted,
    )
    return result
