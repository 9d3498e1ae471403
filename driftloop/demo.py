"""`driftloop demo`: the loop's story on the bundled bike-sharing data, step by step.

The first model learns winter. Later months are replayed through the real endpoint (nginx in
front of the bento) at an accelerated clock, labels arriving hours later; after each month the
`monitor` deployment checks that month on the Prefect worker, exactly as its schedule would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rich.table import Table

from config.loader import Project
from driftloop.console import console

# the replayed months, as (label in the data's `mnth` column, first day, first day of the next)
MONTHS = [
    ("April", datetime(2011, 4, 1, tzinfo=UTC), datetime(2011, 5, 1, tzinfo=UTC)),
    ("May", datetime(2011, 5, 1, tzinfo=UTC), datetime(2011, 6, 1, tzinfo=UTC)),
    ("June", datetime(2011, 6, 1, tzinfo=UTC), datetime(2011, 7, 1, tzinfo=UTC)),
]
SPEED = 3600 * 300  # 300 event-hours per wall second: a month in about 2.5 s
LABEL_DELAY = timedelta(hours=6)


@dataclass
class WindowRow:
    month: str
    rows: int
    drift_share: float | None
    quality: str
    served_by: str
    policy: str


def step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


def run_demo(project: Project, keep: bool = False) -> list[WindowRow]:
    from tasks import stack
    from tasks.data import ensure_data
    from tasks.package import build_bento, register_model
    from tasks.rollout import go_live
    from tasks.training import reproduce

    step("1. the local stack: Prefect, Pushgateway, Prometheus, Alertmanager, nginx")
    with console.status("driftloop up ...") as spinner:
        stack.up(project, progress=spinner.update)
    ep = project.config.endpoints
    console.print(
        f"Prefect UI {ep.prefect}   Prometheus {ep.prometheus}/alerts   "
        f"Alertmanager {ep.alertmanager}   reports {ep.reports}"
    )
    try:
        step("2. the first model learns winter: training data under DVC, `dvc repro`")
        state = ensure_data(project)
        console.print(f"{state.path}: {state.action} (DVC md5 {state.md5})")
        with console.status("dvc repro ..."):
            trained = reproduce(project)
        console.print(
            f"stages run: {', '.join(trained.stages_run) or 'none (up to date)'}; "
            "held-out " + ", ".join(f"{k}={v:.4g}" for k, v in trained.metrics.items())
        )

        step("3. bentoml build (exact model tag, lineage labels) and serve behind nginx")
        with console.status("bentoml build and serve ..."):
            bento = build_bento(project, register_model(project))
            release = go_live(project, bento)
        console.print(f"{bento.tag} serving at {release.url} from slot {release.slot}")

        step("4. spring arrives: months replayed through the endpoint, the monitor after each")
        rows = [replay_and_monitor(project, *month) for month in MONTHS]
        render_windows(rows)

        step("5. lineage of what is serving")
        from driftloop.cli import render_lineage
        from tasks.releases import read_serving

        render_lineage(read_serving(project))
        return rows
    finally:
        if keep:
            console.print("[yellow]--keep: the stack stays up; stop it with `driftloop down`[/]")
        else:
            stack.down(project)
            console.print("stack stopped")


def replay_and_monitor(project: Project, month: str, start: datetime, end: datetime) -> WindowRow:
    from tasks.releases import read_serving
    from tasks.traffic import load_traffic, replay

    serving = project.config.serving
    sample = load_traffic(project, query=f"mnth == '{month}'")
    with console.status(f"replaying {month}: {len(sample.records)} hours ..."):
        stats = replay(
            f"http://{serving.host}:{serving.port}",
            sample,
            sample.times,
            speed=SPEED,
            batch=8,
            label_delay=LABEL_DELAY,
            max_seconds=120,
        )
    console.print(
        f"{month}: {stats.sent} requests, {stats.failed} failed, {stats.labelled} labels posted"
    )
    with console.status(f"monitor deployment on {month} ..."):
        outcome, url = run_monitor_deployment(project, start, end)
    quality = _quality(project, outcome)
    console.print(
        f"  monitor: {outcome['verdict']}, drift share {outcome['drift_share']:.0%}, "
        f"{quality}; policy: {outcome['policy']}"
    )
    console.print(f"  run: {url}")
    if outcome["report"]:
        console.print(f"  report: {outcome['report'][0]}")
    if outcome["retrain_triggered"] and outcome["retrain_run"] is None:
        console.print(
            "  [yellow]the policy triggered a retrain; the retrain flow is the next "
            "part of driftloop to arrive[/]"
        )
    release = read_serving(project)
    return WindowRow(
        month,
        outcome["rows"],
        outcome["drift_share"],
        quality,
        release.bento if release else "-",
        outcome["policy"],
    )


def run_monitor_deployment(project: Project, start: datetime, end: datetime) -> tuple[dict, str]:
    """One run of the `monitor` deployment on the worker; its return value and UI link."""
    from prefect.deployments import run_deployment

    from tasks.commands import CommandError

    run = run_deployment(
        "monitor/monitor",
        parameters={"start": start.isoformat(), "end": end.isoformat()},
        timeout=300,
    )
    url = f"{project.config.endpoints.prefect}/runs/flow-run/{run.id}"
    if not run.state or not run.state.is_completed():
        raise CommandError(f"monitor run ended {run.state_name}: see {url}")
    return run.state.result(), url


def _quality(project: Project, outcome: dict) -> str:
    metric = project.config.primary_metric
    value = outcome["quality"].get(metric)
    return f"{metric} {value:.4g}" if value is not None else f"{metric} - (too few labels)"


def render_windows(rows: list[WindowRow]) -> None:
    table = Table(
        "window",
        "rows",
        "drift share",
        "quality",
        "served by",
        "policy",
        title="what the monitor saw",
    )
    for r in rows:
        share = "-" if r.drift_share is None else f"{r.drift_share:.0%}"
        table.add_row(r.month, str(r.rows), share, r.quality, r.served_by, r.policy)
    console.print(table)
