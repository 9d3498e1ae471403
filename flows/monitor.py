"""The monitor flow: what the served model sees, against what it was trained on."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from config.loader import load_project
from tasks.capture import capture_store, read_current
from tasks.compaction import compact_capture
from tasks.metrics import push_metrics
from tasks.monitor.checks import check_window
from tasks.monitor.estimation import estimate_window
from tasks.monitor.history import record_trigger, save_record
from tasks.monitor.outcome import (
    assess,
    estimated_values,
    monitor_links,
    monitor_metrics,
    monitor_record,
    quality_values,
    report_name,
    window_evidence,
    window_text,
)
from tasks.monitor.reference import read_reference
from tasks.monitor.reports import publish_artifacts, write_report
from tasks.monitor.settle import settle_estimates
from tasks.monitor.versions import compare_versions
from tasks.monitor.window_change import find_previous_window, save_profile
from tasks.notify import close_thread, current_thread, monitor_headline, monitor_notice, send_notice
from tasks.release.package import load_estimator, read_model
from tasks.release.releases import read_serving
from tasks.retrain.policy import decide_retrain
from tasks.retrain.trigger import start_retrain


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
    when = window_text(start, end)

    # 1. reference: the training data of the serving model, at its data rev, and the model's
    # classes and held-out metrics (stored with it at registration)
    serving = read_serving(project)
    if serving is None:
        raise NothingServing("no release is serving; roll one out first (`driftloop demo`)")
    labels = serving.labels
    reference = read_reference(project, labels["data_rev"], labels.get("git_commit"))
    model = read_model(project, serving.model_tag)

    # 2. current: the captured window with the labels that have arrived, its quiet hours'
    # flush files compacted first (a failed compaction only leaves the read slower)
    compacted = compact_capture(
        capture_store(project), project.config.capture.compact_after_seconds, return_state=True
    )
    if compacted.is_failed():
        logger.warning("capture compaction failed, the window is read as it is: %s", compacted)
    window = read_current(project, start, end)

    # 3-4. validate and check (bad data is a named verdict inside the result), against the
    # reference and against the previous usable window
    previous = find_previous_window(project)
    result = check_window(
        reference,
        window.frame,
        project,
        classes=model.classes,
        held_out=model.held_out,
        previous=previous.profile if previous else None,
        previous_run=(previous.run_id, previous.window) if previous else None,
    )
    # the quality estimated from the model's own outputs, the realised value beside it where
    # labels arrived (the estimator is stored with the serving model; none: no estimate)
    if result.usable and project.config.estimate.enabled:
        estimator = load_estimator(project, serving.model_tag)
        result.estimated = estimate_window(
            window.frame, project, estimator, classes=model.classes, quality=result.quality
        )
    # earlier windows whose labels arrived since: their estimates beside the realised values
    settled = None
    if project.config.estimate.enabled:
        settled = settle_estimates(project, start, classes=model.classes)
    seen = assess(result)
    logger.info("%s: %s", when, result.message)

    # 6a. the report, only when something is wrong or asked for
    report_urls: list[str] = []
    if (seen.wrong or report) and seen.usable:
        report_urls = write_report(
            project,
            reference.frame,
            window.frame,
            report_name(project),
            result.quality,
            sample=window.sample_note,
            estimated=result.estimated,
            change=result.change,
        )

    # save before publishing: a failed push must not lose the result
    run_id = str(flow_run.id or f"local-{int(time.time())}")
    record = monitor_record(
        project,
        run_id,
        start,
        end,
        serving.bento,
        reference.data_rev,
        result,
        window,
        seen,
        report_urls,
    )
    save_record(project, record)
    save_profile(project, run_id, result)

    # 5. publish (retried inside the task; a failure is raised after notifying)
    # each serving version's predictions against the stable one's (the Argo canary reads it)
    versions = compare_versions(project, window.frame, serving.bento) if seen.usable else ()
    metrics = monitor_metrics(result, window, time.perf_counter() - began, settled, versions)
    published = push_metrics(project, metrics, return_state=True)

    # 6b. notify: artifacts always, Slack when something is wrong (one thread per cycle)
    headline = monitor_headline(project, result)
    publish_artifacts(
        project, result, headline, when, report_urls, sample=window.sample_note, settled=settled
    )
    links = monitor_links(project, report_urls, flow_run.ui_url if flow_run.id else None)
    if seen.wrong or current_thread(project) is not None:
        notice = monitor_notice(
            project, result, when, serving.bento, links, sample=window.sample_note
        )
        send_notice(project, notice, new_cycle_reason=headline if seen.wrong else None)
        if not seen.wrong:
            close_thread(project)  # the model is healthy again: the cycle ends

    # 7. decide: the retrain policy
    trigger = decide_retrain(project)
    logger.info("policy: %s", trigger.reason)
    retrain_run = None
    if trigger.fire:
        retrain_run = start_retrain(project, trigger.reason, window_evidence(result, when))
        record_trigger(project, trigger.reason, retrain_run)
        if retrain_run is None:
            logger.warning("retrain triggered but the `retrain` deployment is not registered")

    published.result()  # raises when the Pushgateway stayed down: the run fails loudly
    return {
        "verdict": result.verdict,
        "dataset_drift": result.dataset_drift,
        "drift_share": result.drift_share,
        "quality_breached": seen.quality_breached,
        "rows": window.rows,
        "rows_total": window.total,
        "sampled": window.sampled,
        "label_coverage": window.label_coverage,
        "retrain_triggered": trigger.fire,
        "retrain_run": retrain_run,
        "policy": trigger.reason,
        "report": report_urls,
        "quality": quality_values(result),
        "estimated": estimated_values(result),
        "change": result.change.verdict if result.change else None,
        "estimated_breached": seen.estimated_breached,
        "settled": [s.run_id for s in settled.settled_now] if settled else [],
    }
