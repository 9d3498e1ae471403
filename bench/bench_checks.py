"""The `driftloop check` path against the numpy/scipy limit and Evidently's preset, same run.

One JSON line per size (rows x 20 numeric + 3 categorical, reference = current size; numeric
columns shifted by 0 / 0.05 / 0.5 sd in turn, categoricals by 0 / 2 pp / a swap of the top two):

* `checks_s`: `run_checks(reference, current)` as `driftloop check` runs it (validation, both
  profiles, drift, data quality; the configured two workers); `checks_1thread_s` on one thread;
  `checks_warm_s` against a saved reference profile, the monitor's steady state;
* `limit_s`: the statistics the preset picks by default (normed Wasserstein per numeric column,
  Jensen-Shannon on category shares), plain numpy/scipy on one thread, nothing else;
* `preset_s`: Evidently `Report([DataDriftPreset()])`, and verdict (and score) agreement with it;
* `read_s`: `pd.read_parquet` of the two files (page-cached: a decode floor, not a disk floor);
* peak RSS of the check path (read both files, run the checks) in a fresh process, above that
  process's RSS after imports, against the in-memory size of the two frames.

Timing runs in one child process per size, variants round-robin in each repeat, medians reported;
the memory case runs in another child so no earlier case inflates its peak.
Usage: python bench/bench_checks.py [--size small|full] [--rows 10000,100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import goal, median, pin_threads, ratio, rss_mib, run_child, timed

pin_threads()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

FULL_ROWS = (10_000, 100_000, 1_000_000)
SMALL_ROWS = (10_000,)
SHIFTS = (0.0, 0.05, 0.5)  # column i is shifted by SHIFTS[i % 3] standard deviations
CARDINALITIES = (5, 20, 200)
PRESET_REPEATS_ABOVE = 100_000  # the preset runs once above this size (~75 s at 1M rows)


# ---------------------------------------------------------------- data
def _numeric(rng: np.random.Generator, i: int, rows: int) -> tuple[np.ndarray, float]:
    """Normal, lognormal, uniform, exponential, Poisson(20) in turn, with their true sd."""
    which = i % 5
    if which == 0:
        return rng.normal(0, 1, rows), 1.0
    if which == 1:
        return rng.lognormal(0, 0.5, rows), float(np.sqrt((np.exp(0.25) - 1) * np.exp(0.25)))
    if which == 2:
        return rng.uniform(0, 1, rows), float(np.sqrt(1 / 12))
    if which == 3:
        return rng.exponential(1, rows), 1.0
    return rng.poisson(20, rows).astype("float64"), float(np.sqrt(20))


def make_frames(
    rows: int, numeric: int = 20, categorical: int = 3, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and current with known shifts, so every verdict has an expected answer."""
    rng = np.random.default_rng(seed)
    ref: dict[str, np.ndarray] = {}
    cur: dict[str, np.ndarray] = {}
    for i in range(numeric):
        name = f"n{i:02d}_shift{SHIFTS[i % 3]}"
        ref[name], sd = _numeric(rng, i, rows)
        cur[name] = _numeric(rng, i, rows)[0] + SHIFTS[i % 3] * sd
    for j in range(categorical):
        k = CARDINALITIES[j % 3]
        p = 1 / np.arange(1, k + 1)
        p /= p.sum()
        q = p.copy()
        if j % 3 == 1:
            q[0], q[-1] = q[0] - 0.02, q[-1] + 0.02
        elif j % 3 == 2:
            q[0], q[1] = p[1], p[0]
        labels = np.array([f"cat_{v:03d}" for v in range(k)], dtype=object)
        name = f"c{j:02d}_k{k}_{['none', 'small', 'swap'][j % 3]}"
        ref[name] = labels[rng.choice(k, rows, p=p)]
        cur[name] = labels[rng.choice(k, rows, p=q)]
    return pd.DataFrame(ref), pd.DataFrame(cur)


def make_project(numeric: list[str], categorical: list[str]):
    """A project whose config names the synthetic columns; everything else keeps defaults."""
    from config.loader import Project
    from config.schema import DriftloopConfig

    cfg = DriftloopConfig.model_validate(
        {
            "data": {
                "path": "bench.parquet",
                "target": "y",
                "task": "regression",
                "numeric": numeric,
                "categorical": categorical,
            },
            "train": {"estimator": "sklearn.linear_model.LinearRegression"},
        }
    )
    return Project(config=cfg, path=Path("driftloop.yaml"), root=Path("."))


