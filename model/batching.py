"""Adaptive batching in the predictor's own process (`serving.batching`).

Concurrent requests' validated feature frames wait in BentoML's own adaptive batcher (the
`CorkDispatcher` its server puts in front of a `batchable` API) and go to the model as one
`predict`; each request gets its own rows back. The batcher runs here rather than behind a
second BentoML service because that service's hop (a second HTTP request and the frame sent
as an object array) cost about what the merged call saved (docs/decisions.md).

A frame the model refuses inside a merged call is found frame by frame, so only its own
request fails. A request of `max_batch_size` rows or more is already a batch and goes
straight to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio.from_thread
import numpy as np
import pandas as pd

# BentoML's adaptive batcher itself (pinned with bentoml==1.4.39; tests/integration/
# test_batching.py serves it): the module is internal, the algorithm is the one its servers use
from bentoml._internal.marshal.dispatcher import CorkDispatcher
from bentoml.exceptions import ServiceUnavailable

from model.schema import InputError

Outputs = tuple[np.ndarray, np.ndarray | None]  # predictions, class probabilities


def _overloaded() -> Outputs:
    raise ServiceUnavailable("the model is overloaded: requests waited past max_latency_ms")


class FrameBatcher:
    """`batcher.outputs(frame)`, from a sync API's worker thread, gives the frame's
    (predictions, probabilities), computed in one model call with whatever other requests'
    frames arrived meanwhile."""

    def __init__(
        self,
        predict: Callable[[pd.DataFrame], Outputs],
        max_batch_size: int,
        max_latency_ms: int,
    ) -> None:
        from prometheus_client import Histogram  # after BentoML set its multiprocess mode

        self.predict = predict
        self.max_batch_size = max_batch_size
        self.rows = Histogram(
            "driftloop_batch_rows",
            "Rows per model call made by the adaptive batcher",
            buckets=_buckets(max_batch_size),
        )
        dispatcher = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=_overloaded,
            get_batch_size=len,
        )
        self._merged_call = dispatcher(self._merged)

    def outputs(self, frame: pd.DataFrame) -> Outputs:
        if len(frame) >= self.max_batch_size:
            return self._observed(frame)
        return anyio.from_thread.run(self._merged_call, frame)  # waits in the server's loop

    def _merged(self, frames: Sequence[pd.DataFrame]) -> list[Outputs | Exception]:
        if len(frames) == 1:
            return [self._alone(frames[0])]
        try:
            raw, proba = self._observed(pd.concat(frames, ignore_index=True))
        except InputError:  # someone's values: find whose, frame by frame
            return [self._alone(frame) for frame in frames]
        ends = np.cumsum([len(frame) for frame in frames])
        return [
            (raw[end - len(frame) : end], None if proba is None else proba[end - len(frame) : end])
            for frame, end in zip(frames, ends, strict=True)
        ]

    def _alone(self, frame: pd.DataFrame) -> Outputs | Exception:
        try:
            return self._observed(frame)
        except InputError as exc:
            return exc  # the batcher raises it in this frame's request only

    def _observed(self, frame: pd.DataFrame) -> Outputs:
        self.rows.observe(len(frame))
        return self.predict(frame)


def _buckets(max_batch_size: int) -> list[Any]:
    """Powers of two up to the largest merged call."""
    edges = [2**k for k in range(0, 17) if 2**k < max_batch_size]
    return [*edges, max_batch_size, float("inf")]
