"""The monitor's memory: every run's result saved as JSON (before anything is published), and
the outcomes the retrain policy reads back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from config.loader import Project


class MonitorRecord(BaseModel):
    run_id: str
    model: str
    window_start: str
    window_end: str
    serving_bento: str
    data_rev: str
    verdict: str
    rows: int  # the rows checked: the sample's when the window was sampled
    label_coverage: float
    rows_total: int | None = None  # rows in the window before sampling (None: records before it)
    sample: str | None = None  # "sampled N of M rows" when past monitor.max_rows
    dataset_drift: bool
    quality_breached: bool
    estimated_breached: bool = False  # the estimate past the limit beyond its band
    sudden_change: bool = False  # against the previous usable window
    estimate: dict | None = None  # the primary metric's estimate: metric, value, lower, upper
    realised: float | None = None  # the primary metric on the window's labelled rows, if any
    usable: bool
    report_url: str | None = None
    finished_at: str
    result: dict  # the full CheckResult


def history_dir(project: Project) -> Path:
    return project.state_dir / "monitor"


@task(cache_policy=NO_CACHE)
def save_record(project: Project, record: MonitorRecord) -> Path:
    """One JSON file per run plus a line in the history; written before publish or notify."""
    runs = history_dir(project) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{record.run_id}.json"
    path.write_text(record.model_dump_json(indent=2))
    summary = record.model_dump(exclude={"result"})
    with (history_dir(project) / "history.jsonl").open("a") as log:
        log.write(json.dumps(summary) + "\n")
    return path


def recent_windows(project: Project, n: int) -> list[dict]:
    """Summaries of this model's newest `n` monitor runs, oldest first."""
    path = history_dir(project) / "history.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["model"] == project.config.project.name][-n:]


@task(cache_policy=NO_CACHE)
def record_trigger(project: Project, reason: str, run_id: str | None) -> None:
    """The policy's memory of when it last started a retrain (its cooldown reads it)."""
    path = history_dir(project) / "triggers.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "at": datetime.now(UTC).isoformat(),
        "model": project.config.project.name,
        "reason": reason,
        "retrain_run": run_id,
    }
    with path.open("a") as log:
        log.write(json.dumps(entry) + "\n")


def last_trigger(project: Project) -> datetime | None:
    path = history_dir(project) / "triggers.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["model"] == project.config.project.name]
    return datetime.fromisoformat(rows[-1]["at"]) if rows else None