def split_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    return [c for c in frame if c.startswith("n")], [c for c in frame if c.startswith("c")]


# ---------------------------------------------------------------- the limit
def limit(ref: pd.DataFrame, cur: pd.DataFrame, numeric: list[str], categorical: list[str]):
    """scipy's normed Wasserstein and Jensen-Shannon, the preset's defaults above 1000 rows."""
    from scipy import stats
    from scipy.spatial import distance

    out = {}
    for column in numeric:
        r, c = ref[column].to_numpy(), cur[column].to_numpy()
        score = stats.wasserstein_distance(r, c) / max(float(np.std(r)), 0.001)
        out[column] = ("wasserstein", score, score >= 0.1)
    for column in categorical:
        rc, cc = ref[column].value_counts(), cur[column].value_counts()
        keys = rc.index.union(cc.index)
        rp = rc.reindex(keys, fill_value=0).to_numpy() / len(ref)
        cp = cc.reindex(keys, fill_value=0).to_numpy() / len(cur)
        score = float(distance.jensenshannon(rp, cp))
        out[column] = ("jensenshannon", score, score >= 0.1)
    return out


# ---------------------------------------------------------------- child: timing
def time_case(ref_path: Path, cur_path: Path, repeats: int, preset_repeats: int) -> dict:
    """Every variant round-robin in one process; medians, and the verdicts of the last repeat."""
    from tasks.monitor.checks import run_checks
    from tasks.monitor.evidently_engine import preset_drift
    from tasks.monitor.profile import reference_profile
    from tasks.monitor.settings import CheckSettings

    ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    numeric, categorical = split_columns(ref)
    project = make_project(numeric, categorical)
    one_thread = CheckSettings.from_project(project, workers=1)
    warm_up = slice(0, 5000)  # imports and first-call costs stay out of the timings
    run_checks(ref.iloc[warm_up], cur.iloc[warm_up], project)
    limit(ref.iloc[warm_up], cur.iloc[warm_up], numeric, categorical)
    profile = reference_profile(ref, project, key="bench")

    variants = {
        "read": lambda: (pd.read_parquet(ref_path), pd.read_parquet(cur_path)),
        "limit": lambda: limit(ref, cur, numeric, categorical),
        "checks": lambda: run_checks(ref, cur, project),
        "checks_1thread": lambda: run_checks(ref, cur, project, settings=one_thread),
        "checks_warm": lambda: run_checks(profile, cur, project),
        "preset": lambda: preset_drift(ref, cur, project),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, Any] = {}
    for i in range(repeats):
        for name, fn in variants.items():
            if name == "preset" and i >= preset_repeats:
                continue
            seconds, results[name] = timed(fn)
            times[name].append(seconds)
    return {
        "times": {name: median(values) for name, values in times.items()},
        "all_s": {name: [round(v, 4) for v in values] for name, values in times.items()},
        "agreement": agreement(results["checks"], results["limit"], results["preset"]),
        "dataset_drift": results["checks"].dataset_drift,
        "drift_share": round(results["checks"].drift_share, 4),
    }


def agreement(ours, lim: dict, preset: list) -> dict[str, Any]:
    """Columns whose method and verdict (and, against the preset, score to 1e-9) are equal."""
    theirs = {c.column: c for c in preset}
    with_limit = sum(
        c.method == lim[c.column][0] and c.drifted == lim[c.column][2] for c in ours.columns
    )
    verdicts = sum(
        c.method == theirs[c.column].method and c.drifted == theirs[c.column].drifted
        for c in ours.columns
    )
    scores = sum(
        abs(c.score - theirs[c.column].score) <= 1e-9 * max(1.0, abs(c.score)) for c in ours.columns
    )
    n = len(ours.columns)
    return {
        "verdicts_equal_preset": f"{verdicts}/{n}",
        "scores_equal_preset": f"{scores}/{n}",
        "verdicts_equal_limit": f"{with_limit}/{n}",
        "drifted_columns": sorted(c.column for c in ours.columns if c.drifted),
    }


# ---------------------------------------------------------------- child: memory
def memory_case(ref_path: Path, cur_path: Path) -> dict:
    """Peak RSS of read + check in this fresh process, above its RSS once imports are done."""
    import pyarrow.parquet as pq

    from tasks.monitor.checks import run_checks

    # a few rows only: reading the whole file here would raise the baseline with freed memory
    small = next(pq.ParquetFile(ref_path).iter_batches(batch_size=2000)).to_pandas()
    numeric, categorical = split_columns(small)
    project = make_project(numeric, categorical)
    run_checks(small, small, project)  # lazily imported modules load before the baseline
    del small
    baseline = rss_mib("VmRSS")
    ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    run_checks(ref, cur, project)
    peak = rss_mib("VmHWM")
    frames = (ref.memory_usage(deep=True).sum() + cur.memory_usage(deep=True).sum()) / 2**20
    return {"baseline_mib": baseline, "peak_mib": peak, "frames_mib": float(frames)}


