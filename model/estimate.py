"""DVC stage `estimate`: fit the performance estimator on the held-out set, for this model file.

The out is always written, as DVC needs it: `{"model_md5", "estimator", "reason"}` with the
fitted `PerformanceEstimator`, or `estimator: None` and the reason when `estimate.enabled` is
false or the held-out set cannot fit one (the loop then runs without estimates, and says why).
Registration stores the estimator with the model only when `model_md5` names that model file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import joblib

from config.loader import Project
from model import artifacts
from model.frames import feature_frame, read_table
from model.lineage import file_md5
from model.performance import EstimationError, PerformanceEstimator, fit_estimator
from model.stage import run_stage


def estimate_record(project: Project) -> dict[str, Any]:
    """The stage's record for the model file `train` wrote."""
    model_file = project.resolve(artifacts.MODEL_FILE)
    record: dict[str, Any] = {"model_md5": file_md5(model_file), "estimator": None, "reason": None}
    settings = project.config.estimate
    if not settings.enabled:
        return record | {"reason": "estimate.enabled is false"}
    pipeline = joblib.load(model_file)
    test = read_table(project.resolve(artifacts.PREPARED_TEST))
    numeric, categorical = project.features
    try:
        record["estimator"] = fit_estimator(
            project.config.data.task,
            pipeline,
            feature_frame(test, numeric, categorical),
            test[project.config.data.target],
            metrics=project.config.metric_names,
            classes=getattr(pipeline, "classes_", None),
            numeric=numeric,
            categorical=categorical,
            confidence=settings.confidence,
            fit_share=settings.fit_share,
            seed=settings.seed,
        )
    except EstimationError as exc:
        record["reason"] = str(exc)
    return record


def read_estimate(path: Path, model_file: Path) -> PerformanceEstimator | None:
    """The estimator in the stage's record at `path`, if it was fitted for `model_file`."""
    if not path.is_file():
        return None
    record = joblib.load(path)
    if not isinstance(record, dict) or record.get("model_md5") != file_md5(model_file):
        return None
    estimator = record.get("estimator")
    return estimator if isinstance(estimator, PerformanceEstimator) else None


def main(project: Project) -> None:
    record = estimate_record(project)
    out = project.resolve(artifacts.ESTIMATOR)
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(record, out)
    estimator = record["estimator"]
    if estimator is None:
        print(f"estimate: no estimator ({record['reason']})", file=sys.stderr)
        return
    skipped = "; ".join(f"{m} not estimated: {why}" for m, why in estimator.skipped.items())
    print(
        f"estimate: {estimator.method} for {', '.join(estimator.metrics)} "
        f"({estimator.fit_rows} rows fit, {estimator.band_rows} size the band)"
        + (f"; {skipped}" if skipped else "")
    )


if __name__ == "__main__":
    run_stage(main)
