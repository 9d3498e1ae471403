"""Monitoring as code: Prometheus rules and their tests, Alertmanager, Grafana and compose files.

Everything is rendered from `config/driftloop.yaml`, so a threshold lives in exactly one place and
a config change reaches the rules, their tests and the dashboard together. The functions return
plain dicts; only `write_deployments` (the committed files under `deployments/`) and
`write_runtime` (the local stack's copies, with real paths) touch the disk. Metric and alert
names follow `docs/metrics.md`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from config.loader import Project
from config.schema import METRICS

MONITOR_JOB = "driftloop_monitor"
SERVING_JOB = "driftloop_serving"
SLOTS_JOB = "driftloop_serving_slots"
SLOT_NAMES = ("blue", "green")
DATASOURCE_UID = "driftloop-prometheus"
TEMPLATE_FILE = "driftloop.tmpl"
GRAFANA_DASHBOARDS_DIR = "/etc/grafana/dashboards/driftloop"
IMAGES = {  # the same releases as the Debian binaries the local stack runs
    "prefect": "prefecthq/prefect:3.8.8-python3.11",
    "pushgateway": "prom/pushgateway:v1.5.1",
    "prometheus": "prom/prometheus:v2.42.0",
    "alertmanager": "prom/alertmanager:v0.25.0",
    "nginx": "nginx:1.22",
}
# BentoML counts probes and docs pages too; serving alerts and panels look at API calls only.
API_CALLS = 'endpoint!~"/|/(livez|readyz|healthz|metrics|docs.json|schema.json|static_content/.*)"'

# Go-template fragments shared by the rules and by the expected text in their tests.
MODEL = "{{ $labels.model }}"
VERSION = "{{ $labels.service_version }}"
COLUMN = "{{ $labels.column }}"
METHOD = "{{ $labels.method }}"
VALUE_2F = '{{ printf "%.2f" $value }}'
VALUE_3G = '{{ printf "%.3g" $value }}'
VALUE_0F = '{{ printf "%.0f" $value }}'


# ---------------------------------------------------------------- Prometheus rules


def alert_rules(project: Project) -> dict:
    """The rules file: the six alerts of docs/metrics.md with thresholds from the config."""
    cfg = project.config
    mon, links = _monitor_selector(project), _links(project)
    limit = cfg.monitor.quality_limit
    stale = 2 * cfg.monitor.interval_seconds
    monitor_rules = [
        _rule(
            "DriftloopDatasetDrift",
            f"driftloop_drift_share{{{mon}}} >= {_num(cfg.monitor.drift_share)}",
            "1m",
            "warning",
            project,
            summary=f"{MODEL}: {VALUE_2F} of the feature columns drifted",
            description=f"Drift share {VALUE_2F} >= monitor.drift_share "
            f"{_num(cfg.monitor.drift_share)}. Drifted columns (score): "
            f"{_drifted_columns(mon)}.",
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
            description=f"Column {COLUMN}: {METHOD} score {_column_value(project, 'score')}, "
            f"threshold {_column_value(project, 'threshold')}, in the latest monitor window.",
            runbook="One column alone rarely needs a retrain: look for an upstream or "
            "pipeline change in this column in the report.",
            **links,
        ),
    ]
    if limit is not None:
        primary = cfg.primary_metric
        op, better = ("<", "higher") if METRICS[primary][1] else (">", "lower")
        monitor_rules.append(
            _rule(
                "DriftloopQualityBelowThreshold",
                f'driftloop_quality{{{mon},metric="{primary}"}} {op} {_num(limit)}',
                "1m",
                "critical",
                project,
                summary=f"{MODEL}: {primary} {VALUE_3G} is worse than the limit {_num(limit)}",
                description=f"{primary} on the labelled part of the latest window is "
                f"{VALUE_3G} ({better} is better; monitor.quality_limit {_num(limit)}). "
                f"Label coverage {_first(f'driftloop_label_coverage_ratio{{{mon}}}', '%.2f')}, "
                f"window rows {_first(f'driftloop_window_rows{{{mon}}}', '%.0f')}.",
                runbook="Check the report's quality section against the champion's evaluation; "
                "`driftloop retrain --dry-run` shows what a retrain would do.",
                **links,
            )
        )
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
            f"> {_num(cfg.serving.max_error_ratio)}",
            "2m",
            "critical",
            project,
            summary=f"{MODEL} {VERSION}: {VALUE_3G} of prediction requests failed (5xx)",
            description=f"Over the last 5m, {VALUE_3G} of prediction requests to bento "
            f"version {VERSION} answered 5xx (serving.max_error_ratio "
            f"{_num(cfg.serving.max_error_ratio)}).",
            runbook="If a release just rolled forward, `driftloop rollback` returns to the "
            "previous bento; otherwise read the slot's log (`driftloop status`).",
        ),
        _rule(
            "DriftloopServingLatency",
            "histogram_quantile(0.95, sum by (model, service_version, le) "
            f"(rate(bentoml_service_request_duration_seconds_bucket{{{srv}}}[5m])))\n"
            f"> {_num(cfg.serving.max_p95_latency_seconds)}",
            "2m",
            "warning",
            project,
            summary=f"{MODEL} {VERSION}: p95 latency {VALUE_3G}s",
            description=f"Over the last 5m, the 95th percentile latency of prediction requests "
            f"to bento version {VERSION} is {VALUE_3G}s (serving.max_p95_latency_seconds "
            f"{_num(cfg.serving.max_p95_latency_seconds)}s).",
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


def drift_report_key(project: Project) -> str:
    """The Prefect artifact key the monitor links its Evidently report under (alerts link it)."""
    return f"{project.config.project.name.replace('_', '-')}-drift-report"


def _monitor_selector(project: Project) -> str:
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


def _first(query: str, fmt: str) -> str:
    """Template text: the first sample of `query` at alert time, formatted, or n/a."""
    return (
        "{{ with query `" + query + '` }}{{ . | first | value | printf "' + fmt + '" }}'
        "{{ else }}n/a{{ end }}"
    )


def _column_value(project: Project, kind: str) -> str:
    """Template text: the alerting column's score or threshold, looked up by its labels."""
    mon = _monitor_selector(project)
    query = f'driftloop_column_drift_{kind}{{{mon},column="%s",method="%s"}}'
    return (
        "{{ with printf `" + query + "` $labels.column $labels.method | query }}"
        '{{ . | first | value | printf "%.3g" }}{{ else }}n/a{{ end }}'
    )


