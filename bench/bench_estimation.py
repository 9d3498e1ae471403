"""Performance estimated without labels: is the band honest, how close is the estimate, what
does it cost.

* `estimation` (one line per dataset that ships with scikit-learn, no download: diabetes
  regression, breast cancer binary, digits multiclass): a model trained on 40% of the rows,
  the estimator fitted on 30% (model/performance.py, as the `estimate` stage fits it), then
  shifted windows drawn from the last 30%: weighted samples without replacement, the weights
  exp(s * z) along a random direction of the standardised features (s = 0, 0.5, 1, 1.5 in
  turn), labels untouched. `coverage` is the share of windows whose realised primary metric lies
  in the band (goal >= 0.9 at confidence 0.9); `mae` the mean absolute error of the estimate.
  With `--nannyml`, NannyML 0.13.1 (CBPE / DLE, its own venv under .driftloop/bench/, run as a
  subprocess exchanging parquet and JSON) estimates the same windows from the same held-out rows.
* `estimation_cost`: the estimate on a bike-sharing-like window (6 numeric + 5 categorical
  features, a HistGradientBoosting model; predictions as captured) against the check step
  (`tasks.monitor.checks.run_checks`) on the same window, same run; goal <= 0.2 at 1M rows.

Usage: python bench/bench_estimation.py [--size small|full] [--nannyml]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, emit, goal, median, pin_threads, ratio, timed

pin_threads()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

CONFIDENCE = 0.9
STRENGTHS = (0.0, 0.5, 1.0, 1.5)
NANNYML = "nannyml==0.13.1"
NANNYML_VENV = ROOT / ".driftloop" / "bench" / "nannyml-venv"


# ---------------------------------------------------------------- datasets
def datasets() -> list[tuple[str, str, pd.DataFrame, np.ndarray, object, list[str]]]:
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
    from sklearn.linear_model import LogisticRegression, Ridge

    out = []
    for name, load, task, model, metrics in (
        ("diabetes", load_diabetes, "regression", Ridge(alpha=0.1),
         ["rmse", "mae"]),
        ("breast_cancer", load_breast_cancer, "binary", LogisticRegression(max_iter=2000),
         ["roc_auc", "accuracy", "f1"]),
        ("digits", load_digits, "multiclass", LogisticRegression(max_iter=2000),
         ["f1_macro", "accuracy"]),
    ):  # fmt: skip
        X, y = load(return_X_y=True, as_frame=True)
        X = X.loc[:, X.std() > 0].rename(columns=str)
        out.append((name, task, X, y.to_numpy(), model, metrics))
    return out


def shifted_windows(X: pd.DataFrame, count: int, size: int, seed: int) -> list[np.ndarray]:
    """Row positions of each window: weighted samples without replacement along random
    directions of the standardised features, the strengths in turn."""
    rng = np.random.default_rng(seed)
    z_all = ((X - X.mean()) / X.std().replace(0, 1)).to_numpy()
    out = []
    for i in range(count):
        z = z_all @ rng.normal(size=z_all.shape[1])
        z = (z - z.mean()) / z.std()
        weights = np.exp(STRENGTHS[i % len(STRENGTHS)] * z)
        out.append(rng.choice(len(X), size=size, replace=False, p=weights / weights.sum()))
    return out


# ---------------------------------------------------------------- calibration
def calibration_case(name, task, X, y, model, metrics, windows: int, nannyml: bool) -> dict:
    from sklearn.model_selection import train_test_split

    from model.evaluate import score
    from model.performance import fit_estimator

    stratify = None if task == "regression" else y
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, train_size=0.4, random_state=0, stratify=stratify
    )
    X_held, X_pool, y_held, y_pool = train_test_split(
        X_rest, y_rest, test_size=0.5, random_state=1, stratify=None if stratify is None else y_rest
    )
    model.fit(X_train, y_train)
    classes = list(getattr(model, "classes_", [])) or None
    fit_s, est = timed(
        lambda: fit_estimator(
            task, model, X_held, y_held, metrics=metrics, classes=classes, numeric=list(X),
            categorical=[], confidence=CONFIDENCE, fit_share=0.5, seed=7,
        )
    )  # fmt: skip
    primary = est.metrics[0]
    rows = shifted_windows(X_pool, windows, size=len(X_pool) // 2, seed=11)
    ours: list[dict] = []
    for idx in rows:
        f, truth = X_pool.iloc[idx], y_pool[idx]
        pred = model.predict(f)
        proba = model.predict_proba(f) if classes else None
        found = {e.metric: e for e in est.estimate(f, pred, proba)}
        realised = {m: score(m, truth, pred, proba, classes) for m in est.metrics}
        ours.append({"estimates": found, "realised": realised})
    line = {
        "bench": "estimation",
        "case": name,
        "task": task,
        "method": est.method,
        "primary": primary,
        "windows": len(rows),
        "window_rows": len(rows[0]),
        "held_out_rows": len(X_held),
        "fit_s": round(fit_s, 3),
        **summary(ours, primary),
        "coverage_per_metric": {m: summary(ours, m)["coverage"] for m in est.metrics},
        "mae_per_metric": {m: summary(ours, m)["mae"] for m in est.metrics},
    }
    line["nannyml"] = (
        nannyml_case(task, model, X_held, y_held, X_pool, y_pool, rows, est.metrics, classes, ours)
        if nannyml
        else "not requested (--nannyml)"
    )
    line["goals"] = {"coverage": goal(line["coverage"], ">=", CONFIDENCE)}
    return line


def summary(windows: list[dict], metric: str) -> dict:
    inside = [
        w["estimates"][metric].lower <= w["realised"][metric] <= w["estimates"][metric].upper
        for w in windows
    ]
    errors = [abs(w["estimates"][metric].value - w["realised"][metric]) for w in windows]
    widths = [w["estimates"][metric].upper - w["estimates"][metric].lower for w in windows]
    return {
        "coverage": round(float(np.mean(inside)), 3),
        "mae": round(float(np.mean(errors)), 4),
        "band_width": round(float(np.mean(widths)), 4),
    }


# ---------------------------------------------------------------- nannyml beside ours
NANNYML_CHILD = r"""
import json, sys, os
os.environ["NML_DISABLE_USAGE_LOGGING"] = "1"
import pandas as pd, nannyml as nml
spec = json.load(open(sys.argv[1]))
ref, ana = pd.read_parquet(spec["reference"]), pd.read_parquet(spec["analysis"])
size = spec["window_rows"]
if spec["task"] == "regression":
    calc = nml.DLE(feature_column_names=spec["features"], y_pred="y_pred", y_true="y_true",
                   metrics=spec["metrics"], chunk_size=size)
