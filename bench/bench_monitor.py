"""The whole monitor flow at scale against its check step alone, and the notice's delay.

On a fresh copy with its real stack (Prefect server, Pushgateway, nginx, the first model
serving) the capture store is filled with synthetic traffic drawn from the bundled data, in
files of `ROWS_PER_FILE` rows (what a busy server's one-second flushes look like), each row
labelled an hour later. Cases, one JSON line each:

* `monitor` (per size and window): `flows.monitor.monitor` run in this process (compact quiet
  hours, read the reference and window, validate, check, write the report when something is
  wrong, save, publish, notify, decide) against the check step alone (`check_window` on the
  same frames) in the same process, interleaved. The window's one-second files are compacted
  first, as earlier monitor runs would have done to a closed hour; the read of the same window
  as one-second files is reported beside. `quiet` windows come from the training months (no
  drift: no report, no notice); `drift` windows from the summer (report and Slack notice).
* `monitor` with `store: s3` (the largest quiet window): the same store, compacted, copied to a
  local S3-API server (moto's, started here on a loopback port) and named by the config, so the
  flow and the check step read it through pyarrow's S3 filesystem.
* `notice` (per drift window): from the moment the run's result is saved (its record's
  `finished_at`) to the notice's arrival at the local Slack Web API.

Usage: python bench/bench_monitor.py [--size small|full] [--rows 100000,1000000] [--no-s3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from bench.common import emit, goal, median, ratio, timed
from bench.live import Live, live_stack

SIZES = {"small": (10_000,), "full": (100_000, 1_000_000)}
REPEATS = {"small": 1, "full": 2}
ROWS_PER_FILE = 1000
WINDOWS = {  # pandas queries on the bundled data: the first model learned winter
    "quiet": "season == 1 and mnth != 'Dec'",
    "drift": "mnth in ['June', 'July']",
}
FIRST_DAY = datetime(2030, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- the capture store
def source_rows(live: Live, query: str) -> pd.DataFrame:
    from model.frames import read_table

    data = live.project.config.data
    return read_table(live.project.resolve(data.source.path)).query(query)


def fill_window(live: Live, day: datetime, rows: int, query: str, seed: int) -> None:
    """`rows` predictions spread over `day`, hour partitions, labels arriving an hour later."""
    import pyarrow as pa

    from model.capture import LABELS, PREDICTIONS, capture_schema
    from model.frames import feature_frame
    from tasks.capture import capture_root

    project = live.project
    numeric, categorical = project.features
    schemas = capture_schema(numeric, categorical, project.config.data.task)
    rng = np.random.default_rng(seed)
    pool = source_rows(live, query)
    picked = pool.iloc[rng.integers(0, len(pool), rows)].reset_index(drop=True)
    features = feature_frame(picked, numeric, categorical)
    labels = picked[project.config.data.target].to_numpy(dtype="float64")
    seconds = np.sort(rng.uniform(0, 86_400, rows))
    times = (pd.to_datetime(day) + pd.to_timedelta(seconds, unit="s")).floor("us")
    ids = np.array([f"{seed:04d}-{i:010d}" for i in range(rows)], dtype=object)
    root = capture_root(project)
    for hour in range(24):
        hours = np.flatnonzero((seconds >= hour * 3600) & (seconds < (hour + 1) * 3600))
        for start in range(0, len(hours), ROWS_PER_FILE):
            part = hours[start : start + ROWS_PER_FILE]
            struct = pa.StructArray.from_arrays(
                [pa.array(features[c].to_numpy()[part]) for c in numeric + categorical],
                fields=list(schemas[PREDICTIONS].field("features").type),
            )
            when = pa.array(times[part], type=pa.timestamp("us", tz="UTC"))
            predictions = pa.table(
                {
                    "inference_id": pa.array(ids[part], type=pa.string()),
                    "timestamp": when,
                    "bento": pa.array([live.bento.tag] * len(part), type=pa.string()),
                    "model": pa.array([live.bento.model_tag] * len(part), type=pa.string()),
                    "features": struct,
                    "prediction": pa.array(labels[part] * rng.uniform(0.8, 1.2, len(part))),
                    "probabilities": pa.nulls(len(part), type=pa.list_(pa.float64())),
                },
                schema=schemas[PREDICTIONS],
            )
            label_times = pa.array(times[part] + pd.Timedelta(hours=1), type=when.type)
            label_table = pa.table(
                {
                    "inference_id": predictions["inference_id"],
                    "timestamp": label_times,
                    "label": pa.array(labels[part]),
                },
                schema=schemas[LABELS],
            )
            _write(root / PREDICTIONS, day, hour, predictions)
            label_hour = day + timedelta(hours=hour + 1)
            _write(root / LABELS, label_hour, label_hour.hour, label_table)


def _write(root: Path, day: datetime, hour: int, table) -> None:
    """A part file where the service would put it (dt=/hour= partitions)."""
    import uuid

    import pyarrow.parquet as pq

    directory = root / f"dt={day:%Y-%m-%d}" / f"hour={hour:02d}"
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / f"part-bench-{uuid.uuid4().hex[:12]}.parquet")


# ---------------------------------------------------------------- measuring
def run_flow(live: Live, start: datetime) -> tuple[float, dict]:
    from flows.monitor import monitor

    return timed(
        lambda: monitor(start=start, end=start + timedelta(days=1), config=str(live.project.path))
    )


def check_alone(live: Live, start: datetime) -> dict[str, float]:
    """The monitor's check step on the same reference and window (read as the flow reads it:
    sampled past monitor.max_rows), and the window's read."""
    from tasks.capture import read_current
    from tasks.monitor.checks import check_window
    from tasks.monitor.reference import reference_for
    from tasks.release.releases import read_serving

    labels = read_serving(live.project).labels
    reference = reference_for(live.project, labels["data_rev"], labels.get("git_commit"))
    end = start + timedelta(days=1)
    read_s, window = timed(lambda: read_current.fn(live.project, start, end))
    check_s, _ = timed(lambda: check_window.fn(reference, window.frame, live.project))
    return {"read_window_s": read_s, "check_s": check_s}