def _drifted_columns(mon: str) -> str:
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


def _num(x: float) -> str:
    return f"{x:.15g}"


def _duration(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


# ---------------------------------------------------------------- promtool tests


def rules_tests(project: Project) -> dict:
    """A `promtool test rules` file: each rule does not fire, fires with its evidence, resolves.

    The series straddle the configured thresholds, so the tests follow a config change.
    """
    cfg = project.config
    rules = {
        (r["alert"], "absent(" in r["expr"]): r
        for g in alert_rules(project)["groups"]
        for r in g["rules"]
    }
    name = cfg.project.name
    mon = {"job": MONITOR_JOB, "model": name}
    numeric = [*(cfg.data.numeric or []), "column_a", "column_b"]
    col, other_col = numeric[0], numeric[1]
    tests = []

    # dataset drift: low for 6m, high for 11m, low again; another model's drift never counts
    share = cfg.monitor.drift_share
    high, low = (1 + share) / 2, share / 2
    score = {"column": col, "method": "wasserstein"}
    tests.append(
        _test(
            [
                _series("driftloop_drift_share", mon, f"{low}x5 {high}x10 {low}x10"),
                _series("driftloop_drift_share", {**mon, "model": "other-model"}, f"{high}x27"),
                _series("driftloop_column_drift_score", {**mon, **score}, "0.31x27"),
                _series("driftloop_column_drift_detected", {**mon, **score}, "1x27"),
                _series(
                    "driftloop_column_drift_detected",
                    {**mon, "column": other_col, "method": "wasserstein"},
                    "0x27",
                ),
            ],
            "DriftloopDatasetDrift",
            rules[("DriftloopDatasetDrift", False)],
            mon,
            {"5m": False, "6m30s": False, "10m": True, "20m": False},
            {
                VALUE_2F: f"{high:.2f}",
                _drifted_columns(_monitor_selector(project)): f"{col} (0.31)",
            },
        )
    )

    # one column: flagged 0/1/0, its score and threshold appear in the message
    labels = {**mon, **score}
    tests.append(
        _test(
            [
                _series("driftloop_column_drift_detected", labels, "0x5 1x10 0x10"),
                _series("driftloop_column_drift_score", labels, "0.05x5 0.31x10 0.05x10"),
                _series("driftloop_column_drift_threshold", labels, "0.1x27"),
            ],
            "DriftloopColumnDrift",
            rules[("DriftloopColumnDrift", False)],
            labels,
            {"5m": False, "10m": True, "20m": False},
            {
                COLUMN: col,
                METHOD: "wasserstein",
                _column_value(project, "score"): "0.31",
                _column_value(project, "threshold"): "0.1",
            },
        )
    )

    # model quality: the primary metric on the good side, the bad side, and back
    if cfg.monitor.quality_limit is not None:
        limit, primary = cfg.monitor.quality_limit, cfg.primary_metric
        step = (abs(limit) * 0.5 + 1) * (-1 if METRICS[primary][1] else 1)
        bad, good = limit + step, limit - step
        sel = _monitor_selector(project)
        tests.append(
            _test(
                [
                    _series(
                        "driftloop_quality",
                        {**mon, "metric": primary},
                        f"{good}x5 {bad}x10 {good}x10",
                    ),
                    _series("driftloop_label_coverage_ratio", mon, "0.8x27"),
                    _series("driftloop_window_rows", mon, "400x27"),
                ],
                "DriftloopQualityBelowThreshold",
                rules[("DriftloopQualityBelowThreshold", False)],
                {**mon, "metric": primary},
                {"5m": False, "10m": True, "20m": False},
                {
                    VALUE_3G: f"{bad:.3g}",
                    _first(f"driftloop_label_coverage_ratio{{{sel}}}", "%.2f"): "0.80",
                    _first(f"driftloop_window_rows{{{sel}}}", "%.0f"): "400",
                },
            )
        )

    # stale monitor: the stamp stops at t=0, then a run succeeds every minute again
    stale = 2 * cfg.monitor.interval_seconds
    quiet = math.ceil(stale / 60) + 3  # minutes without a run: past the threshold and `for`
    back = quiet + 1
    tests.append(
        _test(
            [
                _series(
                    "driftloop_monitor_last_success_timestamp_seconds",
                    mon,
                    f"0x{quiet} {back * 60}+60x10",
                )
            ],
            "DriftloopMonitorStale",
            rules[("DriftloopMonitorStale", False)],
            mon,
            {"1m": False, f"{quiet}m": True, f"{back + 5}m": False},
            {VALUE_0F: str(quiet * 60)},
        )
    )
    # ... and no stamp at all for this model (another model's runs don't count)
    missing = math.ceil(stale / 60) + 3  # `_xN` is N minutes without a sample
    tests.append(
        _test(
            [
                _series(
                    "driftloop_monitor_last_success_timestamp_seconds",
                    {**mon, "model": "other-model"},
                    "0+60x30",
                ),
                _series(
                    "driftloop_monitor_last_success_timestamp_seconds",
                    mon,
                    f"_x{missing} {missing * 60}+60x10",
                ),
            ],
            "DriftloopMonitorStale",
            rules[("DriftloopMonitorStale", True)],
            mon,
            {"1m": False, f"{missing - 1}m": True, f"{missing + 3}m": False},
            {},
        )
    )

    # serving: healthy 10m, bad 10m, healthy 15m; probe traffic must not dilute the ratio
    slot = {
        "job": SLOTS_JOB,
        "model": name,
        "slot": "blue",
        "service_name": name,
        "service_version": "20250101-v1",
    }
    api = {**slot, "endpoint": "/predict"}
    ratio = cfg.serving.max_error_ratio
    bad_hi, bad_lo = round(1000 * (1 + ratio) / 2), math.floor(1000 * ratio / 2)
    phases = [(bad_lo, 10), (bad_hi, 10), (bad_lo, 15)]
    out = {"model": name, "service_version": slot["service_version"]}
    tests.append(
        _test(
            [
                _series(
                    "bentoml_service_request_total",
                    {**api, "http_response_code": "200"},
                    _counter([(1000 - b, n) for b, n in phases]),
                ),
                _series(
                    "bentoml_service_request_total",
                    {**api, "http_response_code": "500"},
                    _counter(phases),
                ),
                _series(
                    "bentoml_service_request_total",
                    {**slot, "endpoint": "/readyz", "http_response_code": "200"},
                    _counter([(100000, 35)]),
                ),
            ],
            "DriftloopServingErrors",
            rules[("DriftloopServingErrors", False)],
            out,
            {"9m": False, "18m": True, "30m": False},
            {VERSION: slot["service_version"], VALUE_3G: f"{bad_hi / 1000:.3g}"},
        )
    )

    # latency: fast, slow (all requests between 2x and 4x the limit), fast again
    limit_s = cfg.serving.max_p95_latency_seconds
    bounds = [limit_s / 2, limit_s, 2 * limit_s, 4 * limit_s]
    buckets = []
    for i, le in enumerate([*map(_num, bounds), "+Inf"]):
        slow = 100 if i >= 3 else 0
        buckets.append(
            _series(
                "bentoml_service_request_duration_seconds_bucket",
                {**api, "http_response_code": "200", "le": le},
                _counter([(100, 10), (slow, 10), (100, 15)]),
            )
        )
    tests.append(
        _test(
            buckets,
            "DriftloopServingLatency",
            rules[("DriftloopServingLatency", False)],
            out,
            {"9m": False, "18m": True, "30m": False},
            {VERSION: slot["service_version"], VALUE_3G: f"{3.9 * limit_s:.3g}"},
        )
    )
    return {
        "rule_files": ["rules.yml"],
        "evaluation_interval": f"{cfg.stack.scrape_interval_seconds}s",
        "tests": tests,
    }


def _series(metric: str, labels: dict[str, str], values: str) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _counter(phases: list[tuple[int, int]]) -> str:
    """promtool values for a counter growing by `inc` per minute for `steps` minutes per phase."""
    parts, total = [], 0
    for i, (inc, steps) in enumerate(phases):
        start = total if i == 0 else total + inc
        count = steps if i == 0 else steps - 1
        parts.append(f"{start}+{inc}x{count}")
        total = start + inc * count
    return " ".join(parts)


def _test(
    series: list[dict],
    alert: str,
    rule: dict,
    labels: dict[str, str],
    firing_at: dict[str, bool],
    values: dict[str, str],
) -> dict:
    """One test group: at each eval time the alert is expected firing (with text) or not."""
    shown = {k: v for k, v in labels.items() if k in _alert_labels(rule, labels)}
    exp = {
        "exp_labels": {**shown, **rule["labels"]},
        "exp_annotations": {
            k: _expand(v, {MODEL: labels["model"], **values})
            for k, v in rule["annotations"].items()
        },
    }
    return {
        "name": f"{alert}: {'absent ' if 'absent(' in rule['expr'] else ''}fires and resolves",
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": t, "alertname": alert, "exp_alerts": [exp] if firing else []}
            for t, firing in firing_at.items()
        ],
    }


