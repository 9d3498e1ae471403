"""The monitor flow: what the served model sees, against what it was trained on."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from config.loader import Project, load_project
from flows.policy import WindowOutcome, decide
from tasks.capture import read_current
from tasks.data import read_reference
from tasks.metrics import MonitorMetrics, push_metrics
from tasks.monitor.checks import check_window
from tasks.monitor.history import (
    MonitorRecord,
    last_trigger,
    recent_windows,
    record_trigger,
    save_record,
)
from tasks.monitor.reports import publish_artifacts, write_report
from tasks.notify import close_thread, current_thread, monitor_headline, monitor_notice, send_notice
from tasks.release.package import read_model
from tasks.release.releases import read_serving
from tasks.retrain.trigger import open_retrain, start_retrain


class NothingServing(RuntimeError):
    """The monitor compares traffic with the serving model's data; there is none."""


@flow(name="monitor", log_prints=True, persist_result=True)
def monitor(
    start: datetime | None = None,
    end: datetime | None = None,
    report: bool = False,
    config: str | None = None,
) -> dict:
    """Check a window of captured traffic against the serving model's training data."""
    logger = get_run_logger()
    began = time.perf_counter()
    project = load_project(config)
    end = end or datetime.now(UTC)
    start = start or end - timedelta(seconds=project.config.monitor.interval_seconds)
    window_text = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"

    # 1. reference: the training data of the serving model, at its data rev, and the model's
    # classes and held-out metrics (stored with it at registration)
    serving = read_serving(project)
    if serving is None:
        raise NothingServing("no release is serving; roll one out first (`driftloop demo`)")
    labels = serving.labels
    reference = read_reference(project, labels["data_rev"], labels.get("git_commit"))
    model = read_model(project, serving.model_tag)

    # 2. current: the captured window with the labels that have arrived
    window = read_current(project, start, end)

    # 3-4. validate and check (bad data is a named verdict inside the result)
    result = check_window(
        reference, window.frame, project, classes=model.classes, held_out=model.held_out
    )
    usable = result.bad_input is None
    breached = bool(result.quality and result.quality.limit_breached)
    wrong = not usable or result.dataset_drift or breached or result.verdict != "no_drift"
    logger.info("%s: %s", window_text, result.message)

    # 6a. the report, only when something is wrong or asked for
    report_urls: list[str] = []
    if (wrong or report) and usable:
        report_urls = write_report(
            project, reference.frame, window.frame, _report_name(project), result.quality
        )

    # save before publishing: a failed push must not lose the result
    run_id = str(flow_run.id or f"local-{int(time.time())}")
    save_record(
        project,
        MonitorRecord(
            run_id=run_id,
            model=project.config.project.name,
            window_start=start.isoformat(),
            window_end=end.isoformat(),
            serving_bento=serving.bento,
            data_rev=reference.data_rev,
            verdict=result.verdict,
            rows=window.rows,
            label_coverage=window.label_coverage,
            dataset_drift=result.dataset_drift,
            quality_breached=breached,
            usable=usable,
            report_url=report_urls[0] if report_urls else None,
            finished_at=datetime.now(UTC).isoformat(),
            result=result.model_dump(mode="json"),
        ),
    )

    # 5. publish (retried inside the task; a failure is raised after notifying)
    published = push_metrics(
        project, _metrics(result, window, time.perf_counter() - began), return_state=True
    )

    # 6b. notify: artifacts always, Slack when something is wrong (one thread per cycle)
    headline = monitor_headline(project, result)
    publish_artifacts(project, result, headline, window_text, report_urls)
    links = _links(project, report_urls)
    if wrong:
        notice = monitor_notice(project, result, window_text, serving.bento, links)
        send_notice(project, notice, new_cycle_reason=headline)
    elif current_thread(project) is not None:
        send_notice(
            project,
            monitor_notice(project, result, window_text, serving.bento, links),
            new_cycle_reason=None,
        )
        close_thread(project)  # the model is healthy again: the cycle ends

    # 7. decide: the retrain policy
    trigger = _decide(project)
    logger.info("policy: %s", trigger.reason)
    retrain_run = None
    if trigger.fire:
        retrain_run = start_retrain(project, trigger.reason, _evidence(result, window_text))
        record_trigger(project, trigger.reason, retrain_run)
        if retrain_run is None:
            logger.warning("retrain triggered but the `retrain` deployment is not registered")

    published.result()  # raises when the Pushgateway stayed down: the run fails loudly
    return {
        "verdict": result.verdict,
        "dataset_drift": result.dataset_drift,
        "drift_share": result.drift_share,
        "quality_breached": breached,
        "rows": window.rows,
        "label_coverage": window.label_coverage,
        "retrain_triggered": trigger.fire,
        "retrain_run": retrain_run,
        "policy": trigger.reason,
        "report": report_urls,
        "quality": _quality_values(result),
    }


def _quality_values(result) -> dict[str, float]:
    quality = result.quality
    if quality is None or quality.status != "ok":
        return {}
    return {m.name: m.current for m in quality.metrics if m.current is not None}


def _decide(project: Project):
    policy = project.config.policy
    history = [
        WindowOutcome(r["dataset_drift"], r["quality_breached"], r["usable"])
        for r in recent_windows(project, 10 * policy.consecutive_windows)
    ]
    return decide(
        policy,
        history,
        datetime.now(UTC),
        last_trigger=last_trigger(project),
        open_request=open_retrain(project),
    )


def _metrics(result, window, duration: float) -> MonitorMetrics:
    quality = result.quality
    return MonitorMetrics(
        verdict=result.window_verdict,
        rows=window.rows,
        label_coverage=window.label_coverage,
        duration_seconds=duration,
        drift_share=None if result.bad_input else result.drift_share,
        dataset_drift=None if result.bad_input else result.dataset_drift,
        columns=tuple(
            (c.column, c.method or "none", c.score, c.threshold, c.drifted) for c in result.columns
        ),
        quality=tuple(
            (m.name, m.current)
            for m in (quality.metrics if quality and quality.status == "ok" else [])
            if m.current is not None
        ),
        quality_reference=tuple(
            (m.name, m.reference)
            for m in (quality.metrics if quality and quality.reference_source == "held_out" else [])
            if m.reference is not None
        ),
    )


def _evidence(result, window_text: str) -> dict:
    return {
        "window": window_text,
        "message": result.message,
        "drift_share": result.drift_share,
        "drifted": [
            {"column": c.column, "method": c.method, "score": c.score, "threshold": c.threshold}
            for c in result.columns
            if c.drifted
        ],
        "quality": [
            {"metric": m.name, "current": m.current, "reference": m.reference}
            for m in (result.quality.metrics if result.quality else [])
        ],
    }


def _links(project: Project, report_urls: list[str]) -> dict[str, str]:
    links = {}
    if report_urls:
        links["Evidently report"] = report_urls[0]
    run_url = flow_run.ui_url if flow_run.id else None
    if run_url:
        links["Prefect run"] = run_url
    links["Alerts"] = f"{project.config.endpoints.prometheus}/alerts"
    return links


def _report_name(project: Project) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{project.config.project.name}-{stamp}"
