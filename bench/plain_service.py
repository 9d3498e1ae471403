"""The peer in the serving benchmark: the BentoML service a user would write around the same
pipeline without driftloop (records to a DataFrame, `predict`, the answer), no validation, no
capture. `bench/bench_serving.py` serves it beside the driftloop bento and reports ratios.

Served as `bentoml serve bench.plain_service:Plain` with PLAIN_MODEL_FILE naming the joblib
file (the `artifacts/model/model.joblib` that `dvc repro` wrote).
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import joblib
import pandas as pd


@bentoml.service(traffic={"timeout": 30}, workers=1)
class Plain:
    def __init__(self) -> None:
        self.pipeline = joblib.load(os.environ["PLAIN_MODEL_FILE"])

    @bentoml.api
    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        frame = pd.DataFrame.from_records(records)
        return {"predictions": self.pipeline.predict(frame).tolist()}