def _alert_labels(rule: dict, labels: dict[str, str]) -> set[str]:
    """The labels a firing alert keeps: aggregations keep their `by`, others the series'."""
    if rule["expr"].startswith(("sum by", "histogram_quantile")):
        return {"model", "service_version"}
    return set(labels)


def _expand(template: str, values: dict[str, str]) -> str:
    """What Prometheus prints for `template` given the values of its fragments."""
    for fragment, value in values.items():
        template = template.replace(fragment, value)
    if "{{" in template:
        raise ValueError(f"a template fragment has no test value: {template}")
    return template


# ---------------------------------------------------------------- Prometheus and Alertmanager


def slot_targets(project: Project) -> list[str]:
    """host:port of the blue and green bento slots the local stack runs."""
    serving = project.config.serving
    return [f"{serving.host}:{port}" for port in serving.slot_ports]


def prometheus_config(project: Project, rules_path: str, slot_targets: list[str]) -> dict:
    """Scrape Prometheus itself, the Pushgateway (keeping pushed labels) and both slots."""
    cfg = project.config
    every = f"{cfg.stack.scrape_interval_seconds}s"
    name = cfg.project.name
    return {
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "rule_files": [rules_path, *(str(project.resolve(f)) for f in cfg.stack.extra_rule_files)],
        "alerting": {
            "alertmanagers": [
                {
                    "scheme": urlsplit(cfg.endpoints.alertmanager).scheme,
                    "static_configs": [{"targets": [_host_port(cfg.endpoints.alertmanager)]}],
                }
            ]
        },
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [_host_port(cfg.endpoints.prometheus)]}],
            },
            {
                "job_name": "pushgateway",
                "honor_labels": True,  # keep the pushed job and model labels
                "static_configs": [{"targets": [_host_port(cfg.endpoints.pushgateway)]}],
            },
            {
                "job_name": SLOTS_JOB,
                "static_configs": [
                    {"targets": [target], "labels": {"model": name, "slot": slot}}
                    for slot, target in zip(SLOT_NAMES, slot_targets, strict=True)
                ],
            },
        ],
    }


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def alertmanager_config(project: Project, slack_webhook_file: Path | None) -> dict:
    """Route per model and alert to Slack when a webhook file is given, else to a null receiver.

    The webhook URL stays in a file outside git (`api_url_file`); with no receiver configured the
    alerts still show in the Alertmanager UI.
    """
    receiver: dict = {"name": "null"}
    if slack_webhook_file is not None:
        receiver = {
            "name": "slack",
            "slack_configs": [
                {
                    "api_url_file": str(slack_webhook_file),
                    "channel": os.environ.get("SLACK_ALERT_CHANNEL", "#driftloop-alerts"),
                    "send_resolved": True,
                    "title": '{{ template "driftloop.title" . }}',
                    "title_link": '{{ template "driftloop.title_link" . }}',
                    "text": '{{ template "driftloop.text" . }}',
                    "color": '{{ if eq .Status "firing" }}danger{{ else }}good{{ end }}',
                }
            ],
        }
    return {
        "route": {
            "receiver": receiver["name"],
            "group_by": ["alertname", "model"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "inhibit_rules": [  # a dataset-drift alert already lists every drifted column
            {
                "source_matchers": ['alertname="DriftloopDatasetDrift"'],
                "target_matchers": ['alertname="DriftloopColumnDrift"'],
                "equal": ["model"],
            }
        ],
        "receivers": [receiver],
        "templates": [TEMPLATE_FILE],
    }


def alertmanager_template() -> str:
    """The Slack message: per alert its summary, evidence, links and next step."""
    return """\
{{ define "driftloop.title" }}[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] {{ .CommonLabels.alertname }} ({{ .CommonLabels.model }}){{ end }}

{{ define "driftloop.title_link" }}{{ with index .Alerts 0 }}{{ or .Annotations.report_url .GeneratorURL }}{{ end }}{{ end }}

{{ define "driftloop.text" }}{{ range .Alerts }}{{ if eq .Status "resolved" }}resolved: {{ end }}*{{ .Annotations.summary }}* ({{ .Labels.severity }})
{{ .Annotations.description }}
{{ if .Annotations.report_url }}<{{ .Annotations.report_url }}|drift report> | {{ end }}{{ if .Annotations.runs_url }}<{{ .Annotations.runs_url }}|monitor runs> | {{ end }}<{{ .GeneratorURL }}|query>
Next: {{ .Annotations.runbook }}
{{ end }}{{ end }}
"""  # noqa: E501


# ---------------------------------------------------------------- Grafana


def grafana_dashboard(project: Project) -> dict:
    """Drift, quality, the monitor's health, serving by version, releases and approvals."""
    cfg = project.config
    m = 'model="$model"'
    api = f'job="{SLOTS_JOB}",{m},{API_CALLS}'
    by_version, version = "sum by (service_version)", "{{service_version}}"
    req = f"bentoml_service_request_total{{{api}}}"
    err = f'bentoml_service_request_total{{{api},http_response_code=~"5.."}}'
    lat = f"bentoml_service_request_duration_seconds_bucket{{{api}}}"
    win = "[$__rate_interval]"
    limit = cfg.monitor.quality_limit
    layout = _Layout()
    panels = [
        layout.row("Drift"),
        layout.panel(
            "Drift share",
            [(f"driftloop_drift_share{{{m}}}", "drift share")],
            unit="percentunit",
            limit=cfg.monitor.drift_share,
            w=12,
            description="Share of feature columns whose drift was detected; the line is "
            "monitor.drift_share.",
        ),
        layout.panel(
            "Drifted columns",
            [(f"sum(driftloop_column_drift_detected{{{m}}})", "columns")],
            kind="stat",
            w=6,
        ),
        layout.panel(
            "Dataset drift",
            [(f"max(driftloop_dataset_drift{{{m}}})", "dataset drift")],
            kind="stat",
            w=6,
        ),
        layout.panel(
            "Column drift scores",
            [(f"driftloop_column_drift_score{{{m}}}", "{{column}} ({{method}})")],
            w=12,
        ),
        layout.panel(
            "Latest column scores and thresholds",
            [
                (f"driftloop_column_drift_score{{{m}}}", "score"),
                (f"driftloop_column_drift_threshold{{{m}}}", "threshold"),
                (f"driftloop_column_drift_detected{{{m}}}", "detected"),
            ],
            kind="table",
            w=12,
        ),
        layout.row("Quality and windows"),
        layout.panel(
            "Model quality",
            [(f"driftloop_quality{{{m}}}", "{{metric}}")],
            w=12,
            limit=limit,
            description=f"Metrics on the labelled part of each window; the line is "
            f"monitor.quality_limit for {cfg.primary_metric}.",
        ),
        layout.panel(
            "Window verdict",
            [(f"driftloop_window_verdict{{{m}}} == 1", "{{verdict}}")],
            kind="state-timeline",
            w=12,
        ),
        layout.panel("Window rows", [(f"driftloop_window_rows{{{m}}}", "rows")], w=8),
        layout.panel(
            "Label coverage",
            [(f"driftloop_label_coverage_ratio{{{m}}}", "coverage")],
            unit="percentunit",
            w=8,
        ),
        layout.panel(
            "Since last successful monitor run",
            [(f"time() - driftloop_monitor_last_success_timestamp_seconds{{{m}}}", "age")],
            unit="s",
            limit=2 * cfg.monitor.interval_seconds,
            w=8,
            description="The stale-monitor alert fires above the line "
            "(2 x monitor.interval_seconds).",
        ),
        layout.row("Serving"),
        layout.panel(
            "Requests per second by version",
            [(f"{by_version} (rate({req}{win}))", version)],
            unit="reqps",
            w=12,
        ),
        layout.panel(
            "5xx share by version",
            [(f"{by_version} (rate({err}{win})) / {by_version} (rate({req}{win}))", version)],
            unit="percentunit",
            limit=cfg.serving.max_error_ratio,
            w=12,
        ),
        layout.panel(
            "p95 latency by version",
            [
                (
                    f"histogram_quantile(0.95, sum by (service_version, le) (rate({lat}{win})))",
                    version,
                )
            ],
            unit="s",
            limit=cfg.serving.max_p95_latency_seconds,
            w=12,
        ),
        layout.panel(
            "Requests in progress",
            [(f"{by_version} (bentoml_service_request_in_progress{{{api}}})", version)],
            w=12,
        ),
        layout.row("Releases and approvals"),
        layout.panel(
            "Serving now",
            [(f"driftloop_serving_info{{{m}}}", "")],
            kind="table",
            w=24,
            description="The bento serving now, with its model tag, data rev, commit and approver.",
        ),
        layout.panel(
            "Releases",
            [(f"driftloop_release_timestamp_seconds{{{m}}} * 1000", "{{bento}}")],
            kind="table",
            w=8,
            unit="dateTimeAsIso",
        ),
        layout.panel(
            "Roll-forward outcomes",
            [
                (
                    f"sum by (outcome) (increase(driftloop_rollouts_total{{{m}}}[$__range]))",
                    "{{outcome}}",
                )
            ],
            kind="bargauge",
            w=8,
        ),
        layout.panel(
            "Approvals",
            [
                (
                    f"sum by (decision, channel) (increase(driftloop_approvals_total{{{m}}}"
                    "[$__range]))",
                    "{{decision}} via {{channel}}",
                )
            ],
            kind="bargauge",
            w=8,
        ),
    ]
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    name = cfg.project.name
    return {
        "uid": f"driftloop-{name}"[:40],
        "title": f"driftloop: {name}",
        "description": f"{_rendered_note(project)} One model's loop: drift, quality, the "
        "monitor's health, serving by bento version, releases and approvals.",
        "tags": ["driftloop"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "model",
                    "label": "model",
                    "type": "query",
                    "datasource": ds,
                    "query": {
                        "query": "label_values(driftloop_monitor_last_success_timestamp_seconds"
                        ", model)",
                        "refId": "model",
                    },
                    "definition": "label_values(driftloop_monitor_last_success_timestamp_seconds"
                    ", model)",
                    "current": {"text": name, "value": name},
                    "refresh": 2,
                }
            ]
        },
        "annotations": {
            "list": [
                {
                    "name": "Releases",
                    "datasource": ds,
                    "enable": True,
                    "iconColor": "green",
                    "expr": f"driftloop_release_timestamp_seconds{{{m}}} * 1000",
                    "useValueForTime": True,
                    "titleFormat": "release {{bento}}",
                    "step": "1m",
                },
                {
                    "name": "Alerts",
                    "datasource": ds,
                    "enable": True,
                    "iconColor": "red",
                    "expr": f'ALERTS{{{m},alertstate="firing"}}',
                    "titleFormat": "{{alertname}}",
                    "step": "1m",
                },
            ]
        },
        "panels": panels,
    }