# ---------------------------------------------------------------- parent
def child(mode: str, ref_path: Path, cur_path: Path, *extra: str) -> dict:
    """One measurement in a fresh interpreter."""
    return run_child(__file__, f"--{mode}", str(ref_path), str(cur_path), *extra)


def run_size(rows: int, repeats: int, tmp: Path) -> dict:
    ref, cur = make_frames(rows)
    ref_path, cur_path = tmp / f"reference_{rows}.parquet", tmp / f"current_{rows}.parquet"
    ref.to_parquet(ref_path, index=False)
    cur.to_parquet(cur_path, index=False)
    numeric, categorical = split_columns(ref)
    del ref, cur
    memory = child("memory", ref_path, cur_path)
    preset_repeats = 1 if rows > PRESET_REPEATS_ABOVE else repeats
    timing = child("timing", ref_path, cur_path, str(repeats), str(preset_repeats))
    return summarize(rows, f"{len(numeric)}+{len(categorical)}", repeats, timing, memory)


def summarize(rows: int, columns: str, repeats: int, timing: dict, memory: dict) -> dict:
    t, agree = timing["times"], timing["agreement"]
    over_limit = ratio(t["checks"], t["limit"])
    mem_ratio = ratio(memory["peak_mib"] - memory["baseline_mib"], memory["frames_mib"])
    n = agree["verdicts_equal_preset"].split("/")[1]
    return {
        "bench": "checks",
        "case": f"{rows}x{columns}",
        "rows": rows,
        "columns": columns,
        "repeats": repeats,
        "checks_s": round(t["checks"], 4),
        "checks_1thread_s": round(t["checks_1thread"], 4),
        "checks_warm_s": round(t["checks_warm"], 4),
        "limit_s": round(t["limit"], 4),
        "preset_s": round(t["preset"], 4),
        "read_s": round(t["read"], 4),
        "checks_over_limit": over_limit,
        "checks_1thread_over_limit": ratio(t["checks_1thread"], t["limit"]),
        "checks_warm_over_limit": ratio(t["checks_warm"], t["limit"]),
        "preset_over_limit": ratio(t["preset"], t["limit"]),
        "preset_over_checks": ratio(t["preset"], t["checks"], 1),
        "read_over_limit": ratio(t["read"], t["limit"]),
        **agree,
        "dataset_drift": timing["dataset_drift"],
        "drift_share": timing["drift_share"],
        "frames_mib": round(memory["frames_mib"], 1),
        "rss_baseline_mib": round(memory["baseline_mib"], 1),
        "rss_peak_mib": round(memory["peak_mib"], 1),
        "rss_over_frames": mem_ratio,
        "all_s": timing["all_s"],
        "goals": {
            "checks_over_limit": goal(over_limit, "<=", 5.0 if rows <= 10_000 else 2.0),
            "verdicts_equal_preset": goal(agree["verdicts_equal_preset"], "==", f"{n}/{n}"),
            "rss_over_frames": goal(mem_ratio, "<=", 3.0),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--rows", default=None, help="comma-separated row counts (overrides size)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--timing", nargs=4, metavar=("REF", "CUR", "REPEATS", "PRESET_REPEATS"))
    parser.add_argument("--memory", nargs=2, metavar=("REF", "CUR"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.timing:
        ref, cur, repeats, preset_repeats = args.timing
        out = time_case(Path(ref), Path(cur), int(repeats), int(preset_repeats))
        print(json.dumps(out))
        return
    if args.memory:
        print(json.dumps(memory_case(Path(args.memory[0]), Path(args.memory[1]))))
        return
    from bench.common import emit

    sizes = SMALL_ROWS if args.size == "small" else FULL_ROWS
    if args.rows:
        sizes = tuple(int(r) for r in args.rows.split(","))
    repeats = args.repeats or (1 if args.size == "small" else 3)
    with tempfile.TemporaryDirectory(prefix="bench_checks_") as tmp:
        for rows in sizes:
            emit(run_size(rows, repeats, Path(tmp)))


if __name__ == "__main__":
    main()
