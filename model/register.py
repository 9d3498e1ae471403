"""Save the trained pipeline into the BentoML model store (the one $BENTOML_HOME names).

Run as `python -m model.register`; it prints the exact model tag. The version is derived from the
model file's content, so registering the same model twice returns the same tag. The model's
held-out metrics (the `evaluate` stage's) go with it as metadata: the monitor shows them beside
the same metrics on live traffic. The performance estimator (the `estimate` stage's) goes with it
as a custom object, when it was fitted for this very model file: the monitor estimates each
window's quality with it before the labels arrive.
"""

from __future__ import annotations

import json
from pathlib import Path

import bentoml
import joblib

from config.loader import Project
from config.schema import METRICS
from model import artifacts
from model.estimate import read_estimate
from model.lineage import file_md5
from model.performance import ESTIMATOR_KEY
from model.stage import run_stage


def register(project: Project) -> str:
    model_file = project.resolve(artifacts.MODEL_FILE)
    meta_file = project.resolve(artifacts.MODEL_META)
    if not model_file.is_file() or not meta_file.is_file():
        raise SystemExit(f"no trained model at {artifacts.MODEL_DIR}; run `dvc repro` first")
    meta = json.loads(meta_file.read_text())
    tag = f"{project.config.project.name}:{file_md5(model_file)[:16]}"
    try:
        return str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        pass
    lineage = meta["lineage"]
    labels = {k: str(lineage[k]) for k in ("data_rev", "git_commit", "params_hash")}
    labels["git_dirty"] = str(lineage["git_dirty"]).lower()
    # BentoML metadata allows no None values: keep the whole description as one JSON string
    metadata = {"driftloop_meta": json.dumps(meta), **held_out_metadata(project, model_file)}
    estimator = read_estimate(project.resolve(artifacts.ESTIMATOR), model_file)
    if estimator is not None:
        metadata["performance_estimator"] = estimator.method
    saved = bentoml.sklearn.save_model(
        tag,
        joblib.load(model_file),
        labels=labels,
        metadata=metadata,
        custom_objects=None if estimator is None else {ESTIMATOR_KEY: estimator},
    )
    return str(saved.tag)


def held_out_metadata(project: Project, model_file: Path) -> dict[str, object]:
    """`held_out_metrics` and `held_out_rows` from artifacts/metrics.json, when the `evaluate`
    stage measured this very model file; none when it measured another (or never ran)."""
    path = project.resolve(artifacts.METRICS)
    if not path.is_file():
        return {}
    payload = json.loads(path.read_text())
    if payload.get("model_md5") != file_md5(model_file):
        return {}
    metrics = {k: float(v) for k, v in payload.items() if k in METRICS and v is not None}
    return {"held_out_metrics": metrics, "held_out_rows": int(payload.get("rows", 0))}


def main(project: Project) -> None:
    print(f"__model_tag__:{register(project)}")


if __name__ == "__main__":
    run_stage(main)