def last_record(live: Live) -> dict:
    from tasks.monitor.history import history_dir

    runs = sorted((history_dir(live.project) / "runs").glob("*.json"), key=_mtime)
    return json.loads(runs[-1].read_text())


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def notice_delay(live: Live, since: float) -> float | None:
    """Seconds from the saved result of the latest run to its Slack notice's arrival."""
    finished = datetime.fromisoformat(last_record(live)["finished_at"]).timestamp()
    arrivals = [
        t for t, method, _ in live.slack.arrivals if method == "chat.postMessage" and t >= since
    ]
    return None if not arrivals else arrivals[0] - finished


def compact(live: Live, day: datetime) -> tuple[float, float]:
    """(seconds to read the window as one-second files, seconds to compact the store)."""
    from tasks.capture import capture_store, read_current
    from tasks.compaction import compact_store

    read_s, _ = timed(lambda: read_current.fn(live.project, day, day + timedelta(days=1)))
    store = capture_store(live.project)
    compact_s, _ = timed(lambda: compact_store(store, quiet_seconds=0, grace_seconds=0))
    return read_s, compact_s


@contextlib.contextmanager
def on_s3(live: Live, tmp: Path) -> Iterator[None]:
    """The copy's capture store as it is now on a local S3-API server, named by the config (and
    the project the benchmark reads) while the block runs."""
    import pyarrow.fs as pafs

    from config.loader import load_project
    from tasks.capture import capture_root
    from tests.s3_server import CREDENTIALS, start_s3_server, stop_s3_server
    from tests.support import edit_config

    os.environ.update(CREDENTIALS)
    server = start_s3_server(tmp / "moto.log")
    local = live.project
    url = server.prefix("capture")
    try:
        pafs.copy_files(
            str(capture_root(local)),
            url.removeprefix("s3://"),
            destination_filesystem=server.filesystem(),
        )

        def point(path: str, endpoint: str) -> Callable[[dict], None]:
            return lambda raw: raw.update(
                capture={**raw["capture"], "path": path},
                storage={**raw.get("storage", {}), "endpoint_url": endpoint},
            )

        edit_config(local.root, point(url, server.url), commit=False)
        live.project = load_project(local.path)
        yield
    finally:
        edit_config(local.root, point(local.config.capture.path, ""), commit=False)
        live.project = local
        stop_s3_server(server)


