"""What a monitor run leaves to read: the Evidently HTML report (served by the stack's nginx) and
Prefect artifacts (a markdown summary, a table of columns, a link to the report)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from tasks.checks import CheckResult, save_report
from tasks.render import drift_report_key


def reports_dir(project: Project) -> Path:
    return project.state_dir / "reports"


@task(name="write_report", retries=1, cache_policy=NO_CACHE)
def write_report(project: Project, reference: pd.DataFrame, current: pd.DataFrame, name: str):
    """Evidently's HTML report into the served reports folder; returns its URLs by file."""
    frame = current.rename(columns={"label": project.config.data.target})
    files = save_report(reference, frame, project, reports_dir(project) / f"{name}.html")
    base = project.config.endpoints.reports
    return [f"{base}/{path.name}" for path in files.paths]


@task(name="publish_artifacts", cache_policy=NO_CACHE)
def publish_artifacts(
    project: Project, result: CheckResult, headline: str, window: str, report_urls: list[str]
) -> None:
    """The run's summary in the Prefect UI, next to its logs."""
    slug = project.config.project.name.replace("_", "-")
    lines = [f"# {headline}", "", f"Window: {window}", "", result.message, ""]
    if result.quality and result.quality.metrics:
        lines += ["| metric | current | reference |", "|---|---|---|"]
        lines += [
            f"| {m.name} | {_fmt(m.current)} | {_fmt(m.reference)} |"
            for m in result.quality.metrics
        ]
    if result.validation:
        lines += ["", "Data checks: " + ", ".join(sorted(result.validation.verdicts))]
    lines += [f"\n[Evidently report]({url})" for url in report_urls]
    create_markdown_artifact("\n".join(lines), key=f"{slug}-monitor-summary", description=headline)
    if result.columns:
        create_table_artifact(
            [
                {
                    "column": c.column,
                    "method": c.method,
                    "score": _fmt(c.score),
                    "threshold": _fmt(c.threshold),
                    "drifted": c.drifted,
                    "status": c.status,
                }
                for c in result.columns
            ],
            key=f"{slug}-column-drift",
            description="Per-column drift of the window against the serving model's training data",
        )
    if report_urls:
        create_link_artifact(
            report_urls[0], link_text="Evidently report", key=drift_report_key(project)
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