@dataclass
class _Layout:
    """Places panels left to right, wrapping at Grafana's 24 columns; rows start a new line."""

    x: int = 0
    y: int = 0
    h: int = 8
    next_id: int = 1

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.h
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.h = h
        self.next_id += 1
        return pos

    def row(self, title: str) -> dict:
        if self.x:
            self.x, self.y = 0, self.y + self.h
        pos = self._place(24, 1)
        self.x, self.y = 0, self.y + 1
        return {
            "type": "row",
            "title": title,
            "id": self.next_id - 1,
            "gridPos": pos,
            "collapsed": False,
            "panels": [],
        }

    def panel(
        self,
        title: str,
        queries: list[tuple[str, str]],
        *,
        kind: str = "timeseries",
        w: int = 12,
        unit: str | None = None,
        limit: float | None = None,
        description: str = "",
    ) -> dict:
        ds = {"type": "prometheus", "uid": DATASOURCE_UID}
        table = kind == "table"
        steps: list[dict] = [{"color": "green", "value": None}]
        if limit is not None:
            steps.append({"color": "red", "value": limit})
        defaults: dict = {"thresholds": {"mode": "absolute", "steps": steps}}
        if unit:
            defaults["unit"] = unit
        if limit is not None and kind == "timeseries":
            defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
        pos = self._place(w, 8)
        return {
            "id": self.next_id - 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": ds,
            "gridPos": pos,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "right"}}
            if kind == "timeseries"
            else {},
            "transformations": [{"id": "merge", "options": {}}] if table else [],
            "targets": [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": ds,
                    "expr": expr,
                    "legendFormat": legend,
                    "instant": table,
                    "range": not table,
                    "format": "table" if table else "time_series",
                }
                for i, (expr, legend) in enumerate(queries)
            ],
        }


