"""Prometheus alert rules: the alerts of docs/metrics.md with thresholds from the config.

The rules carry their evidence in Go-template annotations; the template builders are public
because the rule tests expand the same fragments into the text they expect.
"""

from __future__ import annotations

from config.loader import Project
from config.schema import METRICS
from tasks.render.names import (
    API_CALLS,
    COLUMN,
    METHOD,
    MODEL,
    MONITOR_JOB,
    SLOTS_JOB,
    VALUE_0F,
    VALUE_2F,
    VALUE_3G,
    VERSION,
    format_number,
)


def alert_rules(project: Project) -> dict:
    """The rules file: the alerts of docs/metrics.md with thresholds from the config."""
    cfg = project.config
    mon, links = monitor_selector(project), _links(project)
    limit = cfg.monitor.quality_limit
    stale = 2 * cfg.monitor.interval_seconds
    monitor_rules = [
        _rule(
            "DriftloopDatasetDrift",
            f"driftloop_drift_share{{{mon}}} >= {format_number(cfg.monitor.drift_share)}",
            "1m",
            "warning",
            project,
            summary=f"{MODEL}: {VALUE_2F} of the feature columns drifted",
            description=f"Drift share {VALUE_2F} >= monitor.drift_share "
            f"{format_number(cfg.monitor.drift_share)}. Drifted columns (score): "
            f"{drifted_columns(mon)}.",
            runbook="Open the drift report; if the shift is real and labels are arriving, "
            "`driftloop retrain --dry-run` shows what a retrain would do.",
            **links,
        ),
        _rule(
            "DriftloopColumnDrift",
            f"driftloop_column_drift_detected{{{mon}}} == 1",
            "1m",
            "info",
            project,
            summary=f"{MODEL}: column {COLUMN} drifted ({METHOD})",
            description=f"Column {COLUMN}: {METHOD} score {column_value(project, 'score')}, "
            f"threshold {column_value(project, 'threshold')}, in the latest monitor window.",
            runbook="One column alone rarely needs a retrain: look for an upstream or "
            "pipeline change in this column in the report.",
            **links,
        ),
    ]
    if limit is not None:
        primary = cfg.primary_metric
        op, better = ("<", "higher") if METRICS[primary][1] else (">", "lower")
        bound = format_number(limit)
        coverage = first_value(f"driftloop_label_coverage_ratio{{{mon}}}", "%.2f")
        rows = first_value(f"driftloop_window_rows{{{mon}}}", "%.0f")
        monitor_rules.append(
            _rule(
                "DriftloopQualityBelowThreshold",
                f'driftloop_quality{{{mon},metric="{primary}"}} {op} {bound}',
                "1m",
                "critical",
                project,
                summary=f"{MODEL}: {primary} {VALUE_3G} is worse than the limit {bound}",
                description=f"{primary} on the labelled part of the latest window is "
                f"{VALUE_3G} ({better} is better; monitor.quality_limit {bound}). "
                f"Label coverage {coverage}, window rows {rows}.",
                runbook="Check the report's quality section against the champion's evaluation; "
                "`driftloop retrain --dry-run` shows what a retrain would do.",
                **links,
            )
        )
    if limit is not None and cfg.estimate.enabled:
        monitor_rules.append(estimated_quality_rule(project))
    monitor_rules.append(sudden_change_rule(project))
    stamp = f"driftloop_monitor_last_success_timestamp_seconds{{{mon}}}"
    stale_runbook = (
        "Look at the monitor's Prefect runs and `driftloop status`; a failing push to the "
        "Pushgateway also stops the stamp. Drift and quality alerts are blind meanwhile."
    )
    monitor_rules += [
        _rule(
            "DriftloopMonitorStale",
            f"time() - {stamp} > {stale}",
            "1m",
            "warning",
            project,
            labels={"stamp": "old"},
            summary=f"{MODEL}: no successful monitor run for {VALUE_0F}s",
            description=f"The last successful monitor run was {VALUE_0F}s ago; the monitor "
            f"runs every {cfg.monitor.interval_seconds}s and this fires after {stale}s "
            "(2 x monitor.interval_seconds).",
            runbook=stale_runbook,
            runs_url=links["runs_url"],
        ),
        _rule(  # no stamp at all (fresh Pushgateway, or every run failed) is stale too
            "DriftloopMonitorStale",
            f"absent({stamp})",
            _duration(stale),
            "warning",
            project,
            labels={"stamp": "missing"},  # distinct labels: two rules, one alert name
            summary=f"{MODEL}: no successful monitor run recorded",
            description=f"No successful monitor run recorded for {stale}s "
            "(2 x monitor.interval_seconds): the monitor has not run since the Pushgateway "
            "started, or every run failed.",
            runbook=stale_runbook,
            runs_url=links["runs_url"],
        ),
    ]
    srv = f'job="{SLOTS_JOB}",model="{project.config.project.name}",{API_CALLS}'
    by = "sum by (model, service_version)"
    serving_rules = [
        _rule(
            "DriftloopServingErrors",
            f'{by} (rate(bentoml_service_request_total{{{srv},http_response_code=~"5.."}}[5m]))\n'
            f"  / {by} (rate(bentoml_service_request_total{{{srv}}}[5m]))\n"
            f"> {format_number(cfg.serving.max_error_ratio)}",
            "2m",
            "critical",
            project,
            summary=f"{MODEL} {VERSION}: {VALUE_3G} of prediction requests failed (5xx)",
            description=f"Over the last 5m, {VALUE_3G} of prediction requests to bento "
            f"version {VERSION} answered 5xx (serving.max_error_ratio "
            f"{format_number(cfg.serving.max_error_ratio)}).",
            runbook="If a release just rolled forward, `driftloop rollback` returns to the "
            "previous bento; otherwise read the slot's log (`driftloop status`).",
        ),
        _rule(
            "DriftloopServingLatency",
            "histogram_quantile(0.95, sum by (model, service_version, le) "
            f"(rate(bentoml_service_request_duration_seconds_bucket{{{srv}}}[5m])))\n"
            f"> {format_number(cfg.serving.max_p95_latency_seconds)}",
            "2m",
            "warning",
            project,
            summary=f"{MODEL} {VERSION}: p95 latency {VALUE_3G}s",
            description=f"Over the last 5m, the 95th percentile latency of prediction requests "
            f"to bento version {VERSION} is {VALUE_3G}s (serving.max_p95_latency_seconds "
            f"{format_number(cfg.serving.max_p95_latency_seconds)}s).",
            runbook="Compare with the previous version in the dashboard; large batches "
            "(serving.max_batch) or a slower estimator are the usual causes.",
        ),
    ]
    return {
        "groups": [
            {"name": "driftloop-monitor", "rules": monitor_rules},
            {"name": "driftloop-serving", "rules": serving_rules},
        ]
    }


