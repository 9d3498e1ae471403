"""Estimates settled by their labels: a window checked before its labels arrived is read again
once they have, and its estimate is set beside the realised value.

Labels come hours or weeks after the predictions, so the window a run estimated is rarely the
window its labels complete. Each monitor run looks again at a few earlier windows whose estimate
is still unsettled (those waited on longest first), for up to `estimate.settle_days`. What they
show is kept in `settled.jsonl` and measures the estimator itself: its error on each window and
the share of windows whose band held the realised value.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from config.loader import Project
from tasks.capture import read_window
from tasks.monitor.history import history_dir, recent_windows
from tasks.monitor.quality import model_quality

log = logging.getLogger("driftloop.settle")

COVERAGE_WINDOWS = 50  # the band's live coverage is measured over this many settled windows


class SettledEstimate(BaseModel):
    """One window's estimate beside the value its labels gave."""

    run_id: str
    window_start: str
    window_end: str
    metric: str
    estimate: float
    lower: float
    upper: float
    realised: float
    error: float  # estimate minus realised
    inside: bool  # the band held the realised value
    labelled_rows: int
    settled_at: str


class SettleSummary(BaseModel):
    """What the settled estimates say, for this run's metrics and artifacts."""

    settled_now: list[SettledEstimate] = []
    latest: SettledEstimate | None = None
    coverage: float | None = None  # share of the last COVERAGE_WINDOWS settled bands that held
    windows: int = 0  # settled windows the coverage is measured on


def settled_path(project: Project) -> Path:
    return history_dir(project) / "settled.jsonl"


def attempts_path(project: Project) -> Path:
    return history_dir(project) / "settle-attempts.json"


def read_settled(project: Project) -> list[SettledEstimate]:
    path = settled_path(project)
    if not path.is_file():
        return []
    return [
        SettledEstimate.model_validate_json(line)
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def waiting_windows(project: Project, now: datetime, current_start: datetime) -> list[dict]:
    """Earlier usable windows with an estimate and no realised value yet, still within
    `estimate.settle_days`: the ones waited on longest (least recently tried) first."""
    horizon = now - timedelta(days=project.config.estimate.settle_days)
    done = {s.run_id for s in read_settled(project)}
    tried = _attempts(project)
    waiting = [
        r
        for r in recent_windows(project, 100_000)
        if r.get("usable")
        and r.get("estimate")
        and r.get("realised") is None
        and r["run_id"] not in done
        and horizon <= datetime.fromisoformat(r["window_end"]) <= current_start
    ]
    return sorted(waiting, key=lambda r: (tried.get(r["run_id"], ""), r["window_end"]))


def settle_window(
    project: Project, record: dict, classes: list[Any] | None, now: datetime
) -> SettledEstimate | None:
    """The window read again: its realised primary metric beside the estimate, or None while
    too few of its labels have arrived."""
    start, end = (datetime.fromisoformat(record[k]) for k in ("window_start", "window_end"))
    window = read_window(project, start, end, max_rows=project.config.monitor.max_rows)
    frame = window.frame.rename(columns={"label": project.config.data.target})
    quality = model_quality(frame, project, classes=classes)
    if quality is None or quality.status != "ok":
        return None
    estimate = record["estimate"]
    realised = next((m.current for m in quality.metrics if m.name == estimate["metric"]), None)
    if realised is None:
        return None
    return SettledEstimate(
        run_id=record["run_id"],
        window_start=record["window_start"],
        window_end=record["window_end"],
        metric=estimate["metric"],
        estimate=estimate["value"],
        lower=estimate["lower"],
        upper=estimate["upper"],
        realised=realised,
        error=estimate["value"] - realised,
        inside=estimate["lower"] <= realised <= estimate["upper"],
        labelled_rows=quality.labelled_rows,
        settled_at=now.isoformat(),
    )


def summarise(project: Project, settled_now: list[SettledEstimate]) -> SettleSummary:
    history = read_settled(project)
    recent = history[-COVERAGE_WINDOWS:]
    return SettleSummary(
        settled_now=settled_now,
        latest=history[-1] if history else None,
        coverage=sum(s.inside for s in recent) / len(recent) if recent else None,
        windows=len(recent),
    )


@task(cache_policy=NO_CACHE)
def settle_estimates(
    project: Project, current_start: datetime, classes: list[Any] | None = None
) -> SettleSummary:
    """Settle up to `estimate.settle_per_run` earlier windows whose labels have arrived since;
    a window that cannot be read is tried again on a later run, never a reason to fail."""
    now = datetime.now(UTC)
    settled_now: list[SettledEstimate] = []
    per_run = project.config.estimate.settle_per_run
    for record in waiting_windows(project, now, current_start)[:per_run]:
        try:
            settled = settle_window(project, record, classes, now)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("window %s not settled: %s", record["run_id"], exc)
            settled = None
        _tried(project, record["run_id"], now)
        if settled is not None:
            _append(project, settled)
            settled_now.append(settled)
    return summarise(project, settled_now)


def _append(project: Project, settled: SettledEstimate) -> None:
    path = settled_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(settled.model_dump_json() + "\n")


def _attempts(project: Project) -> dict[str, str]:
    path = attempts_path(project)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:  # a torn write: every window counts as never tried
        return {}


def _tried(project: Project, run_id: str, now: datetime) -> None:
    """Remember when a window was last tried, dropping windows long past the horizon."""
    attempts = _attempts(project)
    attempts[run_id] = now.isoformat()
    horizon = (now - timedelta(days=2 * project.config.estimate.settle_days)).isoformat()
    attempts = {k: v for k, v in attempts.items() if v >= horizon}
    path = attempts_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(attempts))
    partial.replace(path)
