"""What one monitor run amounts to, in the shapes its consumers take: the saved record, the
published metrics, the evidence a retrain carries, the links of a notice and the run's summary.

The monitor flow only wires steps together; every mapping from a check result lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from config.loader import Project
from tasks.capture import Window
from tasks.evidence import DriftRow, EstimateRow, QualityRow, WindowEvidence
from tasks.metrics import MonitorMetrics
from tasks.monitor.history import MonitorRecord
from tasks.monitor.results import CheckResult
from tasks.monitor.settle import SettleSummary
from tasks.monitor.versions import VersionPredictions


@dataclass(frozen=True)
class Assessment:
    """The facts the flow branches on."""

    usable: bool  # the checks ran on the window (no bad input)
    quality_breached: bool  # a model-quality metric crossed its limit
    wrong: bool  # something a person should hear about: bad data, drift, a breach, a change
    estimated_breached: bool = False  # the estimate crossed the limit beyond its band
    sudden_change: bool = False  # the window moved against the previous usable one


def assess(result: CheckResult) -> Assessment:
    usable = result.usable
    breached = bool(result.quality and result.quality.limit_breached)
    estimated = bool(result.estimated and result.estimated.limit_breached)
    changed = bool(result.change and result.change.verdict == "sudden_change")
    wrong = (
        not usable
        or result.dataset_drift
        or breached
        or estimated
        or changed
        or result.verdict != "no_drift"
    )
    return Assessment(
        usable=usable,
        quality_breached=breached,
        wrong=bool(wrong),
        estimated_breached=estimated,
        sudden_change=changed,
    )


def window_text(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"


def report_name(project: Project, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{project.config.project.name}-{stamp}"


def monitor_record(
    project: Project,
    run_id: str,
    start: datetime,
    end: datetime,
    serving_bento: str,
    data_rev: str,
    result: CheckResult,
    window: Window,
    seen: Assessment,
    report_urls: list[str],
) -> MonitorRecord:
    """The run as saved before anything is published: the policy and `driftloop` read it back."""
    return MonitorRecord(
        run_id=run_id,
        model=project.config.project.name,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        serving_bento=serving_bento,
        data_rev=data_rev,
        verdict=result.verdict,
        rows=window.rows,
        label_coverage=window.label_coverage,
        rows_total=window.total,
        sample=window.sample_note,
        dataset_drift=result.dataset_drift,
        quality_breached=seen.quality_breached,
        estimated_breached=seen.estimated_breached,
        sudden_change=seen.sudden_change,
        estimate=primary_estimate(result),
        realised=quality_values(result).get(project.config.primary_metric),
        usable=seen.usable,
        report_url=report_urls[0] if report_urls else None,
        finished_at=datetime.now(UTC).isoformat(),
        result=result.model_dump(mode="json"),
    )


def monitor_metrics(
    result: CheckResult,
    window: Window,
    duration: float,
    settled: SettleSummary | None = None,
    versions: tuple[VersionPredictions, ...] = (),
) -> MonitorMetrics:
    """The Pushgateway's view: drift numbers only for a usable window (docs/metrics.md); the
    estimator's record on windows its late labels settled (`settled`) beside this one's, and
    each serving version's predictions (`tasks.monitor.versions.compare_versions`)."""
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
        versions=versions,
        **_estimate_metrics(result, settled),
        **_change_metrics(result),
    )


def _estimate_metrics(result: CheckResult, settled: SettleSummary | None) -> dict:
    out: dict = {}
    if settled is not None and settled.coverage is not None:
        out["band_coverage"], out["settled_windows"] = settled.coverage, settled.windows
        out["estimate_error"] = ((settled.latest.metric, settled.latest.error),)
    estimated = result.estimated
    if estimated is None or result.bad_input:
        return out
    errors = tuple((m.name, m.error) for m in estimated.metrics if m.error is not None)
    return out | {
        "estimated": tuple((m.name, m.value, m.lower, m.upper) for m in estimated.metrics),
        "estimate_error": errors or out.get("estimate_error", ()),
        "estimated_breached": estimated.limit_breached,
    }


def _change_metrics(result: CheckResult) -> dict:
    change = result.change
    if change is None or change.verdict not in ("no_change", "sudden_change"):
        return {}
    return {
        "change_share": change.change_share,
        "sudden_change": change.verdict == "sudden_change",
    }


def window_evidence(result: CheckResult, text: str) -> WindowEvidence:
    """What the retrain this window triggers carries to the approval: the drifted columns with
    their scores, and the quality beside the serving model's."""
    return WindowEvidence(
        window=text,
        message=result.message,
        drift_share=result.drift_share,
        drifted=[
            DriftRow(column=c.column, method=c.method or "", score=c.score, threshold=c.threshold)
            for c in result.columns
            if c.drifted
        ],
        quality=[
            QualityRow(metric=m.name, current=m.current, reference=m.reference)
            for m in (result.quality.metrics if result.quality else [])
        ],
        estimated=estimate_rows(result),
        estimated_only=_estimated_only(result),
    )


def estimate_rows(result: CheckResult) -> list[EstimateRow]:
    estimated = result.estimated
    if estimated is None:
        return []
    return [
        EstimateRow(
            metric=m.name,
            estimate=m.value,
            lower=m.lower,
            upper=m.upper,
            confidence=estimated.confidence,
            realised=m.realised,
            method=estimated.method,
            outside_share=estimated.outside_share,
        )
        for m in estimated.metrics
    ]


def _estimated_only(result: CheckResult) -> bool:
    """The window's quality evidence is the estimate alone: it breached, and no labelled
    quality did."""
    judged = bool(result.quality and result.quality.status == "ok")
    estimated = bool(result.estimated and result.estimated.limit_breached)
    return estimated and not (judged and result.quality.limit_breached)


def quality_values(result: CheckResult) -> dict[str, float]:
    quality = result.quality
    if quality is None or quality.status != "ok":
        return {}
    return {m.name: m.current for m in quality.metrics if m.current is not None}


def primary_estimate(result: CheckResult) -> dict | None:
    """The primary metric's estimate and band, as the history keeps it for settling later."""
    estimated = result.estimated
    if estimated is None:
        return None
    m = next((m for m in estimated.metrics if m.name == estimated.primary), None)
    if m is None:
        return None
    return {"metric": m.name, "value": m.value, "lower": m.lower, "upper": m.upper}


def estimated_values(result: CheckResult) -> dict[str, dict]:
    """Each estimate with its band and, once labels arrived, the realised value (the run's
    summary, which `driftloop demo` prints)."""
    estimated = result.estimated
    if estimated is None:
        return {}
    return {
        m.name: {
            "value": m.value,
            "lower": m.lower,
            "upper": m.upper,
            "confidence": estimated.confidence,
            "realised": m.realised,
        }
        for m in estimated.metrics
    }


def monitor_links(project: Project, report_urls: list[str], run_url: str | None) -> dict[str, str]:
    """Where a notice points: the report, the Prefect run, the alerts."""
    links = {}
    if report_urls:
        links["Evidently report"] = report_urls[0]
    if run_url:
        links["Prefect run"] = run_url
    links["Alerts"] = f"{project.config.endpoints.prometheus}/alerts"
    return links
