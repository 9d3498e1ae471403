"""Traffic to the served model: sample feature records and send them over real HTTP."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from config.loader import Project
from model.capture import auth_headers
from model.frames import read_table


@dataclass(frozen=True)
class Sample:
    records: list[dict[str, Any]]
    targets: list[Any]
    times: list[datetime] | None = None  # event times, when the data has a timestamp column


def traffic_source(project: Project) -> Path:
    """The file traffic is drawn from by default: data.source, else the training data."""
    data = project.config.data
    return project.resolve(data.source.path) if data.source else project.data_path


def load_traffic(
    project: Project,
    path: Path | None = None,
    query: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
) -> Sample:
    """Rows of a file as JSON-ready feature records, in file order (or a seeded sample)."""
    data = project.config.data
    frame = read_table(path or traffic_source(project))
    if query:
        frame = frame.query(query)
    if limit is not None and seed is not None:
        frame = frame.sample(n=min(limit, len(frame)), random_state=seed)
    elif limit is not None:
        frame = frame.head(limit)
    numeric, categorical = project.features
    records = [
        {c: _json_value(row[c]) for c in numeric + categorical}
        for row in frame.to_dict(orient="records")
    ]
    times = None
    if data.timestamp_column and data.timestamp_column in frame.columns:
        times = [t.to_pydatetime() for t in pd.to_datetime(frame[data.timestamp_column], utc=True)]
    targets = frame[data.target].tolist() if data.target in frame.columns else []
    return Sample(records=records, targets=targets, times=times)


def sample_records(project: Project, n: int, seed: int = 0, query: str | None = None) -> Sample:
    """`n` random rows of the traffic source as feature records."""
    return load_traffic(project, query=query, limit=n, seed=seed)


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def predict(url: str, records: list[dict[str, Any]], timeout: float = 30) -> dict[str, Any]:
    """POST records to `url`/predict; raises httpx.HTTPStatusError with the server's message."""
    response = httpx.post(
        f"{url}/predict", json={"records": records}, headers=auth_headers(), timeout=timeout
    )
    response.raise_for_status()
    return response.json()


@dataclass
class ReplayStats:
    sent: int = 0
    failed: int = 0
    labelled: int = 0
    labels_not_due: int = 0  # labels whose event time had not come when the replay ended
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def replay(
    url: str,
    sample: Sample,
    times: list[datetime] | None,
    *,
    speed: float,
    batch: int = 1,
    label_delay: timedelta | None = None,
    max_seconds: float = 600,
    on_batch: Callable[[ReplayStats], None] = lambda _: None,
) -> ReplayStats:
    """Send `sample` through the real endpoint in event-time order at `speed` x real time.

    Event times travel with the records (the service captures them), so a month replays in
    minutes. Rows without event times (`times` None) are live traffic: sent as fast as the
    endpoint answers and stamped with the time they are sent, so a replay ends at now and
    never in the future. Labels follow `label_delay` of event time later through /feedback;
    those not yet due when the replay ends are counted in `labels_not_due`. Bounded by
    `max_seconds` of wall time; never raises on a failed request, it counts it.
    """
    live = times is None
    if times is None:
        times = [datetime.now(UTC)] * len(sample.records)  # replaced as each batch is sent
    order = sorted(range(len(times)), key=times.__getitem__)
    t0, wall0 = times[order[0]], time.monotonic()
    pending: list[tuple[datetime, str, Any]] = []  # (due event time, id, label)
    stats = ReplayStats()
    with httpx.Client(base_url=url, timeout=30, headers=auth_headers()) as client:
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            if live:  # one stamp per batch: labels due "now" are due for all of it
                sent_at = datetime.now(UTC)
                for i in idx:
                    times[i] = sent_at
            now_event = times[idx[0]]
            wait = 0.0 if live else (now_event - t0).total_seconds() / speed
            wait -= time.monotonic() - wall0
            if time.monotonic() - wall0 + max(wait, 0) > max_seconds:
                break
            if wait > 0:
                time.sleep(wait)
            ids = [uuid.uuid4().hex for _ in idx]
            _send(
                client,
                stats,
                "/predict",
                {
                    "records": [sample.records[i] for i in idx],
                    "ids": ids,
                    "timestamps": [times[i].isoformat() for i in idx],
                },
                count=len(idx),
            )
            if label_delay is not None:
                pending += [
                    (times[i] + label_delay, j, sample.targets[i])
                    for i, j in zip(idx, ids, strict=True)
                ]
                due = [p for p in pending if p[0] <= now_event]
                pending = [p for p in pending if p[0] > now_event]
                _post_labels(client, stats, due)
            on_batch(stats)
    stats.labels_not_due = len(pending)
    return stats


def _send(client: httpx.Client, stats: ReplayStats, path: str, body: dict, count: int) -> None:
    began = time.monotonic()
    try:
        response = client.post(path, json=body)
        ok = response.is_success
        detail = "" if ok else f"{response.status_code} {response.text[:200]}"
    except httpx.HTTPError as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    stats.latencies.append(time.monotonic() - began)
    if path == "/predict":
        stats.sent += count
        stats.failed += 0 if ok else count
    if not ok and len(stats.errors) < 20:
        stats.errors.append(detail)


def _post_labels(client: httpx.Client, stats: ReplayStats, due: list) -> None:
    if not due:
        return
    labels = [{"inference_id": j, "label": _json_value(label)} for _, j, label in due]
    _send(client, stats, "/feedback", {"labels": labels}, count=len(labels))
    stats.labelled += len(labels)
