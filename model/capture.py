"""The capture store: every prediction (and later its label) as parquet in dt=/hour= partitions.

Writing happens off the request path: the service appends rows to a bounded in-memory buffer and
a background thread flushes them every `flush_seconds` (and at shutdown). One file per flush and
process, so concurrent writers never touch the same file.
"""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PREDICTIONS = "predictions"
LABELS = "labels"
CAPTURE_DIR_ENV = "DRIFTLOOP_CAPTURE_DIR"
SAMPLE_RATE_ENV = "DRIFTLOOP_CAPTURE_SAMPLE_RATE"
FLUSH_SECONDS_ENV = "DRIFTLOOP_CAPTURE_FLUSH_SECONDS"


def now_utc() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str | None) -> datetime:
    """An ISO timestamp as aware UTC; naive input is taken to be UTC."""
    if not value:
        return now_utc()
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def capture_schema(numeric: list[str], categorical: list[str], task: str) -> dict[str, pa.Schema]:
    """Fixed parquet schemas so every file of a model unifies: numbers float64, categories str."""
    target_type = pa.float64() if task == "regression" else pa.string()
    features = pa.struct(
        [pa.field(c, pa.float64()) for c in numeric]
        + [pa.field(c, pa.string()) for c in categorical]
    )
    return {
        PREDICTIONS: pa.schema(
            [
                ("inference_id", pa.string()),
                ("timestamp", pa.timestamp("us", tz="UTC")),
                ("bento", pa.string()),
                ("model", pa.string()),
                ("features", features),
                ("prediction", target_type),
                ("probabilities", pa.list_(pa.float64())),
            ]
        ),
        LABELS: pa.schema(
            [
                ("inference_id", pa.string()),
                ("timestamp", pa.timestamp("us", tz="UTC")),
                ("label", target_type),
            ]
        ),
    }


@dataclass
class CaptureWriter:
    """Buffers rows per (kind, hour) and flushes them to parquet from a daemon thread."""

    root: Path
    schemas: dict[str, pa.Schema]
    sample_rate: float = 1.0
    flush_seconds: float = 1.0
    max_buffer: int = 200_000  # beyond this, rows are dropped and counted, never blocking

    def __post_init__(self) -> None:
        self._rows: list[tuple[str, datetime, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name="capture-flush", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        return self.sample_rate >= 1 or random.random() < self.sample_rate

    def add(self, kind: str, rows: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            for row in rows:
                if len(self._rows) >= self.max_buffer:
                    self.dropped += 1
                    continue
                self._rows.append((kind, row["timestamp"], row))

    def flush(self) -> int:
        with self._lock:
            rows, self._rows = self._rows, []
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for kind, when, row in rows:
            groups.setdefault((kind, f"{when:%Y-%m-%d}", f"{when:%H}"), []).append(row)
        for (kind, day, hour), group in groups.items():
            target = self.root / kind / f"dt={day}" / f"hour={hour}"
            write_part(target, group, self.schemas[kind])
        return len(rows)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except OSError:  # a full or missing disk must not kill the thread; retry next tick
                continue


def write_part(directory: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> Path:
    """One parquet file, written to a temp name and renamed so readers never see half of it."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = directory / f".{name}.tmp"
    pq.write_table(table, tmp)
    tmp.replace(directory / name)
    return directory / name


def prediction_rows(
    features: list[dict[str, Any]],
    predictions: list[Any],
    probabilities: list[list[float]] | None,
    ids: list[str],
    times: list[datetime],
    bento: str,
    model: str,
) -> list[dict[str, Any]]:
    """Rows for the predictions table; `features` are already typed (float / str / None)."""
    return [
        {
            "inference_id": ids[i],
            "timestamp": times[i],
            "bento": bento,
            "model": model,
            "features": record,
            "prediction": predictions[i],
            "probabilities": None if probabilities is None else probabilities[i],
        }
        for i, record in enumerate(features)
    ]


def label_rows(labels: list[dict[str, Any]], received: datetime) -> list[dict[str, Any]]:
    """Labels keyed by inference id; `timestamp` is when the label arrived."""
    return [
        {"inference_id": str(item["inference_id"]), "timestamp": received, "label": item["label"]}
        for item in labels
    ]
