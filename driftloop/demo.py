"""`driftloop demo`: the loop's story on the bundled bike-sharing data, step by step.

The first model learns winter. Later months are replayed through the real endpoint (nginx in
front of the bento) at an accelerated clock, labels arriving hours later; after each month the
`monitor` deployment checks that month on the Prefect worker, exactly as its schedule would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rich import box
from rich.console import Console
from rich.table import Table

from config.loader import Project
from driftloop.console import console
from driftloop.lineage_view import render_lineage

# the replayed months, as (label in the data's `mnth` column, first day, first day of the next)
MONTHS = [
    ("April", datetime(2011, 4, 1, tzinfo=UTC), datetime(2011, 5, 1, tzinfo=UTC)),
    ("May", datetime(2011, 5, 1, tzinfo=UTC), datetime(2011, 6, 1, tzinfo=UTC)),
]
# replayed while the approved candidate rolls forward, then after it
DURING = ("June", datetime(2011, 6, 1, tzinfo=UTC), datetime(2011, 7, 1, tzinfo=UTC))
AFTER = ("July", datetime(2011, 7, 1, tzinfo=UTC), datetime(2011, 8, 1, tzinfo=UTC))
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
    estimated: str = "-"


def step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


def run_demo(
    project: Project, keep: bool = False, approve_as: str | None = None
) -> list[WindowRow]:
    from getpass import getuser

    from tasks.data import ensure_data
    from tasks.release.package import build_bento, register_model
    from tasks.release.releases import read_serving
    from tasks.release.rollout import go_live
    from tasks.retrain.training import reproduce
    from tasks.stack import lifecycle
    from tasks.stack.paths import prefect_auth_file

    step("1. the local stack: Prefect, Pushgateway, Prometheus, Alertmanager, nginx")
    with console.status("driftloop up ...") as spinner:
        lifecycle.up(project, progress=spinner.update)
    ep = project.config.endpoints
    console.print(
        f"Prefect UI {ep.prefect}   Prometheus {ep.prometheus}/alerts   "
        f"Alertmanager {ep.alertmanager}   reports {ep.reports}"
    )
    console.print(
        f"the Prefect UI asks for the auth string in {prefect_auth_file(project)}",
        highlight=False,
    )
    try:
        step("2. the first model learns winter: training data under DVC, `dvc repro`")
        reset_story(project)
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
            release = go_live(project, bento, action="release", released_by=getuser())
        console.print(f"{bento.tag} serving at {release.url} from slot {release.slot}")

        step("4. spring arrives: months replayed through the endpoint, the monitor after each")
        rows = [replay_and_monitor(project, *month) for month in MONTHS]

        step("5. the policy's retrain: training set, dvc repro, gate, approval request")
        request = wait_for_request(project)
        if request is not None:
            decide_request(project, request, approve_as)
            step("6. roll-forward under live traffic, then the month after")
            before = read_serving(project)
            rows.append(replay_during_release(project, request.run_id, *DURING))
            rows.append(replay_and_monitor(project, *AFTER))
            compare_on_window(project, before, read_serving(project), *AFTER)
        render_windows(rows)

        step("7. lineage of what is serving")
        render_lineage(read_serving(project))
        return rows
    finally:
        if keep:
            console.print("[yellow]--keep: the stack stays up; stop it with `driftloop down`[/]")
        else:
            lifecycle.down(project)
            console.print("stack stopped")


def reset_story(project: Project) -> None:
    """Every demo tells the story from the start: the winter training data (from data.source)
    and no captured traffic, monitor history or open Slack thread left by an earlier run."""
    import shutil

    from tasks.capture import capture_store
    from tasks.data import create_from_source
    from tasks.monitor.history import history_dir

    store = capture_store(project)  # a directory or an s3:// prefix
    store.fs.delete_dir_contents(store.root, missing_dir_ok=True)
    shutil.rmtree(history_dir(project), ignore_errors=True)
    (project.state_dir / "slack_threads.json").unlink(missing_ok=True)
    if project.config.data.source is not None:
        create_from_source(project)  # the same bytes as the committed winter data rev


def replay_and_monitor(project: Project, month: str, start: datetime, end: datetime) -> WindowRow:
    from tasks.release.releases import read_serving
    from tasks.release.traffic import load_traffic, replay

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
    console.print(f"  {_estimate_line(project, outcome)}")
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
        _estimate_cell(project, outcome),
    )


def wait_for_request(project: Project, timeout: float = 600):
    """The retrain the policy started, once it asks for a decision (None if the gate said no)."""
    import time

    from tasks.approval.pending import pending_requests
    from tasks.retrain.trigger import open_retrain

    deadline = time.monotonic() + timeout
    with console.status("retrain running: new training set, dvc repro, gate ..."):
        while time.monotonic() < deadline:
            pending = pending_requests(project)
            if pending:
                break
            if open_retrain(project) is None:
                console.print("[yellow]no approval asked: see the retrain run for the gate[/]")
                return None
            time.sleep(2)
        else:
            raise TimeoutError(f"no approval request within {timeout:.0f} s")
    request = pending[0]
    ev = request.evidence
    console.print(f"candidate {ev.candidate} on data rev {ev.data_rev[:12]}: {ev.reason}")
    for row in ev.gate:
        console.print(
            f"  gate {row.metric}: champion {row.champion:.4g} -> candidate "
            f"{row.candidate:.4g} ({'pass' if row.passed else 'FAIL'})"
        )
    return request


def decide_request(project: Project, request, approve_as: str | None) -> None:
    """Through the same decision record as Slack, the UI and `driftloop approve`."""
    import time

    from tasks.approval.pending import pending_requests
    from tasks.approval.submit import submit_decision

    console.print(f"approval request: {request.url}")
    if approve_as is None:
        console.print(
            "decide with one of: the Approve button in Slack, the Resume form at the "
            f"link above (evidence hash {request.evidence_hash}), or "
            f"`driftloop approve {request.run_id} --evidence {request.evidence_hash}` "
            "in another terminal"
        )
        with console.status("waiting for a decision ..."):
            while any(p.run_id == request.run_id for p in pending_requests(project)):
                time.sleep(2)
        return
    result = submit_decision(
        project,
        request.run_id,
        "approve",
        approve_as,
        "cli",
        comment="approved in `driftloop demo --approve`",
        evidence_hash=request.evidence_hash,
    )
    console.print(f"decision: {result.message}")


def replay_during_release(project: Project, run_id: str, month: str, start, end) -> WindowRow:
    """Replay a month while the approved candidate rolls forward; every request must succeed."""
    import threading
    import time

    from prefect import get_client

    from tasks.release.releases import read_serving
    from tasks.release.traffic import load_traffic, replay

    serving = project.config.serving
    sample = load_traffic(project, query=f"mnth == '{month}'")
    stats = {}

    def send() -> None:
        stats["s"] = replay(
            f"http://{serving.host}:{serving.port}",
            sample,
            sample.times,
            speed=3600 * 15,
            batch=4,
            label_delay=LABEL_DELAY,
            max_seconds=120,
        )

    before = read_serving(project)
    sender = threading.Thread(target=send)
    sender.start()
    with console.status(f"{month} replaying while the candidate rolls forward ..."):
        with get_client(sync_client=True) as client:
            while not client.read_flow_run(run_id).state.is_final():
                time.sleep(2)
        sender.join()
    after = read_serving(project)
    sent = stats["s"]
    console.print(
        f"{month}: {sent.sent} requests during the roll-forward, {sent.failed} failed; "
        f"{before.bento if before else '-'} -> {after.bento if after else '-'}"
    )
    with console.status(f"monitor deployment on {month} ..."):
        outcome, url = run_monitor_deployment(project, start, end)
    console.print(f"  monitor: {outcome['verdict']}, {_quality(project, outcome)}; run: {url}")
    console.print(f"  {_estimate_line(project, outcome)}")
    return WindowRow(
        month,
        outcome["rows"],
        outcome["drift_share"],
        _quality(project, outcome),
        f"{before.bento} -> {after.bento}",
        outcome["policy"],
        _estimate_cell(project, outcome),
    )


def compare_on_window(project: Project, old, new, month: str, start, end) -> None:
    """Both models on the same labelled month: the honest "did the error fall" (months differ
    in scale, so one model's error across months says little)."""
    import os

    from model.evaluate import evaluate
    from tasks.capture import read_window
    from tasks.release.package import bentoml_home

    if old is None or new is None or old.model_tag == new.model_tag:
        return
    os.environ.setdefault("BENTOML_HOME", str(bentoml_home(project)))
    import bentoml

    frame = read_window(project, start, end).frame
    labelled = frame[frame["label"].notna()].rename(columns={"label": project.config.data.target})
    metric = project.config.primary_metric
    scores = {
        tag: evaluate(project, bentoml.sklearn.load_model(tag), labelled)[metric]
        for tag in (old.model_tag, new.model_tag)
    }
    console.print(
        f"{month}, {len(labelled)} labelled rows: {metric} {scores[old.model_tag]:.4g} with the "
        f"previous model, {scores[new.model_tag]:.4g} with the approved one"
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


def _estimate_line(project: Project, outcome: dict) -> str:
    """E.g. 'estimated rmse 91.2 (90% band 80.4 to 102.0) before the labels; realised 95.1'."""
    metric = project.config.primary_metric
    e = (outcome.get("estimated") or {}).get(metric)
    if e is None:
        return f"estimated {metric}: - (no estimator for this model)"
    realised = "-" if e["realised"] is None else f"{e['realised']:.4g}"
    return (
        f"estimated {metric} {e['value']:.4g} ({e['confidence']:.0%} band {e['lower']:.4g} to "
        f"{e['upper']:.4g}) before the labels; realised {realised}"
    )


def _estimate_cell(project: Project, outcome: dict) -> str:
    """The estimate and the widest side of its band, e.g. '91.2±21'."""
    e = (outcome.get("estimated") or {}).get(project.config.primary_metric)
    if e is None:
        return "-"
    half = max(e["upper"] - e["value"], e["value"] - e["lower"])
    return f"{e['value']:.3g}±{half:.2g}"


def render_windows(rows: list[WindowRow], out: Console = console) -> None:
    """Fits 80 columns: bentos show by their model's short version, the full tags below; the
    estimate (made before the labels) stands beside the quality the labels gave."""
    table = Table(
        "window",
        "rows",
        "drift",
        "quality",
        "estimate",
        "served by",
        "policy",
        title="what the monitor saw",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    legend: dict[str, str] = {}
    for r in rows:
        share = "-" if r.drift_share is None else f"{r.drift_share:.0%}"
        policy = r.policy.split(":")[0].split(";")[0].split(" (")[0]
        served = _served(r, legend)
        table.add_row(r.month, str(r.rows), share, r.quality, r.estimated, served, policy)
    out.print(table)
    for short, tag in legend.items():
        out.print(f"  {short}: {tag}", highlight=False, soft_wrap=True)


def _served(row: WindowRow, legend: dict[str, str]) -> str:
    """'ab12cd34 -> ef56gh78' for the row; each full tag goes into `legend`."""
    shorts = []
    for tag in row.served_by.split(" -> "):
        if tag not in ("", "-"):
            legend[short_tag(tag)] = tag
            shorts.append(short_tag(tag))
    return " -> ".join(shorts) or "-"


def short_tag(tag: str) -> str:
    """'bikeshare:20261202-141233-ab12cd34' -> 'ab12cd34': a bento version ends with the
    version of the model it serves (tasks.release.package.release_version)."""
    version = tag.split(":", 1)[-1]
    return version.rsplit("-", 1)[-1] or version
