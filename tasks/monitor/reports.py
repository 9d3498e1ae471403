"""What a monitor run leaves to read: the Evidently HTML report (served by the stack's nginx) and
Prefect artifacts (a markdown summary, a table of columns, a link to the report)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from tasks.monitor.report_html import save_report
from tasks.monitor.results import CheckResult, QualityResult
from tasks.render.alerts import drift_report_key


def reports_dir(project: Project) -> Path:
    return project.state_dir / "reports"


@task(retries=1, cache_policy=NO_CACHE)
def write_report(
    project: Project,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    name: str,
    quality: QualityResult | None = None,
    sample: str | None = None,
):
    """Evidently's HTML report into the served reports folder, headed by the quality on traffic
    beside the serving model's held-out values (which Evidently never sees) and, for a window
    past monitor.max_rows, by how it was sampled; returns its URLs."""
    frame = current.rename(columns={"label": project.config.data.target})
    files = save_report(reference, frame, project, reports_dir(project) / f"{name}.html")
    if quality is not None and quality.metrics:
        head_report(files.paths[0], quality)
    if sample:
        note_report(files.paths[0], sample_line(sample, files.current_rows, files.sampled))
    for path in files.paths:  # read by nginx's unprivileged worker, whatever the umask
        path.chmod(0o644)
    base = project.config.endpoints.reports
    return [f"{base}/{path.name}" for path in files.paths]


@task(cache_policy=NO_CACHE)
def publish_artifacts(
    project: Project,
    result: CheckResult,
    headline: str,
    window: str,
    report_urls: list[str],
    sample: str | None = None,
) -> None:
    """The run's summary in the Prefect UI, next to its logs."""
    slug = project.config.project.name.replace("_", "-")
    where = f"Window: {window}" + (f" ({sample}, monitor.max_rows)" if sample else "")
    lines = [f"# {headline}", "", where, "", result.message, ""]
    if result.quality and result.quality.metrics:
        lines += _quality_table(result.quality)
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


REFERENCE_HEADERS = {"held_out": "held-out (serving model)", "reference_data": "reference data"}


def _quality_rows(quality: QualityResult) -> list[list[str]]:
    """Traffic's value of each metric beside its reference, and why a value is missing."""
    header = REFERENCE_HEADERS.get(quality.reference_source or "", "reference")
    rows = [["metric", "current", header, "note"]]
    rows += [[m.name, _fmt(m.current), _fmt(m.reference), m.note or ""] for m in quality.metrics]
    return rows


def _quality_table(quality: QualityResult) -> list[str]:
    head, *body = _quality_rows(quality)
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---|"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]


def head_report(path: Path, quality: QualityResult) -> None:
    """Put the quality table at the top of an HTML report."""
    head, *body = _quality_rows(quality)
    table = _html_row(head, "th") + "".join(_html_row(row, "td") for row in body)
    block = (
        '<section id="driftloop-quality" style="font-family:sans-serif;margin:1em">'
        f"<h2>Model quality on {quality.labelled_rows} labelled rows of traffic</h2>"
        f"<table>{table}</table></section>"
    )
    text = path.read_text()
    path.write_text(text.replace("<body>", "<body>\n" + block, 1))


def sample_line(sample: str, report_rows: int, report_sampled: bool) -> str:
    """What a sampled window's report says about the rows behind it."""
    line = f"Window {sample} uniformly (monitor.max_rows); the checks ran on that sample"
    return line + (f", this report shows {report_rows:,} of them" if report_sampled else "")


def note_report(path: Path, text: str) -> None:
    """Put a line of context at the top of an HTML report."""
    block = (
        '<section id="driftloop-sample" style="font-family:sans-serif;margin:1em">'
        f"<p>{html.escape(text)}</p></section>"
    )
    body = path.read_text()
    path.write_text(body.replace("<body>", "<body>\n" + block, 1))


def _html_row(cells: list[str], tag: str) -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
