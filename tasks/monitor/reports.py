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
from tasks.evidence import outside_note
from tasks.monitor.report_html import save_report
from tasks.monitor.results import CheckResult, EstimatedQuality, QualityResult, WindowChange
from tasks.monitor.settle import SettleSummary
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
    estimated: EstimatedQuality | None = None,
    change: WindowChange | None = None,
):
    """Evidently's HTML report into the served reports folder, headed by what Evidently never
    sees: the quality on traffic beside the serving model's held-out values, the quality
    estimated without labels, the change since the previous window and, for a window past
    monitor.max_rows, how it was sampled; returns its URLs."""
    frame = current.rename(columns={"label": project.config.data.target})
    files = save_report(reference, frame, project, reports_dir(project) / f"{name}.html")
    if change is not None:
        note_report(files.paths[0], change_line(change))
    if estimated is not None and estimated.metrics:
        head_estimate(files.paths[0], estimated)
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
    settled: SettleSummary | None = None,
) -> None:
    """The run's summary in the Prefect UI, next to its logs."""
    slug = project.config.project.name.replace("_", "-")
    where = f"Window: {window}" + (f" ({sample}, monitor.max_rows)" if sample else "")
    lines = [f"# {headline}", "", where, "", result.message, ""]
    if result.quality and result.quality.metrics:
        lines += _quality_table(result.quality)
    if result.estimated and result.estimated.metrics:
        table = _table(_estimate_rows(result.estimated))
        lines += ["", estimate_title(result.estimated), "", *table]
        note = outside_note(result.estimated.outside_share)
        lines += ["", note] if note else []
    if result.change is not None:
        lines += ["", change_line(result.change)]
    if settled is not None:
        lines += settled_lines(settled)
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
    return _table(_quality_rows(quality))


def _table(rows: list[list[str]]) -> list[str]:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]


def estimate_title(estimated: EstimatedQuality) -> str:
    method = {"cbpe": "confidence-based", "dle": "direct loss estimation"}[estimated.method]
    return (
        f"Model quality estimated without labels ({method}, {estimated.confidence:.0%} band, "
        f"{estimated.rows:,} rows)"
    )


def _estimate_rows(estimated: EstimatedQuality) -> list[list[str]]:
    """Each estimate with its band, beside the realised value once the labels arrived."""
    rows = [["metric", "estimate", "band", "realised", "estimate error"]]
    rows += [
        [m.name, _fmt(m.value), _band(m.lower, m.upper), _fmt(m.realised), _fmt(m.error)]
        for m in estimated.metrics
    ]
    return rows


def _band(lower: float, upper: float) -> str:
    return f"{_fmt(lower)} to {_fmt(upper)}"


def settled_lines(settled: SettleSummary) -> list[str]:
    """Earlier windows whose late labels settled their estimate in this run, and the band's
    record over the settled windows."""
    lines = []
    for s in settled.settled_now:
        held = "inside the band" if s.inside else "OUTSIDE the band"
        lines.append(
            f"- {s.window_start} to {s.window_end}: {s.metric} estimated {_fmt(s.estimate)} "
            f"({_band(s.lower, s.upper)}), realised {_fmt(s.realised)} on "
            f"{s.labelled_rows} labelled rows: {held}"
        )
    if lines:
        lines = ["", "Estimates settled by late labels:", "", *lines]
    if settled.coverage is not None:
        lines += [
            "",
            f"The band held the realised value in {settled.coverage:.0%} of the last "
            f"{settled.windows} settled windows.",
        ]
    return lines


def change_line(change: WindowChange) -> str:
    since = f" ({change.previous_window})" if change.previous_window else ""
    return f"Against the previous window{since}: {change.message}"


def head_estimate(path: Path, estimated: EstimatedQuality) -> None:
    """Put the estimate table at the top of an HTML report."""
    head, *body = _estimate_rows(estimated)
    table = _html_row(head, "th") + "".join(_html_row(row, "td") for row in body)
    note = outside_note(estimated.outside_share)
    warning = f"<p><strong>{html.escape(note)}</strong></p>" if note else ""
    block = (
        '<section id="driftloop-estimate" style="font-family:sans-serif;margin:1em">'
        f"<h2>{html.escape(estimate_title(estimated))}</h2><table>{table}</table>{warning}"
        "</section>"
    )
    text = path.read_text()
    path.write_text(text.replace("<body>", "<body>\n" + block, 1))


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