else:
    proba = spec["proba"] if spec["task"] == "multiclass" else spec["proba"][spec["positive"]]
    kind = "classification_" + spec["task"]
    calc = nml.CBPE(y_pred_proba=proba, y_pred="y_pred", y_true="y_true", problem_type=kind,
                    metrics=spec["metrics"], chunk_size=size)
calc.fit(ref)
df = calc.estimate(ana).filter(period="analysis").to_df()
out = {m: {"value": df[(m, "value")].tolist(),
           "lower": df[(m, "lower_confidence_boundary")].tolist(),
           "upper": df[(m, "upper_confidence_boundary")].tolist()} for m in spec["metrics"]}
json.dump(out, open(spec["out"], "w"))
"""
NANNYML_NAMES = {"f1_macro": "f1"}  # NannyML's multiclass f1 is the macro average


def _imports_nannyml(python: Path) -> bool:
    probe = subprocess.run([str(python), "-c", "import nannyml"], capture_output=True, timeout=120)
    return probe.returncode == 0


def nannyml_python() -> Path | str:
    """NannyML's own venv (created once); a string says why it is not available."""
    python = NANNYML_VENV / "bin" / "python"
    if python.is_file() and _imports_nannyml(python):
        return python
    try:
        if not python.is_file():
            venv.create(NANNYML_VENV, with_pip=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", NANNYML, "statsmodels", "pyarrow"],
            check=True, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"not available: {NANNYML} did not install ({detail.strip()[-300:]})"
    return python


def nannyml_case(task, model, X_held, y_held, X_pool, y_pool, rows, metrics, classes, ours):
    python = nannyml_python()
    if isinstance(python, str):
        return python
    names = [NANNYML_NAMES.get(m, m) for m in metrics]

    def frame(X, y):
        out = X.reset_index(drop=True).copy()
        out["y_pred"], out["y_true"] = model.predict(X), y
        if classes:
            for i, c in enumerate(classes):
                out[f"proba_{c}"] = model.predict_proba(X)[:, i]
        return out

    with tempfile.TemporaryDirectory() as tmp:
        ref = frame(X_held, y_held)
        analysis = pd.concat([frame(X_pool.iloc[i], y_pool[i]) for i in rows], ignore_index=True)
        ref.to_parquet(f"{tmp}/ref.parquet")
        analysis.drop(columns="y_true").to_parquet(f"{tmp}/ana.parquet")
        spec = {
            "reference": f"{tmp}/ref.parquet", "analysis": f"{tmp}/ana.parquet",
            "out": f"{tmp}/out.json", "task": task, "metrics": names,
            "features": list(X_held), "window_rows": len(rows[0]),
            "proba": {str(c): f"proba_{c}" for c in classes or []},
            "positive": str(classes[1]) if classes else None,
        }  # fmt: skip
        Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
        Path(f"{tmp}/child.py").write_text(NANNYML_CHILD)
        done = subprocess.run(
            [str(python), f"{tmp}/child.py", f"{tmp}/spec.json"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            return f"failed: {done.stderr.strip()[-300:]}"
        theirs = json.loads(Path(f"{tmp}/out.json").read_text())
    primary, name = metrics[0], names[0]
    got = theirs[name]
    realised = [w["realised"][primary] for w in ours]
    n = min(len(realised), len(got["value"]))
    inside = [got["lower"][i] <= realised[i] <= got["upper"][i] for i in range(n)]
    return {
        "metric": name,
        "windows": n,
        "coverage": round(float(np.mean(inside)), 3),
        "mae": round(float(np.mean([abs(got["value"][i] - realised[i]) for i in range(n)])), 4),
        "band": "NannyML's default: +-3 sampling errors",
    }


# ---------------------------------------------------------------- cost
def bikeshare_like(rows: int, seed: int) -> pd.DataFrame:
    """Hourly-rental-like rows: hour, temperatures, humidity, wind, weekday; season, month,
    weather, holiday, working day; a count target driven by hour and temperature."""
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 24, rows)
    temp = rng.uniform(0, 1, rows)
    frame = pd.DataFrame(
        {
            "hr": hr.astype(float),
            "temp": temp,
            "atemp": temp + rng.normal(0, 0.05, rows),
            "hum": rng.uniform(0.2, 1, rows),
            "windspeed": rng.exponential(0.2, rows),
            "weekday": rng.integers(0, 7, rows).astype(float),
            "season": rng.choice(["1", "2", "3", "4"], rows),
            "mnth": rng.choice([f"m{i}" for i in range(12)], rows),
            "weathersit": rng.choice(["1", "2", "3"], rows, p=[0.7, 0.25, 0.05]),
            "holiday": rng.choice(["0", "1"], rows, p=[0.97, 0.03]),
            "workingday": rng.choice(["0", "1"], rows, p=[0.3, 0.7]),
        }
    )
    rush = np.exp(-((hr - 8) ** 2) / 4) + np.exp(-((hr - 17) ** 2) / 4)
    frame["bikers"] = 40 + 200 * rush * temp + 60 * temp + rng.normal(0, 10 + 20 * temp, rows)
    return frame


def cost_case(rows: int, repeats: int) -> dict:
    from config.loader import Project
    from config.schema import DriftloopConfig
    from model.performance import fit_estimator
    from model.train import train
    from tasks.monitor.checks import run_checks
    from tasks.monitor.estimation import estimate_quality

    numeric = ["hr", "temp", "atemp", "hum", "windspeed", "weekday"]
    categorical = ["season", "mnth", "weathersit", "holiday", "workingday"]
    cfg = DriftloopConfig.model_validate(
        {
            "data": {"path": "bench.parquet", "target": "bikers", "task": "regression",
                     "numeric": numeric, "categorical": categorical},
            "train": {"estimator": "sklearn.ensemble.HistGradientBoostingRegressor"},
        }
    )  # fmt: skip
    project = Project(config=cfg, path=Path("driftloop.yaml"), root=Path("."))
    reference = bikeshare_like(20_000, 0)
    pipeline = train(project, reference)
    held = bikeshare_like(4_000, 1)
    est = fit_estimator(
        "regression", pipeline, held, held["bikers"], metrics=["rmse", "mae"], classes=None,
        numeric=numeric, categorical=categorical, seed=3,
    )  # fmt: skip
    window = bikeshare_like(rows, 2)
    features = window.drop(columns="bikers")
    window["prediction"] = pipeline.predict(features)  # as captured: the service's answers
    max_rows = project.config.estimate.max_rows
    window.loc[window.index[::2], "bikers"] = np.nan  # half the labels have arrived
    # first-call costs stay out; the estimate sets its value on the labelled half beside the
    # realised one, as in the monitor
    run_checks(reference.head(2000), window.head(2000), project)
    quality = run_checks(reference, window, project).quality
    times: dict[str, list[float]] = {"estimate": [], "checks": []}
    for _ in range(repeats):
        seconds, _ = timed(lambda: estimate_quality(window, project, est, quality=quality))
        times["estimate"].append(seconds)
        seconds, _ = timed(lambda: run_checks(reference, window, project))
        times["checks"].append(seconds)
    estimate_s, checks_s = median(times["estimate"]), median(times["checks"])
    checked = run_checks(reference, window, project)
    line = {
        "bench": "estimation_cost",
        "check_verdict": checked.verdict,
        "case": f"{rows}",
        "rows": rows,
        "max_rows": max_rows,
        "estimate_s": round(estimate_s, 4),
        "checks_s": round(checks_s, 3),
        "estimate_over_checks": ratio(estimate_s, checks_s),
        "all_s": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
    }
    line["goals"] = {"estimate_over_checks": goal(line["estimate_over_checks"], "<=", 0.2)}
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--nannyml", action="store_true", help=f"{NANNYML} in its own venv too")
    args = parser.parse_args()
    small = args.size == "small"
    for name, task, X, y, model, metrics in datasets():
        windows = 8 if small else 60
        emit(calibration_case(name, task, X, y, model, metrics, windows, args.nannyml))
    emit(cost_case(20_000 if small else 1_000_000, 1 if small else 3))


if __name__ == "__main__":
    main()
