"""The BentoML service: validates JSON records, predicts with the exact model pinned at build.

The model tag comes only from `bentoml build --arg model_tag=NAME:VERSION`, so a bento always
serves the model it was built with (a `:latest` lookup would follow the store instead).
"""

from __future__ import annotations

import json
from typing import Any

import bentoml
import pandas as pd
import pydantic
from bentoml.exceptions import InvalidArgument

from model.frames import feature_frame
from model.schema import FeatureSchema, InputError, validate_records


class BuildArgs(pydantic.BaseModel):
    model_tag: str = ""
    max_batch: int = 1000


ARGS = bentoml.use_arguments(BuildArgs)
if not ARGS.model_tag or ARGS.model_tag.endswith(":latest") or ":" not in ARGS.model_tag:
    raise RuntimeError(
        "build this service with an exact model tag: --arg model_tag=NAME:VERSION (never :latest)"
    )


@bentoml.service(traffic={"timeout": 30}, workers=1)
class Predictor:
    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        stored = self.model_ref  # resolved to the stored model when the service starts
        self.pipeline = bentoml.sklearn.load_model(stored)
        meta = json.loads(stored.info.metadata["driftloop_meta"])
        self.schema = FeatureSchema.model_validate(meta["schema"])
        self.model_tag = str(stored.tag)

    @bentoml.api
    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Predictions for a batch of feature records, with the model that made them."""
        try:
            validate_records(records, self.schema, ARGS.max_batch)
        except InputError as exc:
            raise InvalidArgument(str(exc)) from None
        features = feature_frame(
            pd.DataFrame.from_records(records), self.schema.numeric, self.schema.categorical
        )
        answer: dict[str, Any] = {
            "predictions": self.pipeline.predict(features).tolist(),
            "model": self.model_tag,
            "bento": f"{bentoml.server_context.bento_name}:{bentoml.server_context.bento_version}",
        }
        if self.schema.task != "regression" and hasattr(self.pipeline, "predict_proba"):
            answer["probabilities"] = self.pipeline.predict_proba(features).round(6).tolist()
            answer["classes"] = self.schema.classes
        return answer
