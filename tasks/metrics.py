"""Publishing to the Prometheus Pushgateway, grouped per model (names in docs/metrics.md).

A push is a PUT of the whole group, so a column that is no longer checked disappears instead of
showing a stale score. The last-success stamp goes out with the run's own metrics: when a run
cannot publish, the stamp ages and the stale-monitor alert fires.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    push_to_gateway,
    pushadd_to_gateway,
)

from config.loader import Project
from tasks.monitor.versions import VersionPredictions
from tasks.render.names import MONITOR_JOB, SERVING_JOB  # one spelling for pusher and rules

ROLLOUTS_JOB = "driftloop_rollouts"


class PublishError(RuntimeError):
    """The Pushgateway did not take the metrics; the message says where and why."""


@dataclass(frozen=True)
class MonitorMetrics:
    """What one monitor run publishes, flattened from its CheckResult."""

    verdict: str
    rows: int
    label_coverage: float
    duration_seconds: float
    drift_share: float | None = None
    dataset_drift: bool | None = None
    columns: tuple[tuple[str, str, float | None, float | None, bool], ...] = ()
    quality: tuple[tuple[str, float], ...] = ()
    quality_reference: tuple[tuple[str, float], ...] = ()  # the serving model's held-out values
    estimated: tuple[tuple[str, float, float, float], ...] = ()  # metric, estimate, lower, upper
    estimate_error: tuple[tuple[str, float], ...] = ()  # metric, estimate minus realised
    estimated_breached: bool | None = None  # the primary estimate past its limit beyond the band
    change_share: float | None = None  # share of columns drifted against the previous window
    band_coverage: float | None = None  # share of settled windows whose band held the realised
    settled_windows: int = 0  # settled windows that share is measured on
    sudden_change: bool | None = None
    versions: tuple[VersionPredictions, ...] = ()  # each serving version's predictions


def monitor_registry(project: Project, m: MonitorMetrics, now: float | None = None):
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    gauge("driftloop_window_rows", "Rows in the checked window").set(m.rows)
    gauge("driftloop_label_coverage_ratio", "Share of rows with a label").set(m.label_coverage)
    gauge("driftloop_monitor_duration_seconds", "Wall time of the run").set(m.duration_seconds)
    gauge("driftloop_window_verdict", "1 for the window's verdict", ("verdict",)).labels(
        m.verdict
    ).set(1)
    if m.drift_share is not None:
        gauge("driftloop_drift_share", "Share of drifted feature columns").set(m.drift_share)
        gauge("driftloop_dataset_drift", "1 when the dataset drifted").set(
            int(bool(m.dataset_drift))
        )
    if m.columns:
        labels = ("column", "method")
        score = gauge("driftloop_column_drift_score", "Drift statistic per column", labels)
        threshold = gauge("driftloop_column_drift_threshold", "Its threshold", labels)
        detected = gauge("driftloop_column_drift_detected", "1 when the column drifted", labels)
        for column, method, value, limit, drifted in m.columns:
            if value is not None:
                score.labels(column, method).set(value)
            if limit is not None:
                threshold.labels(column, method).set(limit)
            detected.labels(column, method).set(int(drifted))
    if m.quality:
        quality = gauge("driftloop_quality", "Model quality on labelled traffic", ("metric",))
        for name, value in m.quality:
            quality.labels(name).set(value)
    if m.quality_reference:
        reference = gauge(
            "driftloop_quality_reference",
            "The serving model's value of the metric on its held-out set",
            ("metric",),
        )
        for name, value in m.quality_reference:
            reference.labels(name).set(value)
    if m.estimated:
        metric = ("metric",)
        value = gauge(
            "driftloop_estimated_quality", "Model quality estimated without labels", metric
        )
        lower = gauge("driftloop_estimated_quality_lower", "Lower end of its band", metric)
        upper = gauge("driftloop_estimated_quality_upper", "Upper end of its band", metric)
        for name, estimate, low, high in m.estimated:
            value.labels(name).set(estimate)
            lower.labels(name).set(low)
            upper.labels(name).set(high)
    if m.estimate_error:
        error = gauge(
            "driftloop_estimate_error",
            "The estimate minus the realised value, once the labels arrived",
            ("metric",),
        )
        for name, diff in m.estimate_error:
            error.labels(name).set(diff)
    if m.estimated_breached is not None:
        gauge(
            "driftloop_estimated_quality_breached",
            "1 when the estimated primary metric is past its limit beyond its band",
        ).set(int(m.estimated_breached))
    if m.band_coverage is not None:
        gauge(
            "driftloop_estimate_band_coverage_ratio",
            "Share of the latest settled windows whose estimate's band held the realised value",
        ).set(m.band_coverage)
        gauge(
            "driftloop_estimate_settled_windows", "Settled windows that share is measured on"
        ).set(m.settled_windows)
    if m.change_share is not None:
        gauge(
            "driftloop_window_change_share",
            "Share of feature columns drifted against the previous usable window",
        ).set(m.change_share)
    if m.sudden_change is not None:
        gauge("driftloop_sudden_change", "1 when the window changed suddenly").set(
            int(m.sudden_change)
        )
    if m.versions:
        version_gauges(registry, m.versions)
    gauge(
        "driftloop_monitor_last_success_timestamp_seconds", "Unix time of the last completed run"
    ).set(now if now is not None else time.time())
    return registry


def version_gauges(registry: CollectorRegistry, versions: tuple[VersionPredictions, ...]):
    """Each serving version's prediction distribution and its drift against the stable one,
    which the Argo canary's analysis reads for the canary's version."""

    def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
        return Gauge(name, doc, ("version", *labels), registry=registry)

    rows = gauge("driftloop_version_rows", "Window rows this version answered", ())
    stable = gauge("driftloop_version_stable", "1 for the version the others are compared with", ())
    mean = gauge("driftloop_version_prediction_mean", "Mean prediction of the version", ())
    quantile = gauge(
        "driftloop_version_prediction_quantile", "Quantile of its predictions", ("quantile",)
    )
    share = gauge(
        "driftloop_version_class_share", "Share of rows predicted as the class", ("class",)
    )
    drift = gauge(
        "driftloop_version_prediction_drift",
        "Drift of the version's predictions against the stable version's",
        ("method",),
    )
    limit = gauge("driftloop_version_prediction_drift_threshold", "Its threshold", ("method",))
    for v in versions:
        rows.labels(v.version).set(v.rows)
        stable.labels(v.version).set(int(v.stable))
        if v.mean is not None:
            mean.labels(v.version).set(v.mean)
        for q, value in v.quantiles:
            quantile.labels(v.version, f"{q:g}").set(value)
        for name, value in v.class_shares:
            share.labels(v.version, name).set(value)
        if v.drift is not None:
            drift.labels(v.version, v.drift.method).set(v.drift.score)
            limit.labels(v.version, v.drift.method).set(v.drift.threshold)


def push_monitor_metrics(project: Project, m: MonitorMetrics) -> None:
    push(project, MONITOR_JOB, monitor_registry(project, m), replace=True)


def push(project: Project, job: str, registry: CollectorRegistry, replace: bool) -> None:
    """PUT (replace the model's group) or POST (replace only these names) to the Pushgateway."""
    gateway = project.config.endpoints.pushgateway
    send = push_to_gateway if replace else pushadd_to_gateway
    try:
        send(
            gateway,
            job=job,
            registry=registry,
            grouping_key={"model": project.config.project.name},
            timeout=10,
        )
    except OSError as exc:
        raise PublishError(
            f"Pushgateway at {gateway} did not accept the {job} metrics ({exc}); "
            "is the stack up (`driftloop status`)?"
        ) from None


@task(retries=3, retry_delay_seconds=[1, 2, 4], cache_policy=NO_CACHE)
def push_metrics(project: Project, m: MonitorMetrics) -> None:
    push_monitor_metrics(project, m)


def push_serving_info(project: Project, release) -> bool:
    """`driftloop_serving_info{...} 1` and the release time for what serves now; a down
    Pushgateway is logged, never a reason to undo a release (the record is the file)."""

    registry = CollectorRegistry()
    labels = release.labels
    info = Gauge(
        "driftloop_serving_info",
        "1 for the release serving now",
        ("bento", "model_tag", "data_rev", "git_commit", "approver"),
        registry=registry,
    )
    info.labels(
        release.bento,
        release.model_tag,
        labels.get("data_rev", ""),
        labels.get("git_commit", ""),
        labels.get("approver", ""),
    ).set(1)
    Gauge(
        "driftloop_release_timestamp_seconds",
        "When the release began serving",
        ("bento",),
        registry=registry,
    ).labels(release.bento).set(time.time())
    return push_quietly(project, SERVING_JOB, registry, "serving info")


def push_rollout_counts(project: Project, counts: dict[str, int]) -> bool:
    """`driftloop_rollouts_total{outcome}`, recounted from the release log on every attempt, so
    a Pushgateway that was down loses nothing."""

    registry = CollectorRegistry()
    total = Counter(
        "driftloop_rollouts", "Roll-forward attempts by outcome", ("outcome",), registry=registry
    )
    for outcome in ("promoted", "rolled_back", "failed"):
        total.labels(outcome).inc(counts.get(outcome, 0))
    return push_quietly(project, ROLLOUTS_JOB, registry, "rollout counts")


def push_quietly(project: Project, job: str, registry: CollectorRegistry, what: str) -> bool:
    """Push, logging a down Pushgateway instead of raising: these records live in files, and
    the next push carries them again."""
    try:
        push(project, job, registry, replace=True)
    except PublishError as exc:
        logging.getLogger("driftloop.metrics").warning("%s not published: %s", what, exc)
        return False
    return True
