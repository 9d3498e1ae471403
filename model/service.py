"""The BentoML service: validates JSON records, predicts with the exact model pinned at build,
and captures every prediction (and later label) for the monitor.

The model tag comes only from `bentoml build --arg model_tag=NAME:VERSION`, so a bento always
serves the model it was built with (a `:latest` lookup would follow the store instead). Capture
is configured by the launcher through the environment (see model/capture.py).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import bentoml
import pandas as pd
import pydantic
from bentoml.exceptions import InvalidArgument

from model.capture import (
    CAPTURE_DIR_ENV,
    FLUSH_SECONDS_ENV,
    LABELS,
    PREDICTIONS,
    SAMPLE_RATE_ENV,
    CaptureWriter,
    capture_schema,
    label_rows,
    now_utc,
    parse_time,
    prediction_rows,
)
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
        self.bento = f"{bentoml.server_context.bento_name}:{bentoml.server_context.bento_version}"
        self.capture = self._capture_writer()

    def _capture_writer(self) -> CaptureWriter | None:
        root = os.environ.get(CAPTURE_DIR_ENV)
        if not root:
            return None
        return CaptureWriter(
            Path(root),
            capture_schema(self.schema.numeric, self.schema.categorical, self.schema.task),
            sample_rate=float(os.environ.get(SAMPLE_RATE_ENV, "1")),
            flush_seconds=float(os.environ.get(FLUSH_SECONDS_ENV, "1")),
        )

    @bentoml.api
    def predict(
        self,
        records: list[dict[str, Any]],
        ids: list[str] | None = None,
        timestamps: list[str] | None = None,
        probe: bool = False,
    ) -> dict[str, Any]:
        """Predictions for a batch of feature records, with the model that made them.

        `ids` (the caller's inference ids) and `timestamps` (event times, for replays) are
        optional and must match `records` in length; ids are minted when absent. `probe`
        marks a health check (a roll-forward's smoke test and watch): answered, never captured,
        so it cannot pass for production traffic in the monitor's windows.
        """
        try:
            validate_records(records, self.schema, ARGS.max_batch)
            ids, times = self._ids_and_times(len(records), ids, timestamps)
        except InputError as exc:
            raise InvalidArgument(str(exc)) from None
        features = feature_frame(
            pd.DataFrame.from_records(records), self.schema.numeric, self.schema.categorical
        )
        predictions = self.pipeline.predict(features).tolist()
        answer: dict[str, Any] = {
            "predictions": predictions,
            "ids": ids,
            "model": self.model_tag,
            "bento": self.bento,
        }
        probabilities = None
        if self.schema.task != "regression" and hasattr(self.pipeline, "predict_proba"):
            probabilities = self.pipeline.predict_proba(features).round(6).tolist()
            answer["probabilities"] = probabilities
            answer["classes"] = self.schema.classes
        if self.capture is not None and not probe and self.capture.sampled():
            self._record(features, predictions, probabilities, ids, times)
        return answer

    @bentoml.api
    def feedback(self, labels: list[dict[str, Any]]) -> dict[str, Any]:
        """Ground truth arriving later, keyed by inference id: `[{inference_id, label}]`."""
        if self.capture is None:
            raise InvalidArgument("capture is off on this server; labels cannot be stored")
        try:
            cleaned = [self._label(i, item) for i, item in enumerate(labels)]
        except InputError as exc:
            raise InvalidArgument(str(exc)) from None
        self.capture.add(LABELS, label_rows(cleaned, now_utc()))
        return {"accepted": len(cleaned)}

    @bentoml.on_shutdown
    def close_capture(self) -> None:
        if self.capture is not None:
            self.capture.close()

    def _ids_and_times(self, n: int, ids, timestamps):
        if ids is not None and len(ids) != n:
            raise InputError(f"ids has {len(ids)} entries for {n} records")
        if timestamps is not None and len(timestamps) != n:
            raise InputError(f"timestamps has {len(timestamps)} entries for {n} records")
        ids = [str(i) for i in ids] if ids else [uuid.uuid4().hex for _ in range(n)]
        try:
            now = now_utc()
            times = [parse_time(t) for t in timestamps] if timestamps else [now] * n
        except ValueError as exc:
            raise InputError(
                f"timestamps: {exc}; use ISO 8601, e.g. 2011-04-01T08:00:00Z"
            ) from None
        return ids, times

    def _record(self, features: pd.DataFrame, predictions, probabilities, ids, times) -> None:
        typed = features.astype(object).where(features.notna(), None).to_dict(orient="records")
        if self.schema.task != "regression":
            predictions = [str(p) for p in predictions]
        self.capture.add(
            PREDICTIONS,
            prediction_rows(
                typed, predictions, probabilities, ids, times, self.bento, self.model_tag
            ),
        )

    def _label(self, i: int, item: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(item, dict) or "inference_id" not in item or "label" not in item:
            raise InputError(f"label {i}: expected an object with inference_id and label")
        label = item["label"]
        if self.schema.task == "regression":
            if isinstance(label, bool) or not isinstance(label, int | float) or math.isnan(label):
                raise InputError(f"label {i}: must be a number for a regression model")
            return {"inference_id": item["inference_id"], "label": float(label)}
        if label is None:
            raise InputError(f"label {i}: is null")
        return {"inference_id": item["inference_id"], "label": str(label)}
