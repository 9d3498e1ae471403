"""`driftloop check REFERENCE CURRENT`: the monitor's validation and checks on two files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from driftloop.console import ConfigOption, console, err_console, failures, project

EXIT_NO_DRIFT, EXIT_DRIFT, EXIT_BAD_INPUT = 0, 1, 2


def check(
    reference: Annotated[
        Path, typer.Argument(help="Reference data (csv or parquet), e.g. the training set.")
    ],
    current: Annotated[Path, typer.Argument(help="Current window to check (csv or parquet).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full result as JSON for machines.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write Evidently's HTML report to this path."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Validate both files, check drift and quality; exit 0 no drift, 1 drift, 2 bad input."""
    from tasks.monitor.checks import run_checks
    from tasks.monitor.report_html import BadInput, save_report
    from tasks.monitor.settings import CheckSettings

    proj = project(config)
    with failures():
        settings = CheckSettings.from_project(proj)
    frames = {}
    for role, path in (("reference", reference), ("current", current)):
        frames[role] = _read(role, path, as_json)
    result = run_checks(frames["reference"], frames["current"], proj, settings=settings)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        _render(result)
    if report is not None and result.usable:
        try:
            files = save_report(frames["reference"], frames["current"], proj, report)
        except BadInput as exc:
            err_console.print(f"[bold red]report not written:[/] {exc}", highlight=False)
        else:
            note = (
                f" (built from a sample of {files.current_rows} current rows)"
                if files.sampled
                else ""
            )
            err_console.print(f"report: {', '.join(map(str, files.paths))}{note}")
    elif report is not None:
        err_console.print("report not written: the input is unusable", highlight=False)
    raise typer.Exit(result.exit_code)


def _read(role: str, path: Path, as_json: bool):
    """The file as a frame, or exit 2 with one clear line (and a JSON verdict with --json)."""
    from model.frames import read_table

    problem = None
    if not path.is_file():
        problem = f"{role} file {path} does not exist"
    elif path.suffix not in (".csv", ".parquet"):
        problem = f"{role} file {path} is neither .csv nor .parquet"
    else:
        try:
            return read_table(path)
        except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
            problem = f"{role} file {path} cannot be read: {exc}"
    if as_json:
        typer.echo(json.dumps({"verdict": "unreadable", "bad_input": role, "message": problem}))
    err_console.print(f"[bold red]bad input:[/] {problem}", highlight=False)
    raise typer.Exit(EXIT_BAD_INPUT)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _render(result) -> None:
    """Verdict table, findings and quality on the terminal."""
    for check in (result.reference_validation, result.validation):
        if check is None:
            continue
        for finding in check.findings:
            style = {"error": "bold red", "warning": "yellow", "info": "dim"}[finding.severity]
            console.print(f"[{style}]{finding.verdict}[/]: {finding.message}", highlight=False)
    if result.columns:
        table = Table(title="drift per column")
        for name in ("column", "kind", "method", "score", "threshold", "verdict"):
            table.add_column(name, justify="right" if name in ("score", "threshold") else "left")
        for col in result.columns:
            if col.status != "tested":
                verdict = "[yellow]insufficient data[/]"
            else:
                verdict = "[bold red]drift[/]" if col.drifted else "[green]ok[/]"
            method = col.method or "-"
            if col.score_is_p_value:
                method += " (p)"
            table.add_row(
                col.column, col.kind, method, _fmt(col.score), _fmt(col.threshold), verdict
            )
        console.print(table)
    quality = result.quality
    if quality is not None:
        head = (
            f"model quality on {quality.labelled_rows} labelled rows "
            f"({quality.coverage:.0%} of the window)"
        )
        if quality.status != "ok":
            console.print(f"{head}: fewer than {quality.min_labels} labels, not computed")
        else:
            table = Table(title=head)
            for name in ("metric", "current", "reference", "note"):
                table.add_column(name)
            for m in quality.metrics:
                star = " *" if m.name == quality.primary else ""
                table.add_row(m.name + star, _fmt(m.current), _fmt(m.reference), m.note or "")
            console.print(table)
            if quality.limit_breached:
                console.print(
                    f"[bold red]{quality.primary} is worse than the limit {quality.limit}[/]"
                )
    style = {"drift": "bold red", "no_drift": "bold green"}.get(result.verdict, "bold red")
    console.print(f"[{style}]{result.verdict}[/]: {result.message}", highlight=False)