def estimated_quality_rule(project: Project) -> dict:
    """The primary metric, estimated before the labels arrive, past its limit beyond its band."""
    cfg, mon = project.config, monitor_selector(project)
    primary, bound = cfg.primary_metric, format_number(cfg.monitor.quality_limit)
    better = "higher" if METRICS[primary][1] else "lower"
    series = f'{{{mon},metric="{primary}"}}'
    estimate = first_value(f"driftloop_estimated_quality{series}", "%.3g")
    lower = first_value(f"driftloop_estimated_quality_lower{series}", "%.3g")
    upper = first_value(f"driftloop_estimated_quality_upper{series}", "%.3g")
    coverage = first_value(f"driftloop_label_coverage_ratio{{{mon}}}", "%.2f")
    return _rule(
        "DriftloopEstimatedQualityBelowThreshold",
        f"driftloop_estimated_quality_breached{{{mon}}} == 1",
        "1m",
        "warning",
        project,
        summary=f"{MODEL}: estimated {primary} {estimate} is worse than the limit {bound}",
        description=f"{primary} estimated without labels on the latest window is {estimate}, "
        f"band {lower} to {upper} ({cfg.estimate.confidence:.0%} confidence; {better} is "
        f"better; monitor.quality_limit {bound}): the whole band is past the limit. "
        f"Label coverage {coverage}.",
        runbook="The labels have not confirmed it yet: compare with the realised quality as "
        "they arrive. A retrain this triggers (policy.triggers: estimated_quality) says on its "
        "approval card that its evidence is estimated.",
        **_links(project),
    )


