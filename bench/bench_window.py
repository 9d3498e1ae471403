"""Reading a captured window, and checking one past `monitor.max_rows` on a uniform sample.

Synthetic traffic (bench_checks' 20 numeric + 3 categorical columns with known shifts) is
written as the capture store holds it: dt=/hour= partitions, predictions and their labels.
Cases, one JSON line each:

* `read`: the window's predictions and labels read by the monitor's reader (`read_table`:
  hour pruning, one Arrow dataset) from the store compacted (`tasks.compaction`) and, beside
  it, uncompacted (1,000-row part files at full size, what one-second flushes leave), against
  `pyarrow.parquet.read_table` of the same rows as one local file per table; `read_window_s`
  adds the label join and the one conversion to pandas.
* `read` with `store: s3`: the same two stores copied to a local S3-API server (moto's, started
  here on a loopback port) and read through pyarrow's S3 filesystem, against the same local
  `read_table`: what the HTTP round trips of an object store add.
* `sample_memory`: peak RSS of reading and checking a window of several x max_rows with
  sampling, in a fresh process, against the same for a window of max_rows rows.
* `sample_agreement`: drift verdicts per column on uniform samples of max_rows rows (one seed
  per trial) against the full window's, for a quiet and a drifted window.

Usage: python bench/bench_window.py [--size small|full] [--no-s3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, goal, median, pin_threads, ratio, rss_mib, run_child, timed

pin_threads()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.bench_checks import make_frames, make_project, split_columns  # noqa: E402

SIZES = {  # read rows in part files of `per_file`, max_rows (None: the default), window / max_rows
    "small": {"read": 20_000, "per_file": 100, "max_rows": 5_000, "times": 4, "trials": 3},
    "full": {"read": 1_000_000, "per_file": 1000, "max_rows": None, "times": 4, "trials": 20},
}
REPEATS = {"small": 1, "full": 3}
DAY = datetime(2030, 1, 1, tzinfo=UTC)
WINDOW = (DAY, DAY + timedelta(days=1))


# ---------------------------------------------------------------- the capture store
def project_at(root: Path, frame: pd.DataFrame, max_rows: int | None = None):
    """A project over the synthetic columns whose capture store is `root`."""
    from config.loader import Project

    numeric, categorical = split_columns(frame)
    base = make_project(numeric, categorical)
    update = {"capture": base.config.capture.model_copy(update={"path": str(root)})}
    if max_rows is not None:
        update["monitor"] = base.config.monitor.model_copy(update={"max_rows": max_rows})
    return Project(config=base.config.model_copy(update=update), path=root / "c.yaml", root=root)


def capture_tables(project, frame: pd.DataFrame, seed: int) -> tuple[pa.Table, pa.Table]:
    """The frame as captured predictions spread over WINDOW's day, and their labels an hour on."""
    from model.capture import LABELS, PREDICTIONS, capture_schema

    numeric, categorical = project.features
    schemas = capture_schema(numeric, categorical, "regression")
    rng = np.random.default_rng(seed)
    rows = len(frame)
    seconds = np.sort(rng.uniform(0, 86_400, rows))
    when = pa.array(
        (pd.Timestamp(DAY) + pd.to_timedelta(seconds, unit="s")).floor("us"),
        type=pa.timestamp("us", tz="UTC"),
    )
    ids = pa.array([f"{seed:03d}-{i:09d}" for i in range(rows)], type=pa.string())
    features = pa.StructArray.from_arrays(
        [pa.array(frame[c].to_numpy()) for c in numeric + categorical],
        fields=list(schemas[PREDICTIONS].field("features").type),
    )
    truth = rng.normal(100, 10, rows)
    predictions = pa.table(
        {
            "inference_id": ids,
            "timestamp": when,
            "bento": pa.array(["bench:1"] * rows),
            "model": pa.array(["bench-model:1"] * rows),
            "features": features,
            "prediction": pa.array(truth + rng.normal(0, 1, rows)),
            "probabilities": pa.nulls(rows, type=pa.list_(pa.float64())),
        },
        schema=schemas[PREDICTIONS],
    )
    later = pa.array(when.to_numpy() + np.timedelta64(1, "h"), type=when.type)
    labels = pa.table(
        {"inference_id": ids, "timestamp": later, "label": pa.array(truth)},
        schema=schemas[LABELS],
    )
    return predictions, labels


def write_capture(root: Path, table: pa.Table, name: str, rows_per_file: int) -> None:
    """Part files of `rows_per_file` rows in their event hour's partition."""
    hours = pd.Series(table.column("timestamp").to_pandas()).dt.floor("h")
    for hour, index in hours.groupby(hours).indices.items():
        directory = root / name / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}"
        directory.mkdir(parents=True, exist_ok=True)
        part = table.take(pa.array(index))
        for k, start in enumerate(range(0, part.num_rows, rows_per_file)):
            pq.write_table(part.slice(start, rows_per_file), directory / f"part-{k:05d}.parquet")