def measure(
    live: Live, rows: int, name: str, day: datetime, repeats: int, store: str = "local"
) -> None:
    uncompacted_read_s, compact_s = compact(live, day) if store == "local" else (None, None)
    flows: list[float] = []
    checks: list[dict[str, float]] = []
    delays: list[float] = []
    outcome: dict = {}
    for _ in range(repeats):
        since = time.time()
        seconds, outcome = run_flow(live, day)
        flows.append(seconds)
        if name == "drift":
            delay = notice_delay(live, since)
            if delay is not None:
                delays.append(delay)
        checks.append(check_alone(live, day))
    flow_s = median(flows)
    check_s = median(c["check_s"] for c in checks)
    overhead = ratio(flow_s, check_s)
    emit(
        {
            "bench": "monitor",
            "case": f"{rows}-{name}" + ("" if store == "local" else f"-{store}"),
            "store": store,
            "rows": rows,
            "window": name,
            "repeats": repeats,
            "files": -(-rows // ROWS_PER_FILE),
            "verdict": outcome.get("verdict"),
            "rows_checked": outcome.get("rows"),
            "sampled": outcome.get("sampled"),
            "report_written": bool(outcome.get("report")),
            "flow_s": round(flow_s, 3),
            "check_s": round(check_s, 3),
            "read_window_s": round(median(c["read_window_s"] for c in checks), 3),
            "read_window_uncompacted_s": None
            if uncompacted_read_s is None
            else round(uncompacted_read_s, 3),
            "compaction_s": None if compact_s is None else round(compact_s, 3),
            "flow_over_check": overhead,
            "all_flow_s": [round(f, 3) for f in flows],
            "goals": {"flow_over_check": goal(overhead, "<=", 3.0)},
        }
    )
    if name == "drift":
        delay = round(median(delays), 3) if delays else None
        emit(
            {
                "bench": "notice",
                "case": f"{rows}-{name}",
                "rows": rows,
                "notices": len(delays),
                "result_to_notice_s": delay,
                "goals": {"result_to_notice_s": goal(delay, "<=", 2.0)},
            }
        )


def quiet_policy(raw: dict) -> None:
    """No retrain trigger: a triggered run would add a deployment call to later runs."""
    raw["policy"]["consecutive_windows"] = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--rows", default=None, help="comma-separated row counts (overrides size)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--no-s3", dest="s3", action="store_false", help="skip the run on the S3-API server"
    )
    args = parser.parse_args()
    sizes = tuple(int(r) for r in args.rows.split(",")) if args.rows else SIZES[args.size]
    repeats = args.repeats or REPEATS[args.size]
    with (
        tempfile.TemporaryDirectory(prefix="bench_monitor_") as tmp,
        live_stack(Path(tmp), change=quiet_policy) as live,
    ):
        # windows in time order, each filled just before it is measured: the labels read
        # from its start onward are then its own, as for the newest window of a live store
        for i, (rows, name) in enumerate((r, n) for r in sizes for n in WINDOWS):
            day = FIRST_DAY + timedelta(days=2 * i)
            fill_window(live, day, rows, WINDOWS[name], seed=i)
            if i == 0:
                run_flow(live, day)  # warm-up: imports and the first API calls
            measure(live, rows, name, day, repeats)
            if args.s3 and name == "quiet" and rows == max(sizes):
                with on_s3(live, Path(tmp)):
                    measure(live, rows, name, day, repeats, store="s3")


if __name__ == "__main__":
    main()