def grafana_provisioning(project: Project) -> dict[str, dict]:
    """Grafana's provisioning files: the Prometheus datasource and the dashboards folder."""
    return {
        "datasources/prometheus.yml": {
            "apiVersion": 1,
            "datasources": [
                {
                    "name": "driftloop Prometheus",
                    "uid": DATASOURCE_UID,
                    "type": "prometheus",
                    "access": "proxy",
                    "url": project.config.endpoints.prometheus,
                    "isDefault": True,
                    "jsonData": {
                        "timeInterval": f"{project.config.stack.scrape_interval_seconds}s"
                    },
                }
            ],
        },
        "dashboards/driftloop.yml": {
            "apiVersion": 1,
            "providers": [
                {
                    "name": "driftloop",
                    "folder": "driftloop",
                    "type": "file",
                    "disableDeletion": False,
                    "allowUiUpdates": False,
                    "options": {"path": GRAFANA_DASHBOARDS_DIR},
                }
            ],
        },
    }


# ---------------------------------------------------------------- compose


def compose(project: Project) -> dict:
    """The same services from official images, sharing one network namespace like a pod.

    Every container joins the `prefect` service's namespace, so the loopback URLs in the config
    (and the rendered prometheus.yml and alertmanager.yml) hold inside the containers too; the
    ports are published once, on `prefect`, bound where the config says.
    """
    cfg = project.config
    ep = cfg.endpoints
    name = cfg.project.name
    shared = {
        "network_mode": "service:prefect",
        "depends_on": ["prefect"],
        "restart": "unless-stopped",
    }
    bento_port = cfg.serving.slot_ports[0]
    published = [
        (urlsplit(url).hostname, urlsplit(url).port)
        for url in (ep.prefect, ep.pushgateway, ep.prometheus, ep.alertmanager, ep.worker)
    ] + [(cfg.serving.host, cfg.serving.port), (cfg.serving.host, bento_port)]
    return {
        "services": {
            "prefect": {
                "image": IMAGES["prefect"],
                "command": [
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(ep.port("prefect")),
                ],
                "environment": {
                    "PREFECT_UI_API_URL": f"{ep.prefect}/api",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                },
                "volumes": ["prefect-data:/root/.prefect"],
                "ports": [f"{host}:{port}:{port}" for host, port in published],
                "restart": "unless-stopped",
            },
            "prefect-worker": {
                **shared,
                "image": IMAGES["prefect"],
                "working_dir": "/opt/driftloop",
                "volumes": ["..:/opt/driftloop"],
                "environment": {
                    "PREFECT_API_URL": f"{ep.prefect}/api",
                    "PREFECT_WORKER_WEBSERVER_HOST": "0.0.0.0",
                    "PREFECT_WORKER_WEBSERVER_PORT": str(ep.port("worker")),
                },
                "command": [
                    "bash",
                    "-c",
                    "pip install -q -c constraints.txt -e . && exec prefect worker start "
                    f"--pool {cfg.stack.work_pool} --type process --with-healthcheck",
                ],
            },
            "pushgateway": {
                **shared,
                "image": IMAGES["pushgateway"],
                "volumes": ["pushgateway-data:/pushgateway"],  # the image's own nobody-owned dir
                "command": [
                    f"--web.listen-address=0.0.0.0:{ep.port('pushgateway')}",
                    "--persistence.file=/pushgateway/metrics.db",  # as the local stack does
                    "--persistence.interval=30s",
                ],
            },
            "prometheus": {
                **shared,
                "depends_on": ["prefect", "pushgateway", "alertmanager"],
                "image": IMAGES["prometheus"],
                "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus-data:/prometheus"],
                "command": [
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    f"--web.listen-address=0.0.0.0:{ep.port('prometheus')}",
                    f"--web.external-url={ep.prometheus}",
                    "--web.enable-lifecycle",
                ],
            },
            "alertmanager": {
                **shared,
                "image": IMAGES["alertmanager"],
                "volumes": [
                    "./alertmanager:/etc/alertmanager:ro",
                    "alertmanager-data:/alertmanager",
                ],
                "command": [
                    "--config.file=/etc/alertmanager/alertmanager.yml",
                    "--storage.path=/alertmanager",
                    f"--web.listen-address=0.0.0.0:{ep.port('alertmanager')}",
                    f"--web.external-url={ep.alertmanager}",
                    "--cluster.listen-address=",
                ],
            },
            "bento": {
                **shared,
                "image": f"{name}:${{BENTO_VERSION:?set BENTO_VERSION to a version built by "
                f"bentoml containerize {name}:<version>}}",
                "environment": {"BENTOML_PORT": str(bento_port)},
            },
            "nginx": {
                **shared,
                "depends_on": ["prefect", "bento"],
                "image": IMAGES["nginx"],
                "volumes": ["./docker/nginx.conf:/etc/nginx/conf.d/default.conf:ro"],
            },
        },
        "volumes": {
            name: {}
            for name in ("prefect-data", "pushgateway-data", "prometheus-data", "alertmanager-data")
        },
    }