def sudden_change_rule(project: Project) -> dict:
    """The latest window against the previous usable one: enough columns changed at once."""
    cfg, mon = project.config, monitor_selector(project)
    key = "monitor.change_share" if cfg.monitor.change_share else "monitor.drift_share"
    threshold = format_number(cfg.monitor.change_share or cfg.monitor.drift_share)
    share = first_value(f"driftloop_window_change_share{{{mon}}}", "%.2f")
    return _rule(
        "DriftloopSuddenChange",
        f"driftloop_sudden_change{{{mon}}} == 1",
        "1m",
        "warning",
        project,
        summary=f"{MODEL}: the latest window changed suddenly against the previous one",
        description=f"{share} of the feature columns drifted against the previous usable "
        f"window ({key} {threshold}), with the same methods and thresholds as against the "
        "reference.",
        runbook="A jump between consecutive windows is usually upstream: a release, a unit or "
        "encoding change, a stuck feed. Compare the two windows in the report before retraining.",
        **_links(project),
    )


def drift_report_key(project: Project) -> str:
    """The Prefect artifact key the monitor links its Evidently report under (alerts link it)."""
    return f"{project.config.project.name.replace('_', '-')}-drift-report"


def monitor_selector(project: Project) -> str:
    """PromQL label matchers for this model's series pushed by the monitor."""
    return f'job="{MONITOR_JOB}",model="{project.config.project.name}"'


def _links(project: Project) -> dict[str, str]:
    prefect = project.config.endpoints.prefect
    return {
        "report_url": f"{prefect}/artifacts/key/{drift_report_key(project)}",
        "runs_url": f"{prefect}/runs",
    }


def _rule(
    alert: str,
    expr: str,
    for_: str,
    severity: str,
    project: Project,
    labels: dict[str, str] | None = None,
    **annotations: str,
) -> dict:
    return {
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, "model": project.config.project.name, **(labels or {})},
        "annotations": annotations,
    }


def first_value(query: str, fmt: str) -> str:
    """Template text: the first sample of `query` at alert time, formatted, or n/a."""
    return (
        "{{ with query `" + query + '` }}{{ . | first | value | printf "' + fmt + '" }}'
        "{{ else }}n/a{{ end }}"
    )


def column_value(project: Project, kind: str) -> str:
    """Template text: the alerting column's score or threshold, looked up by its labels."""
    mon = monitor_selector(project)
    query = f'driftloop_column_drift_{kind}{{{mon},column="%s",method="%s"}}'
    return (
        "{{ with printf `" + query + "` $labels.column $labels.method | query }}"
        '{{ . | first | value | printf "%.3g" }}{{ else }}n/a{{ end }}'
    )


def drifted_columns(mon: str) -> str:
    """Template text: 'temp (0.31), hum (0.2)' for every column flagged in the latest window."""
    query = (
        f"driftloop_column_drift_score{{{mon}}} and on (column, method) "
        f"(driftloop_column_drift_detected{{{mon}}} == 1)"
    )
    return (
        "{{ range $i, $s := query `" + query + '` | sortByLabel "column" }}'
        '{{ if $i }}, {{ end }}{{ $s.Labels.column }} ({{ printf "%.3g" $s.Value }})'
        "{{ else }}none reported{{ end }}"
    )


def _duration(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"
