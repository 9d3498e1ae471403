"""Traffic to the served model: sample feature records and send them over real HTTP."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from config.loader import Project
from model.frames import read_table


@dataclass(frozen=True)
class Sample:
    records: list[dict[str, Any]]
    targets: list[Any]


def sample_records(project: Project, n: int, seed: int = 0, query: str | None = None) -> Sample:
    """`n` rows of the source data (or the training data) as JSON-ready feature records."""
    data = project.config.data
    path = project.resolve(data.source.path) if data.source else project.data_path
    frame = read_table(path)
    if query:
        frame = frame.query(query)
    frame = frame.sample(n=min(n, len(frame)), random_state=seed)
    numeric, categorical = project.features
    records = [
        {c: _json_value(row[c]) for c in numeric + categorical}
        for row in frame.to_dict(orient="records")
    ]
    return Sample(records=records, targets=frame[data.target].tolist())


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def predict(url: str, records: list[dict[str, Any]], timeout: float = 30) -> dict[str, Any]:
    """POST records to `url`/predict; raises httpx.HTTPStatusError with the server's message."""
    response = httpx.post(f"{url}/predict", json={"records": records}, timeout=timeout)
    response.raise_for_status()
    return response.json()