def compose_nginx_conf(project: Project) -> str:
    """nginx in compose: clients' port to the bento container (one slot; no blue/green)."""
    serving = project.config.serving
    return f"""\
# {_rendered_note(project)}
server {{
    listen {serving.port};
    client_max_body_size 16m;
    location / {{
        proxy_pass http://127.0.0.1:{serving.slot_ports[0]};
        proxy_set_header Host $host;
        proxy_set_header X-Request-Id $request_id;
    }}
}}
"""


# ---------------------------------------------------------------- writing files


@dataclass(frozen=True)
class StackFiles:
    """The monitoring files `driftloop up` starts Prometheus and Alertmanager with."""

    prometheus_config: Path
    rules: Path
    alertmanager_config: Path


# Prefect deployments: flow name -> entrypoint. Each is registered once its module exists.
FLOW_DEPLOYMENTS = {
    "monitor": "flows/monitor.py:monitor",
    "retrain": "flows/retrain.py:retrain",
    "promote": "flows/promote.py:promote",
}


def prefect_yaml(project: Project) -> dict:
    """Where and when the flows run: the process work pool, code run in place, the schedule.

    Parameters come from config/driftloop.yaml at run time (DRIFTLOOP_CONFIG in the worker's
    environment), so nothing here repeats a value of the config but the schedule it derives.
    """
    cfg = project.config
    deployments = []
    for name, entrypoint in FLOW_DEPLOYMENTS.items():
        if not project.resolve(entrypoint.split(":")[0]).is_file():
            continue
        deployment: dict = {
            "name": name,
            "entrypoint": entrypoint,
            "work_pool": {"name": cfg.stack.work_pool},
            "tags": [cfg.project.name, name],
        }
        if name == "monitor":
            deployment["schedules"] = [{"interval": cfg.monitor.interval_seconds, "active": True}]
        else:
            deployment["concurrency_limit"] = {"limit": 1, "collision_strategy": "ENQUEUE"}
        deployments.append(deployment)
    return {
        "name": "driftloop",
        "prefect-version": "3.8.8",
        "build": None,
        "push": None,
        "pull": [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $DRIFTLOOP_ROOT }}"
                }
            }
        ],
        "deployments": deployments,
    }


