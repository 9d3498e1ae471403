"""DVC stage `evaluate`: the configured metrics on the held-out set, plus plot data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

from config.loader import Project
from config.schema import METRICS
from model import artifacts
from model.frames import feature_frame, read_table
from model.lineage import file_md5
from model.stage import run_stage

# the metrics computed from predicted probabilities, not labels
NEEDS_PROBA = frozenset({"roc_auc", "log_loss"})


def evaluate(project: Project, pipeline: Pipeline, frame: pd.DataFrame) -> dict[str, float]:
    """Each configured metric of `pipeline` on `frame` (which carries the target)."""
    numeric, categorical = project.features
    features = feature_frame(frame, numeric, categorical)
    y_true = frame[project.config.data.target]
    y_pred = pipeline.predict(features)
    proba = pipeline.predict_proba(features) if hasattr(pipeline, "predict_proba") else None
    classes = getattr(pipeline, "classes_", None)
    return {
        name: float(score(name, y_true, y_pred, proba, classes))
        for name in project.config.metric_names
    }


def score(name: str, y_true, y_pred, proba, classes: Sequence[Any] | None) -> float:
    """One metric. `classes` are the model's `classes_`: the order of `proba`'s columns, and
    `classes[1]` the positive class of a binary model (f1, roc_auc)."""
    if name == "rmse":
        return float(np.sqrt(skm.mean_squared_error(y_true, y_pred)))
    if name == "mae":
        return skm.mean_absolute_error(y_true, y_pred)
    if name == "r2":
        return skm.r2_score(y_true, y_pred)
    if name == "accuracy":
        return skm.accuracy_score(y_true, y_pred)
    if name == "f1":
        return skm.f1_score(y_true, y_pred, pos_label=classes[1])
    if name == "f1_macro":
        return skm.f1_score(y_true, y_pred, average="macro")
    if name in NEEDS_PROBA and proba is None:
        raise ValueError(f"metric {name!r} needs predict_proba, which the estimator lacks")
    if name == "roc_auc":
        return skm.roc_auc_score(y_true == classes[1], proba[:, 1])
    if name == "log_loss":
        return skm.log_loss(y_true, proba, labels=classes)
    raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")


def main(project: Project) -> None:
    model_file = project.resolve(artifacts.MODEL_FILE)
    pipeline = joblib.load(model_file)
    test = read_table(project.resolve(artifacts.PREPARED_TEST))
    result = evaluate(project, pipeline, test)
    # the model file these metrics belong to: registration stores them with that model only
    payload = {
        "primary": project.config.primary_metric,
        "rows": len(test),
        "model_md5": file_md5(model_file),
        **result,
    }
    project.resolve(artifacts.METRICS).write_text(json.dumps(payload, indent=2) + "\n")
    numeric, categorical = project.features
    plot = pd.DataFrame(
        {
            "actual": test[project.config.data.target],
            "predicted": pipeline.predict(feature_frame(test, numeric, categorical)),
        }
    )
    plot_path = project.resolve(artifacts.PREDICTIONS_PLOT)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot.to_csv(plot_path, index=False)
    print("evaluate: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))


if __name__ == "__main__":
    run_stage(main)
