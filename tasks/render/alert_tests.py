"""A `promtool test rules` file for the alert rules: each rule stays quiet, fires, resolves.

The input series straddle the configured thresholds, so the tests follow a config change.
"""

from __future__ import annotations

import math

from config.loader import Project
from config.schema import METRICS
from tasks.render.alerts import (
    alert_rules,
    column_value,
    drifted_columns,
    first_value,
    monitor_selector,
)
from tasks.render.names import (
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
                drifted_columns(monitor_selector(project)): f"{col} (0.31)",
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
                column_value(project, "score"): "0.31",
                column_value(project, "threshold"): "0.1",
            },
        )
    )

    # model quality: the primary metric on the good side, the bad side, and back
    if cfg.monitor.quality_limit is not None:
        limit, primary = cfg.monitor.quality_limit, cfg.primary_metric
        step = (abs(limit) * 0.5 + 1) * (-1 if METRICS[primary][1] else 1)
        bad, good = limit + step, limit - step
        sel = monitor_selector(project)
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
                    first_value(f"driftloop_label_coverage_ratio{{{sel}}}", "%.2f"): "0.80",
                    first_value(f"driftloop_window_rows{{{sel}}}", "%.0f"): "400",
                },
            )
        )

    # estimated quality, no labels yet: the band lies past the limit for 10m, then recovers;
    # another model's estimate never counts
    estimated = rules.get(("DriftloopEstimatedQualityBelowThreshold", False))
    if estimated is not None:
        limit, primary = cfg.monitor.quality_limit, cfg.primary_metric
        step = (abs(limit) * 0.5 + 1) * (-1 if METRICS[primary][1] else 1)
        bad, good, half = limit + step, limit - step, abs(step) / 4
        est = {**mon, "metric": primary}
        sel = f'{monitor_selector(project)},metric="{primary}"'
        tests.append(
            _test(
                [
                    _series("driftloop_estimated_quality_breached", mon, "0x5 1x10 0x10"),
                    _series(
                        "driftloop_estimated_quality_breached",
                        {**mon, "model": "other-model"},
                        "1x27",
                    ),
                    _series("driftloop_estimated_quality", est, f"{good}x5 {bad}x10 {good}x10"),
                    _series("driftloop_estimated_quality_lower", est, f"{bad - half}x27"),
                    _series("driftloop_estimated_quality_upper", est, f"{bad + half}x27"),
                    _series("driftloop_label_coverage_ratio", mon, "0x27"),
                ],
                "DriftloopEstimatedQualityBelowThreshold",
                estimated,
                mon,
                {"5m": False, "10m": True, "20m": False},
                {
                    first_value(f"driftloop_estimated_quality{{{sel}}}", "%.3g"): f"{bad:.3g}",
                    first_value(f"driftloop_estimated_quality_lower{{{sel}}}", "%.3g"): (
                        f"{bad - half:.3g}"
                    ),
                    first_value(f"driftloop_estimated_quality_upper{{{sel}}}", "%.3g"): (
                        f"{bad + half:.3g}"
                    ),
                    first_value(
                        f"driftloop_label_coverage_ratio{{{monitor_selector(project)}}}", "%.2f"
                    ): "0.00",
                },
            )
        )

    # window against window: identical windows change nothing, a step change fires, then the
    # next window equals the stepped one and it resolves; another model's change never counts
    change = cfg.monitor.change_share or cfg.monitor.drift_share
    stepped = (1 + change) / 2
    tests.append(
        _test(
            [
                _series("driftloop_window_change_share", mon, f"0x5 {stepped}x10 0x10"),
                _series("driftloop_sudden_change", mon, "0x5 1x10 0x10"),
                _series("driftloop_sudden_change", {**mon, "model": "other-model"}, "1x27"),
            ],
            "DriftloopSuddenChange",
            rules[("DriftloopSuddenChange", False)],
            mon,
            {"5m": False, "6m30s": False, "10m": True, "20m": False},
            {
                first_value(
                    f"driftloop_window_change_share{{{monitor_selector(project)}}}", "%.2f"
                ): f"{stepped:.2f}"
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
    for i, le in enumerate([*map(format_number, bounds), "+Inf"]):
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