def fill(root: Path, frame: pd.DataFrame, seed: int, rows_per_file: int, max_rows=None):
    from model.capture import LABELS, PREDICTIONS

    project = project_at(root, frame, max_rows)
    predictions, labels = capture_tables(project, frame, seed)
    write_capture(root, predictions, PREDICTIONS, rows_per_file)
    write_capture(root, labels, LABELS, rows_per_file)
    return project, predictions, labels


# ---------------------------------------------------------------- read
def read_both(project) -> int:
    """The reader's Arrow tables of the window: predictions, and labels from its start on."""
    from model.capture import LABELS, PREDICTIONS, capture_schema
    from tasks.capture import capture_store, read_table

    numeric, categorical = project.features
    schemas = capture_schema(numeric, categorical, "regression")
    store = capture_store(project)
    rows, _ = read_table(store, PREDICTIONS, schemas[PREDICTIONS], *WINDOW)
    read_table(store, LABELS, schemas[LABELS], WINDOW[0], None)
    return rows.num_rows


def read_case(rows: int, per_file: int, repeats: int, tmp: Path) -> None:
    from tasks.capture import capture_store, read_window
    from tasks.compaction import compact_store

    frame = make_frames(rows)[0]
    loose, predictions, labels = fill(tmp / "loose", frame, 0, per_file)
    shutil.copytree(tmp / "loose", tmp / "compact")
    compact = project_at(tmp / "compact", frame)
    done = compact_store(capture_store(compact), quiet_seconds=0.0)
    one = {name: tmp / f"{name}.parquet" for name in ("predictions", "labels")}
    pq.write_table(predictions, one["predictions"])
    pq.write_table(labels, one["labels"])
    files = {p: len(list((tmp / p).rglob("*.parquet"))) for p in ("loose", "compact")}
    assert read_both(compact) == read_both(loose) == rows
    times: dict[str, list[float]] = {k: [] for k in ("one", "compact", "loose", "window")}
    for _ in range(repeats):  # round-robin, medians
        times["one"].append(timed(lambda: [pq.read_table(p) for p in one.values()])[0])
        times["compact"].append(timed(lambda: read_both(compact))[0])
        times["loose"].append(timed(lambda: read_both(loose))[0])
        times["window"].append(timed(lambda: read_window(compact, *WINDOW))[0])
    t = {k: median(v) for k, v in times.items()}
    compacted = ratio(t["compact"], t["one"])
    emit(
        {
            "bench": "read",
            "case": f"{rows}",
            "rows": rows,
            "repeats": repeats,
            "files_uncompacted": files["loose"],
            "files_compacted": files["compact"],
            "rows_per_part_file": per_file,
            "compaction_rows": done.rows,
            "read_table_one_file_s": round(t["one"], 3),
            "compacted_s": round(t["compact"], 3),
            "uncompacted_s": round(t["loose"], 3),
            "read_window_compacted_s": round(t["window"], 3),
            "compacted_over_read_table": compacted,
            "uncompacted_over_read_table": ratio(t["loose"], t["one"]),
            "read_window_over_read_table": ratio(t["window"], t["one"]),
            "goals": {"compacted_over_read_table": goal(compacted, "<=", 2.0)},
        }
    )


def on_s3(project, server, url: str):
    """The same project with its capture store at `url` on the S3-API server."""
    cfg = project.config
    capture = cfg.capture.model_copy(update={"path": url})
    storage = cfg.storage.model_copy(update={"endpoint_url": server.url})
    return dataclasses.replace(
        project, config=cfg.model_copy(update={"capture": capture, "storage": storage})
    )


def read_s3_case(rows: int, repeats: int, tmp: Path) -> None:
    """The read case's stores (left in `tmp` by `read_case`) on a local S3-API server."""
    import os

    import pyarrow.fs as pafs

    from tests.s3_server import CREDENTIALS, start_s3_server, stop_s3_server

    os.environ.update(CREDENTIALS)
    server = start_s3_server(tmp / "moto.log")
    try:
        projects = {}
        for name in ("loose", "compact"):
            url = server.prefix(name)
            pafs.copy_files(
                str(tmp / name),
                url.removeprefix("s3://"),
                destination_filesystem=server.filesystem(),
            )
            local = project_at(tmp / name, make_frames(10)[0])
            projects[name] = on_s3(local, server, url)
        one = [tmp / f"{name}.parquet" for name in ("predictions", "labels")]
        assert read_both(projects["compact"]) == read_both(projects["loose"]) == rows
        times: dict[str, list[float]] = {k: [] for k in ("one", "compact", "loose")}
        for _ in range(repeats):
            times["one"].append(timed(lambda: [pq.read_table(p) for p in one])[0])
            times["compact"].append(timed(lambda: read_both(projects["compact"]))[0])
            times["loose"].append(timed(lambda: read_both(projects["loose"]))[0])
    finally:
        stop_s3_server(server)
    t = {k: median(v) for k, v in times.items()}
    compacted = ratio(t["compact"], t["one"])
    emit(
        {
            "bench": "read",
            "case": f"{rows}-s3",
            "store": "s3",
            "rows": rows,
            "repeats": repeats,
            "read_table_one_file_s": round(t["one"], 3),
            "compacted_s": round(t["compact"], 3),
            "uncompacted_s": round(t["loose"], 3),
            "compacted_over_read_table": compacted,
            "uncompacted_over_read_table": ratio(t["loose"], t["one"]),
            "goals": {"compacted_over_read_table": goal(compacted, "<=", 2.0)},
        }
    )