def write_deployments(project: Project, out_dir: Path) -> list[Path]:
    """Write the committed monitoring files under `out_dir` (normally `deployments/`)."""
    note = _rendered_note(project)
    files: dict[str, str] = {
        "prometheus/rules.yml": _yaml(alert_rules(project), note),
        "prometheus/rules_test.yml": _yaml(rules_tests(project), note),
        "prometheus/prometheus.yml": _yaml(
            prometheus_config(project, "rules.yml", slot_targets(project)),
            f"{note} The local stack runs a copy with absolute paths from its state dir.",
        ),
        "alertmanager/alertmanager.yml": _yaml(
            alertmanager_config(project, None),
            f"{note} No Slack here: alerts go to the null receiver and show in the UI.",
        ),
        f"alertmanager/{TEMPLATE_FILE}": _template_text(note),
        "grafana/dashboards/driftloop.json": json.dumps(grafana_dashboard(project), indent=2)
        + "\n",
        "compose.yaml": _yaml(
            compose(project),
            f"{note}\n# Docker: `bentoml containerize {project.config.project.name}:<version>`, "
            "then BENTO_VERSION=<version> docker compose -f deployments/compose.yaml up",
        ),
        "docker/nginx.conf": compose_nginx_conf(project),
        "prefect.yaml": _yaml(prefect_yaml(project), note),
    }
    for rel, content in grafana_provisioning(project).items():
        files[f"grafana/provisioning/{rel}"] = _yaml(
            content, f"{note} Mount deployments/grafana/dashboards at {GRAFANA_DASHBOARDS_DIR}."
        )
    from tasks.render.kubernetes import (
        manifest_files,  # tasks.render.kubernetes builds on this module's helpers
    )

    for rel, text in manifest_files(project, note).items():
        files[f"k8s/{rel}"] = text
    return [_write(out_dir / rel, text) for rel, text in files.items()]


