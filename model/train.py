"""DVC stage `train`: fit the configured estimator and save it with its schema and lineage."""

from __future__ import annotations

import json

import joblib
import pandas as pd
from sklearn.pipeline import Pipeline

from config.loader import Project
from model import artifacts, lineage
from model.estimator import build_pipeline
from model.frames import feature_frame, read_table
from model.schema import FeatureSchema
from model.stage import run_stage


def train(project: Project, frame: pd.DataFrame) -> Pipeline:
    numeric, categorical = project.features
    pipeline = build_pipeline(project.config.train, numeric, categorical)
    pipeline.fit(feature_frame(frame, numeric, categorical), frame[project.config.data.target])
    return pipeline


def describe(project: Project, frame: pd.DataFrame, pipeline: Pipeline) -> dict:
    """What serving and lineage need to know about this model, as JSON."""
    data = project.config.data
    numeric, categorical = project.features
    classes = getattr(pipeline, "classes_", None)
    schema = FeatureSchema.from_training(
        feature_frame(frame, numeric, categorical),
        task=data.task,
        target=data.target,
        numeric=numeric,
        categorical=categorical,
        nullable=list(data.nullable),
        classes=None
        if classes is None
        else [c.item() if hasattr(c, "item") else c for c in classes],
    )
    return {
        "name": project.config.project.name,
        "estimator": project.config.train.estimator,
        "schema": schema.model_dump(),
        "lineage": lineage.collect(project).model_dump(),
        "rows": len(frame),
    }


def main(project: Project) -> None:
    frame = read_table(project.resolve(artifacts.PREPARED_TRAIN))
    pipeline = train(project, frame)
    out_dir = project.resolve(artifacts.MODEL_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, project.resolve(artifacts.MODEL_FILE))
    meta = describe(project, frame, pipeline)
    project.resolve(artifacts.MODEL_META).write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"train: {project.config.train.estimator} on {len(frame)} rows, "
        f"data rev {meta['lineage']['data_rev'][:12]}"
    )


if __name__ == "__main__":
    run_stage(main)
