"""Offline predictions of a stored model on sample rows: the answers its bento must give.

Run as `python -m model.smoke MODEL_TAG ROWS` with $BENTOML_HOME set; it prints one line
`__smoke__:{"records": [...], "predictions": [...]}`. The rows are the held-out split, passed
through JSON first so the model sees exactly what the service will parse from a request.
"""

from __future__ import annotations

import json
import sys

import bentoml

from config.loader import Project
from model import artifacts
from model.frames import read_table
from model.schema import FeatureSchema, records_frame
from model.stage import run_stage


def sample_records(project: Project, schema: FeatureSchema, rows: int) -> list[dict]:
    """`rows` records of the held-out split (the training data if there is none), as JSON."""
    path = project.resolve(artifacts.PREPARED_TEST)
    if not path.is_file():
        path = project.resolve(project.config.data.path)
    frame = read_table(path)
    frame = frame.dropna(subset=[c for c in schema.columns if c not in schema.nullable])
    if frame.empty:
        raise SystemExit(f"no complete rows in {path} to smoke-test with")
    picked = frame.sample(n=min(rows, len(frame)), random_state=0)[schema.columns]
    return json.loads(picked.to_json(orient="records"))


def offline(project: Project, model_tag: str, rows: int) -> dict:
    stored = bentoml.models.get(model_tag)
    meta = json.loads(stored.info.metadata["driftloop_meta"])
    schema = FeatureSchema.model_validate(meta["schema"])
    records = sample_records(project, schema, rows)
    pipeline = bentoml.sklearn.load_model(stored)
    features = records_frame(records, schema, max_batch=len(records))
    return {"records": records, "predictions": pipeline.predict(features).tolist()}


def main(project: Project) -> None:
    model_tag, rows = sys.argv[1], int(sys.argv[2])
    print("__smoke__:" + json.dumps(offline(project, model_tag, rows)))


if __name__ == "__main__":
    run_stage(main)
