"""The `driftloop` command: a thin front door that parses input, calls tasks and renders results.

The commands here and in the other `driftloop/*_cmd.py` modules import tasks and flows inside
their bodies, on purpose: Prefect reads its settings once, at import, so nothing may import it
before `console.project` has pointed this process at the stack's server (`console.use_prefect`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from driftloop.approve_cmd import approve, pending, reject
from driftloop.check_cmd import check
from driftloop.console import ConfigOption, console, failures, project
from driftloop.demo import run_demo
from driftloop.lineage_view import lineage_chain, render_lineage
from driftloop.preflight import require
from driftloop.release_cmd import promote as promote_candidate
from driftloop.release_cmd import release, serve
from driftloop.slack_app import slack

app = typer.Typer(
    help="driftloop: watch a served model for drift, retrain, approve, roll forward.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Validate the config (and its columns against the data) and print what it resolves to."""
    from config.loader import check_columns

    proj = project(config)
    with failures():
        check_columns(proj)
        numeric, categorical = proj.features
    cfg = proj.config
    table = Table(title=f"{proj.path}", show_header=False)
    table.add_row("model", cfg.project.name)
    table.add_row("data", f"{cfg.data.path} (target {cfg.data.target!r}, {cfg.data.task})")
    inferred = " (inferred)" if cfg.data.numeric is None else ""
    table.add_row("numeric features" + inferred, ", ".join(numeric) or "-")
    table.add_row("categorical features" + inferred, ", ".join(categorical) or "-")
    table.add_row("estimator", f"{cfg.train.estimator} {cfg.train.params}")
    table.add_row("metrics", f"{', '.join(cfg.metric_names)} (primary {cfg.primary_metric})")
    console.print(table)
    console.print("[green]config OK[/]")


@app.command("data")
def data(config: ConfigOption = None) -> None:
    """Make the training data present and pushed: `dvc pull` it, or create it from data.source."""
    from tasks.data import ensure_data

    proj = project(config)
    with failures():
        state = ensure_data(proj)
    console.print(f"data {state.path}: {state.action}, DVC md5 {state.md5}")


@app.command("train")
def train(config: ConfigOption = None) -> None:
    """Run `dvc repro` (prepare -> train -> evaluate), the same pipeline a person runs by hand."""
    from tasks.retrain.training import reproduce

    proj = project(config)
    with failures(), console.status("dvc repro ..."):
        result = reproduce(proj)
    console.print(f"stages run: {', '.join(result.stages_run) or 'none (up to date)'}")
    console.print("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))


@app.command("build")
def build(config: ConfigOption = None) -> None:
    """Save the trained model to BentoML's store and build a bento pinned to its exact tag."""
    from tasks.release.package import build_bento, register_model

    proj = project(config)
    with failures(), console.status("bentoml build ..."):
        bento = build_bento(proj, register_model(proj))
    console.print(f"built [bold]{bento.tag}[/] serving model {bento.model_tag}")
    for key, value in bento.labels.items():
        console.print(f"  {key} = {value}")


@app.command("lineage")
def lineage(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: ConfigOption = None,
) -> None:
    """What is serving and where it came from: bento -> model -> data rev -> commit."""
    from tasks.release.releases import read_serving

    proj = project(config)
    release = read_serving(proj)
    if release is None:
        console.print("nothing is serving (no release recorded)")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps({**release.model_dump(), "lineage": lineage_chain(release)}, indent=2))
        return
    render_lineage(release)


@app.command("rollback")
def rollback(config: ConfigOption = None) -> None:
    """Return to the release that served before this one, through the same checks.

    Ready, smoke test, switch, watch, as a roll-forward; on failure the current one keeps
    serving. Recorded as a rollback by your OS user."""
    import getpass

    from tasks.release.rollout import rollback as roll_back

    proj = project(config)
    with failures(), console.status("rolling back ...") as status:
        release = roll_back(proj, released_by=getpass.getuser(), progress=status.update)
    console.print(f"[bold]{release.bento}[/] serving again (model {release.model_tag})")


