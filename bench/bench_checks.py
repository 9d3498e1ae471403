"""The monitor's check step against the numpy/scipy limit and Evidently's preset, same process.

One JSON line per case (rows x 20 numeric + 3 categorical columns, reference = current size):

* `limit_s`: the statistics Evidently's preset picks by default (normed Wasserstein per numeric
  column, Jensen-Shannon on category shares), plain scipy, one thread, nothing else;
* `checks_cold_s`: `run_checks(reference_frame, current_frame)`: validation of both frames,
  both profiles, drift, data quality (two worker threads);
* `checks_warm_s`: `run_checks(saved_profile, current_frame)`, the monitor's steady state, with
  `profile_build_s` the once-per-data-rev cost it skips; `checks_1thread_s` is cold on one thread;
* `preset_s`: Evidently `Report([DataDriftPreset()])` on `Dataset`s with a `DataDefinition`;
* `read_s`: `pd.read_parquet` of both files (page-cached: a decode floor, not a disk floor);
* agreement of our per-column verdicts (and scores, to 1e-9) with the preset and the limit;
* peak RSS above the frames' baseline per variant (VmHWM, reset between variants) against the
  frames' in-memory size.

Variants run round-robin in each repeat; medians are reported, ratios taken within this run.
Usage: python bench/bench_checks.py [--rows 10000,100000] [--repeats 3] [--skip-preset-above N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the limit is single-threaded by definition

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.loader import Project  # noqa: E402
from config.schema import DriftloopConfig  # noqa: E402
from tasks.checks import CheckSettings, preset_drift, reference_profile, run_checks  # noqa: E402

SHIFTS = (0.0, 0.05, 0.5)  # column i is shifted by SHIFTS[i % 3] standard deviations
CARDINALITIES = (5, 20, 200)


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


def make_frames(rows: int, numeric: int = 20, categorical: int = 3, seed: int = 0):
    """Reference and current: numeric shifts of 0 / 0.05 / 0.5 sd; categorical Zipf shares moved
    by 0, by 2 percentage points, or with the two most frequent categories swapped."""
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


def make_project(numeric: list[str], categorical: list[str]) -> Project:
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


# ---------------------------------------------------------------- measuring
def _peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(fn):
    """(seconds, result, peak RSS MiB during the call above the RSS before it)."""
    can_reset = _peak_reset()
    before = _rss_mib("VmRSS")
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    peak = _rss_mib("VmHWM") if can_reset else None
    extra = None if peak is None or before is None else max(peak - before, 0.0)
    return seconds, result, extra


def run_case(rows: int, repeats: int, with_preset: bool, tmp: Path) -> dict:
    ref_frame, cur_frame = make_frames(rows)
    numeric = [c for c in ref_frame if c.startswith("n")]
    categorical = [c for c in ref_frame if c.startswith("c")]
    project = make_project(numeric, categorical)
    ref_path, cur_path = tmp / f"ref_{rows}.parquet", tmp / f"cur_{rows}.parquet"
    ref_frame.to_parquet(ref_path, index=False)
    cur_frame.to_parquet(cur_path, index=False)
    del ref_frame, cur_frame
    ref = pd.read_parquet(ref_path)
    cur = pd.read_parquet(cur_path)
    frames_mib = (ref.memory_usage(deep=True).sum() + cur.memory_usage(deep=True).sum()) / 2**20
    one_thread = CheckSettings.from_project(project, workers=1)

    # warm-up: imports and first-call costs stay out of the timings
    small = slice(0, 5000)
    run_checks(ref.iloc[small], cur.iloc[small], project)
    limit(ref.iloc[small], cur.iloc[small], numeric, categorical)

    times: dict[str, list[float]] = {}
    peaks: dict[str, float | None] = {}
    results: dict[str, object] = {}
    variants = {
        "read": lambda: (pd.read_parquet(ref_path), pd.read_parquet(cur_path)),
        "limit": lambda: limit(ref, cur, numeric, categorical),
        "checks_cold": lambda: run_checks(ref, cur, project),
        "checks_1thread": lambda: run_checks(ref, cur, project, settings=one_thread),
        "profile_build": lambda: reference_profile(ref, project, key="bench"),
    }
    if with_preset:
        variants["preset"] = lambda: preset_drift(ref, cur, project)
    for _ in range(repeats):
        for name, fn in variants.items():
            seconds, result, peak = measure(fn)
            times.setdefault(name, []).append(seconds)
            peaks[name] = max(peaks.get(name) or 0.0, peak) if peak is not None else None
            results[name] = None if name == "read" else result
            del result
        profile = results["profile_build"]
        seconds, result, peak = measure(lambda p=profile: run_checks(p, cur, project))
        times.setdefault("checks_warm", []).append(seconds)
        peaks["checks_warm"] = max(peaks.get("checks_warm") or 0.0, peak or 0.0)
        results["checks_warm"] = result

    med = {name: statistics.median(values) for name, values in times.items()}
    low = {name: min(values) for name, values in times.items()}
    ours = results["checks_cold"]
    lim = results["limit"]
    agree_limit = sum(
        c.method == lim[c.column][0] and c.drifted == lim[c.column][2] for c in ours.columns
    )
    line: dict[str, object] = {
        "bench": "checks",
        "rows": rows,
        "columns": f"{len(numeric)}+{len(categorical)}",
        "repeats": repeats,
        "read_s": round(med["read"], 4),
        "limit_s": round(med["limit"], 4),
        "checks_cold_s": round(med["checks_cold"], 4),
        "checks_warm_s": round(med["checks_warm"], 4),
        "checks_1thread_s": round(med["checks_1thread"], 4),
        "profile_build_s": round(med["profile_build"], 4),
        "cold_over_limit": round(med["checks_cold"] / med["limit"], 3),
        "cold_over_limit_min": round(low["checks_cold"] / low["limit"], 3),
        "warm_over_limit": round(med["checks_warm"] / med["limit"], 3),
        "1thread_over_limit": round(med["checks_1thread"] / med["limit"], 3),
        "read_plus_cold_over_read_plus_limit": round(
            (med["read"] + med["checks_cold"]) / (med["read"] + med["limit"]), 3
        ),
        "verdicts_equal_limit": f"{agree_limit}/{len(ours.columns)}",
        "dataset_drift": ours.dataset_drift,
        "drift_share": round(ours.drift_share, 4),
        "frames_mib": round(frames_mib, 1),
        "peak_extra_mib": {k: None if v is None else round(v, 1) for k, v in peaks.items()},
    }
    if with_preset:
        theirs = {c.column: c for c in results["preset"]}
        same = sum(
            c.method == theirs[c.column].method
            and c.drifted == theirs[c.column].drifted
            and abs(c.score - theirs[c.column].score) <= 1e-9 * max(1.0, abs(c.score))
            for c in ours.columns
        )
        line |= {
            "preset_s": round(med["preset"], 4),
            "preset_over_limit": round(med["preset"] / med["limit"], 3),
            "preset_over_cold": round(med["preset"] / med["checks_cold"], 3),
            "verdicts_and_scores_equal_preset": f"{same}/{len(ours.columns)}",
        }
    line["env"] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "cpus": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
    }
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="10000,100000", help="comma-separated row counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--skip-preset-above",
        type=int,
        default=None,
        help="skip Evidently's preset (slow: ~75 s at 1M rows) above this many rows",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="bench_checks_") as tmp:
        for rows in (int(r) for r in args.rows.split(",")):
            with_preset = args.skip_preset_above is None or rows <= args.skip_preset_above
            line = run_case(rows, args.repeats, with_preset, Path(tmp))
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