# ---------------------------------------------------------------- sampling: memory
def memory_child(root: Path, max_rows: int) -> dict:
    """Peak RSS of the monitor's read (sampled past max_rows) and the checks, in this process."""
    from tasks.capture import read_current
    from tasks.monitor.checks import run_checks

    reference = pd.read_parquet(root / "reference.parquet")
    project = project_at(root, reference, max_rows)
    small = reference.head(2000)
    run_checks(small, small, project)  # lazily imported modules load before the baseline
    baseline = rss_mib("VmRSS")
    window = read_current.fn(project, *WINDOW)
    run_checks(reference, window.frame, project)
    return {"baseline_mib": baseline, "peak_mib": rss_mib("VmHWM"), "rows": window.rows}


def child(root: Path, max_rows: int) -> dict:
    return run_child(__file__, "--memory-child", str(root), str(max_rows))


def memory_case(max_rows: int, times: int, tmp: Path) -> None:
    reference, current = make_frames(max_rows * times, seed=1)
    reference = reference.head(max_rows)
    runs = {}
    for name, frame in (("big", current), ("cap", current.head(max_rows))):
        root = tmp / f"memory-{name}"
        fill(root, frame, 1, 50_000)
        reference.to_parquet(root / "reference.parquet")
        runs[name] = child(root, max_rows)
    big, cap = runs["big"], runs["cap"]
    grow = ratio(big["peak_mib"] - big["baseline_mib"], cap["peak_mib"] - cap["baseline_mib"])
    emit(
        {
            "bench": "sample_memory",
            "case": f"{times}x{max_rows}",
            "max_rows": max_rows,
            "window_rows": max_rows * times,
            "checked_rows": big["rows"],
            "peak_above_baseline_mib": round(big["peak_mib"] - big["baseline_mib"], 1),
            "peak_above_baseline_at_max_rows_mib": round(cap["peak_mib"] - cap["baseline_mib"], 1),
            "sampled_over_max_rows_window": grow,
            "goals": {"sampled_over_max_rows_window": goal(grow, "<=", 1.5)},
        }
    )


# ---------------------------------------------------------------- sampling: verdicts
def agreement_case(max_rows: int, times: int, trials: int) -> None:
    """Per column, the sampled window's drift verdict against the full window's."""
    from tasks.capture import sample_batches
    from tasks.monitor.checks import run_checks

    reference, drifted = make_frames(max_rows * times, seed=2)
    quiet = make_frames(max_rows * times, seed=3)[0]  # the reference's distributions again
    numeric, categorical = split_columns(reference)
    project = make_project(numeric, categorical)
    for name, window in (("quiet", quiet), ("drift", drifted)):
        full = {c.column: c.drifted for c in run_checks(reference, window, project).columns}
        table = pa.Table.from_pandas(window, preserve_index=False)
        agree, worst = 0, 1.0
        for seed in range(trials):
            sample, _ = sample_batches(table.to_batches(65_536), table.schema, max_rows, seed)
            result = run_checks(reference, sample.to_pandas(), project)
            same = sum(full[c.column] == c.drifted for c in result.columns)
            agree += same
            worst = min(worst, same / len(full))
        share = round(agree / (trials * len(full)), 4)
        emit(
            {
                "bench": "sample_agreement",
                "case": f"{name}-{times}x{max_rows}",
                "window": name,
                "max_rows": max_rows,
                "window_rows": max_rows * times,
                "trials": trials,
                "drifted_full": sorted(c for c, d in full.items() if d),
                "agreement": share,
                "worst_trial": round(worst, 4),
                "goals": {"agreement": goal(share, ">=", 0.95)},
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--memory-child", nargs=2, metavar=("ROOT", "MAX_ROWS"))
    parser.add_argument(
        "--no-s3", dest="s3", action="store_false", help="skip the read on the S3-API server"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.memory_child:
        root, max_rows = args.memory_child
        print(json.dumps(memory_child(Path(root), int(max_rows))))
        return
    from config.schema import MONITOR_DEFAULTS

    size = SIZES[args.size]
    max_rows = size["max_rows"] or MONITOR_DEFAULTS.max_rows
    with tempfile.TemporaryDirectory(prefix="bench_window_") as tmp:
        read_case(size["read"], size["per_file"], REPEATS[args.size], Path(tmp))
        if args.s3:
            read_s3_case(size["read"], REPEATS[args.size], Path(tmp))
        memory_case(max_rows, size["times"], Path(tmp))
        agreement_case(max_rows, size["times"], size["trials"])


if __name__ == "__main__":
    main()