@app.command("monitor")
def monitor(
    start: Annotated[
        datetime | None, typer.Option(help="Window start, UTC (default: end - interval).")
    ] = None,
    end: Annotated[datetime | None, typer.Option(help="Window end, UTC (default: now).")] = None,
    report: Annotated[
        bool, typer.Option(help="Write the HTML report even if all is well.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run the monitor flow now on a window of captured traffic (the scheduled run, on demand)."""
    proj = project(config)
    require(proj, "prefect", "pushgateway")
    from flows.monitor import monitor as monitor_flow

    with failures():
        outcome = monitor_flow(
            start=_utc(start),
            end=_utc(end),
            report=report,
            config=str(proj.path),
        )
    console.print_json(data=outcome)
    raise typer.Exit(1 if outcome["dataset_drift"] or outcome["quality_breached"] else 0)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@app.command("replay")
def replay(
    file: Annotated[
        Path | None, typer.Argument(help="csv/parquet of feature rows (default: data.source).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Endpoint (default: serving.host:serving.port).")
    ] = None,
    query: Annotated[str | None, typer.Option(help="pandas query selecting rows.")] = None,
    speed: Annotated[
        float, typer.Option(help="Event seconds per wall second (3600: an hour a second).")
    ] = 3600,
    batch: Annotated[int, typer.Option(min=1, help="Records per request.")] = 1,
    label_delay_hours: Annotated[
        float | None, typer.Option(help="Post labels this many event-hours later.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
    max_seconds: Annotated[float, typer.Option(help="Stop after this much wall time.")] = 600,
    config: ConfigOption = None,
) -> None:
    """Send rows through the real HTTP endpoint in event-time order, labels following later.

    Rows without a timestamp column are stamped with the time they are sent."""
    from datetime import timedelta

    from tasks.release.traffic import load_traffic
    from tasks.release.traffic import replay as send

    proj = project(config)
    require(proj, "serving", url=url)
    serving = proj.config.serving
    url = url or f"http://{serving.host}:{serving.port}"
    with failures():
        sample = load_traffic(proj, file, query=query, limit=limit)
    if not sample.records:
        console.print("no rows to replay (check --query)")
        raise typer.Exit(2)
    times = sample.times  # None: stamped as they are sent, so the replay ends at now
    delay = None if label_delay_hours is None else timedelta(hours=label_delay_hours)
    if delay is not None and not sample.targets:
        console.print("no target column in the file: labels cannot follow")
        raise typer.Exit(2)
    with console.status(f"replaying {len(sample.records)} rows to {url} ...") as spinner:
        stats = send(
            url,
            sample,
            times,
            speed=speed,
            batch=batch,
            label_delay=delay,
            max_seconds=max_seconds,
            on_batch=lambda st: spinner.update(
                f"sent {st.sent}, failed {st.failed}, labels {st.labelled}"
            ),
        )
    console.print(f"sent {stats.sent} rows, {stats.failed} failed, {stats.labelled} labels posted")
    if stats.labels_not_due:
        console.print(
            f"{stats.labels_not_due} labels were not yet due when the replay ended "
            "(--label-delay-hours 0 posts each label right after its prediction)"
        )
    for error in stats.errors[:5]:
        console.print(f"  [red]{error}[/]")
    if stats.failed:
        raise typer.Exit(1)


app.command("release")(release)
app.command("promote")(promote_candidate)
app.command("serve")(serve)
app.command("check")(check)
app.command("approve")(approve)
app.command("reject")(reject)
app.command("pending")(pending)
app.command("slack")(slack)


@app.command("retrain")
def retrain(
    reason: Annotated[str, typer.Option(help="Why: shown in the approval request.")] = "manual",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would run; change nothing.")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish.")] = False,
    config: ConfigOption = None,
) -> None:
    """Start the `retrain` deployment (one at a time per model), or show what it would do."""
    proj = project(config)
    require(proj, "prefect")
    from tasks.retrain.plan import plan_retrain  # imports Prefect: only after project()

    with failures():
        plan = plan_retrain(proj, reason)
    for line in plan.lines:
        console.print(line)
    if dry_run:
        console.print("[yellow]--dry-run: nothing was started or changed[/]")
        return
    if plan.blocked_by:
        console.print(f"[red]refused:[/] a retrain is already open: {plan.blocked_by}")
        raise typer.Exit(1)
    from tasks.retrain.trigger import start_retrain

    # the same one-run-at-a-time start as the policy's, so racing triggers get one run
    run_id = start_retrain.fn(proj, reason, None, source="cli")
    if run_id is None:
        console.print("[red]failed:[/] the `retrain` deployment is not registered; `driftloop up`")
        raise typer.Exit(1)
    console.print(f"retrain run: {proj.config.endpoints.prefect}/runs/flow-run/{run_id}")
    if wait:
        state = wait_for_run(run_id)
        console.print(f"retrain run ended {state.name}: {state.message or ''}")
        if not state.is_completed():
            raise typer.Exit(1)


def wait_for_run(run_id: str):
    import time

    from prefect import get_client

    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(run_id).state).is_final():
            time.sleep(2)
    return state


@app.command("propose")
def propose(
    reason: Annotated[str, typer.Option(help="Why: shown in the approval request.")] = "by hand",
    config: ConfigOption = None,
) -> None:
    """Start a retrain by hand: training set, `dvc repro`, gate and approval, as the policy's."""
    retrain(reason=reason, dry_run=False, wait=False, config=config)


@app.command("render")
def render(config: ConfigOption = None) -> None:
    """Re-render deployments/ (rules, rule tests, Alertmanager, Grafana, compose) from config."""
    from tasks.render.deployments import write_deployments

    proj = project(config)
    with failures():
        written = write_deployments(proj, proj.root / "deployments")
    for path in written:
        console.print(f"wrote {path.relative_to(proj.root)}")


@app.command("up")
def up(config: ConfigOption = None) -> None:
    """Start the local stack (Prefect, Pushgateway, Prometheus, Alertmanager, nginx); idempotent."""
    from tasks.stack import lifecycle
    from tasks.stack.paths import log_dir

    proj = project(config)
    with failures(), console.status("starting the stack ...") as spinner:
        rows = lifecycle.up(proj, progress=lambda text: spinner.update(text))
    render_status(rows)
    console.print(f"logs: {log_dir(proj)}   stop with: driftloop down")


@app.command("down")
def down(config: ConfigOption = None) -> None:
    """Stop everything `driftloop up` started, and nothing else."""
    from tasks.stack import lifecycle

    proj = project(config)
    with failures():
        stopped = lifecycle.down(proj)
    console.print("stack stopped" if stopped else "stack was not running")


@app.command("status")
def status(config: ConfigOption = None) -> None:
    """A table of the stack's services: URL, state, pid, uptime, health."""
    from tasks.stack import lifecycle

    proj = project(config)
    rows = lifecycle.status(proj)
    render_status(rows)
    if not all(row.healthy for row in rows):
        raise typer.Exit(3)


def render_status(rows, out: Console = console) -> None:
    """Fits 80 columns: the table names each service's host:port, and a link with a path (the
    worker's page in the Prefect UI) follows in full below it."""
    table = Table(
        "service",
        "address",
        "state",
        "pid",
        "uptime",
        "health",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for row in rows:
        colour = "green" if row.healthy else "red"
        table.add_row(
            row.name,
            urlsplit(row.url).netloc or row.url,
            f"[{colour}]{row.state}[/]",
            str(row.pid or "-"),
            row.uptime or "-",
            f"[{colour}]{'ok' if row.healthy else 'down'}[/]",
        )
    out.print(table)
    for row in rows:
        if urlsplit(row.url).path.strip("/"):
            out.print(f"{row.name}: {row.url}", highlight=False, soft_wrap=True)


@app.command("demo")
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the stack running at the end.")] = False,
    approve: Annotated[
        bool,
        typer.Option(
            "--approve", help="Approve the retrain as your OS user (the CLI's decision path)."
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run the whole loop on the bundled bike-sharing data.

    Waits for a real approval unless --approve is given."""
    import getpass

    proj = project(config)
    with failures():
        run_demo(proj, keep=keep, approve_as=getpass.getuser() if approve else None)


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"driftloop {version('driftloop')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True)
    ] = False,
) -> None:
    """driftloop keeps a model in production honest."""


if __name__ == "__main__":  # pragma: no cover
    app()