def write_runtime(project: Project, out_dir: Path, slack_webhook_file: Path | None) -> StackFiles:
    """Write the local stack's prometheus.yml, rules.yml and alertmanager.yml into `out_dir`."""
    out_dir = out_dir.resolve()
    note = _rendered_note(project)
    rules = _write(out_dir / "rules.yml", _yaml(alert_rules(project), note))
    _write(out_dir / TEMPLATE_FILE, _template_text(note))
    return StackFiles(
        prometheus_config=_write(
            out_dir / "prometheus.yml",
            _yaml(prometheus_config(project, str(rules), slot_targets(project)), note),
        ),
        rules=rules,
        alertmanager_config=_write(
            out_dir / "alertmanager.yml",
            _yaml(alertmanager_config(project, slack_webhook_file), note),
        ),
    )


def _template_text(note: str) -> str:
    return f"{{{{/* {note} */}}}}\n{alertmanager_template()}"


def _rendered_note(project: Project) -> str:
    try:
        source = project.path.relative_to(project.root).as_posix()
    except ValueError:
        source = project.path.name
    return f"Rendered from {source} by `driftloop render`; edit the config, not this file."


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, so rule expressions read as written; no anchors."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _yaml(data: dict, note: str) -> str:
    header = "".join(f"# {line.removeprefix('# ')}\n" for line in note.splitlines())
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)
    return header + body
