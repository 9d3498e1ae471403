"""The BentoML service: validates JSON records, predicts with the exact model pinned at build,
and captures every prediction (and later label) for the monitor.

The model tag comes only from `bentoml build --arg model_tag=NAME:VERSION`, so a bento always
serves the model it was built with (a `:latest` lookup would follow the store instead). Capture
is configured by the launcher through the environment (see model/capture.py).

With DRIFTLOOP_CAPTURE_TOKEN in the server's environment every endpoint but the health checks
and /metrics asks for `Authorization: Bearer <token>`. Whatever a caller sends, a bad request is
a 4xx naming the field, never a 500, and nothing of it is captured.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

import bentoml
import pandas as pd
import pydantic
from bentoml.exceptions import InvalidArgument

from model.batching import FrameBatcher
from model.capture import (
    CAPTURE_DIR_ENV,
    FLUSH_SECONDS_ENV,
    LABELS,
    MIRROR_HEADER,
    PREDICTIONS,
    SAMPLE_RATE_ENV,
    TOKEN_ENV,
    CaptureWriter,
    EventWindow,
    LabelGate,
    PredictionColumns,
    ShadowLog,
    capture_counters,
    capture_schema,
    label_rows,
    now_utc,
)
from model.schema import FeatureSchema, InputError, records_frame, validate_ids, validate_labels
from model.store import StoreError, open_store

log = logging.getLogger("driftloop.service")


class BuildArgs(pydantic.BaseModel):
    """`bentoml build --arg` values, from config/driftloop.yaml (serving.*) via build_bento."""

    model_tag: str = ""
    max_batch: int = 1000
    workers: int = 1
    batching: bool = False  # BentoML's adaptive batching across concurrent requests
    max_batch_size: int = 64
    max_latency_ms: int = 1000


ARGS = bentoml.use_arguments(BuildArgs)
if not ARGS.model_tag or ARGS.model_tag.endswith(":latest") or ":" not in ARGS.model_tag:
    raise RuntimeError(
        "build this service with an exact model tag: --arg model_tag=NAME:VERSION (never :latest)"
    )


# scikit-learn's words for a finite input its scaling pushed past float64 (1e308 / 0.1)
TOO_EXTREME = re.compile(r"infinity|NaN|too large", re.IGNORECASE)
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
JSON_PATHS = frozenset({"/predict", "/feedback"})


class CaptureGuard:
    """ASGI middleware in front of the endpoints: the bearer token, when the server has one
    (compared in constant time), and JSON bodies only on /predict and /feedback (BentoML's form
    parsing would otherwise turn a malformed field into a 500)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        token = os.environ.get(TOKEN_ENV, "").strip()
        self.digest = hashlib.sha256(token.encode()).digest() if token else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.digest is not None and not self._authorized(headers.get(b"authorization", b"")):
            return await _reply(send, 401, "send Authorization: Bearer <token>", bearer=True)
        media = headers.get(b"content-type", b"application/json").split(b";")[0].strip()
        if scope["path"] in JSON_PATHS and media.lower() not in (b"application/json", b""):
            return await _reply(send, 415, "send the body as application/json")
        return await self.app(scope, receive, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, credentials = header.partition(b" ")
        offered = hashlib.sha256(credentials.strip()).digest()
        return hmac.compare_digest(offered, self.digest) and scheme.lower() == b"bearer"


async def _reply(send: Any, status: int, error: str, bearer: bool = False) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if bearer:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def stored_schema(stored: Any) -> FeatureSchema:
    """The feature schema the stored model carries (model/register.py puts it there)."""
    return FeatureSchema.model_validate(
        json.loads(stored.info.metadata["driftloop_meta"])["schema"]
    )


def model_outputs(pipeline: Any, schema: FeatureSchema, features: pd.DataFrame):
    """Raw predictions (and class probabilities) as arrays; InputError when the model cannot
    give finite ones for these values (a number far beyond anything it was trained on, say)."""
    try:
        raw = pipeline.predict(features)
        proba = None
        if schema.task != "regression" and hasattr(pipeline, "predict_proba"):
            proba = pipeline.predict_proba(features)
    except (ValueError, OverflowError, FloatingPointError) as exc:
        if isinstance(exc, ValueError) and not TOO_EXTREME.search(str(exc)):
            raise  # not the input's fault: a 500, which the roll-forward watch counts
        log.warning("the model refused a request's features: %s", exc)
        raise InputError(f"records: the model cannot use these values ({str(exc)[:200]})") from None
    return raw, proba


# BentoML runs a sync API one request at a time per worker (`threads`, default 1): right for
# the model's own CPU work; with batching the requests must wait for the batcher together
CONCURRENT_REQUESTS = min(ARGS.max_batch_size, 64) if ARGS.batching else 1


@bentoml.service(traffic={"timeout": 30}, workers=ARGS.workers, threads=CONCURRENT_REQUESTS)
class Predictor:
    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        stored = self.model_ref  # resolved to the stored model when the service starts
        self.schema = stored_schema(stored)
        self.pipeline = bentoml.sklearn.load_model(stored)
        self.batcher = (
            FrameBatcher(self._model_outputs, ARGS.max_batch_size, ARGS.max_latency_ms)
            if ARGS.batching
            else None
        )
        self.model_tag = str(stored.tag)
        self.bento = f"{bentoml.server_context.bento_name}:{bentoml.server_context.bento_version}"
        capture_counters()  # on /metrics from the start, at zero
        self.window = EventWindow.from_env()
        self.capture = self._capture_writer()
        self.labels = (
            None if self.capture is None else LabelGate(self.capture.store.sub(PREDICTIONS))
        )
        self.shadow = ShadowLog.from_env()  # set while this server is a shadow stage's candidate

    def _capture_writer(self) -> CaptureWriter | None:
        """The writer for the store DRIFTLOOP_CAPTURE_DIR names (a directory or s3:// URL, its
        endpoint in DRIFTLOOP_STORAGE_ENDPOINT_URL); a location that can never work stops the
        server here, with why. A store that is down only fails flushes (counted, logged)."""
        location = os.environ.get(CAPTURE_DIR_ENV, "").strip()
        if not location:
            return None
        try:
            store = open_store(location, base=Path.cwd())
        except StoreError as exc:
            raise RuntimeError(f"{CAPTURE_DIR_ENV} (capture.path): {exc}") from None
        return CaptureWriter(
            store,
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
        ctx: bentoml.Context = None,
    ) -> dict[str, Any]:
        """Predictions for a batch of feature records, with the model that made them.

        `ids` (the caller's inference ids) and `timestamps` (event times, for replays) are
        optional and must match `records` in length; ids are minted when absent. `probe`
        marks a health check (a roll-forward's smoke test and watch): answered, never captured,
        so it cannot pass for production traffic in the monitor's windows. A request nginx
        mirrored in a shadow stage is not captured either: its answer goes to the shadow log.
        """
        try:
            features = records_frame(records, self.schema, ARGS.max_batch)
            ids, times = self._ids_and_times(len(records), ids, timestamps)
            predictions, probabilities = self._predict(features)
        except InputError as exc:
            raise InvalidArgument(str(exc)) from None
        answer: dict[str, Any] = {
            "predictions": predictions,
            "ids": ids,
            "model": self.model_tag,
            "bento": self.bento,
        }
        if probabilities is not None:
            answer["probabilities"] = probabilities
            answer["classes"] = self.schema.classes
        if self._mirrored(ctx):
            self.shadow.add(records, predictions, probabilities)
        elif self.capture is not None and not probe:
            self.labels.answered(ids)
            if self.capture.sampled():
                self._record(features, predictions, probabilities, ids, times)
        return answer

    @bentoml.api
    def feedback(self, labels: list[dict[str, Any]]) -> dict[str, Any]:
        """Ground truth arriving later, keyed by inference id: `[{inference_id, label}]`.

        A label is a finite number (regression) or one of the model's classes. Only labels for
        ids this server answered (or the capture store holds) are stored, and only the first
        label of an id: the others are counted on /metrics and left out (`unknown`,
        `ignored_relabels` in the answer). At most `max_batch` labels a request."""
        if self.capture is None:
            raise InvalidArgument("capture is off on this server; labels cannot be stored")
        try:
            cleaned = validate_labels(labels, self.schema, ARGS.max_batch)
        except InputError as exc:
            raise InvalidArgument(str(exc)) from None
        accepted, unknown, repeated = self.labels.admit(cleaned)
        if accepted:
            self.capture.add(LABELS, label_rows(accepted, now_utc()))
        return {"accepted": len(accepted), "unknown": unknown, "ignored_relabels": repeated}

    @bentoml.on_shutdown
    def close_capture(self) -> None:
        if self.capture is not None:
            self.capture.close()

    def _mirrored(self, ctx: bentoml.Context | None) -> bool:
        """Sent by nginx's mirror (the header holds its secret), not by a client."""
        if self.shadow is None or ctx is None:
            return False
        return self.shadow.marks(ctx.request.headers.get(MIRROR_HEADER, ""))

    def _ids_and_times(self, n: int, ids, timestamps):
        ids = validate_ids(ids, n) or [uuid.uuid4().hex for _ in range(n)]
        now = now_utc()
        if timestamps is None:
            return ids, [now] * n
        if len(timestamps) != n:
            raise InputError(f"timestamps has {len(timestamps)} entries for {n} records")
        times = []
        for i, value in enumerate(timestamps):
            try:
                times.append(self.window.check(value, now))
            except ValueError as exc:
                raise InputError(f"timestamps[{i}]: {exc}") from None
        return ids, times

    def _predict(self, features: pd.DataFrame) -> tuple[list, list | None]:
        """Predictions (and class probabilities) for this request's rows: from the model here,
        or through the adaptive batcher; InputError when the model cannot use the values."""
        if self.batcher is not None:
            raw, proba = self.batcher.outputs(features)
        else:
            raw, proba = self._model_outputs(features)
        if self.schema.task == "regression":
            bad = [i for i, p in enumerate(raw) if not math.isfinite(float(p))]
            if bad:
                raise InputError(
                    f"record {bad[0]}: the model gives no finite prediction for these features"
                )
        if proba is not None:
            bad = [i for i, row in enumerate(proba) if not all(math.isfinite(x) for x in row)]
            if bad:
                raise InputError(
                    f"record {bad[0]}: the model gives no finite probabilities for these features"
                )
            proba = proba.round(6).tolist()
        return raw.tolist(), proba

    def _model_outputs(self, features: pd.DataFrame):
        return model_outputs(self.pipeline, self.schema, features)

    def _record(self, features: pd.DataFrame, predictions, probabilities, ids, times) -> None:
        """Hand the request's columns to the background writer as they are."""
        if self.schema.task != "regression":
            predictions = [str(p) for p in predictions]
        columns = PredictionColumns.of_frame(
            features,
            self.capture.schemas[PREDICTIONS],
            predictions=predictions,
            probabilities=probabilities,
            ids=ids,
            times=times,
            bento=self.bento,
            model=self.model_tag,
        )
        self.capture.add_predictions(columns)


Predictor.add_asgi_middleware(CaptureGuard)
