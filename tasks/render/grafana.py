"""The Grafana dashboard for one model's loop and Grafana's provisioning files."""

from __future__ import annotations

from dataclasses import dataclass

from config.loader import Project
from tasks.render.files import rendered_note
from tasks.render.names import API_CALLS, DATASOURCE_UID, GRAFANA_DASHBOARDS_DIR, SLOTS_JOB

_MODEL = 'model="$model"'  # the dashboard's model variable: every query selects by it
_MODELS_QUERY = "label_values(driftloop_monitor_last_success_timestamp_seconds, model)"


def grafana_dashboard(project: Project) -> dict:
    """Drift, quality (realised and estimated), the change between windows, the monitor's
    health, serving by version, releases and approvals."""
    layout = _Layout()
    panels = [
        *_drift_row(layout, project),
        *_quality_row(layout, project),
        *_estimate_row(layout, project),
        *_serving_row(layout, project),
        *_releases_row(layout),
    ]
    name = project.config.project.name
    return {
        "uid": f"driftloop-{name}"[:40],
        "title": f"driftloop: {name}",
        "description": f"{rendered_note(project)} One model's loop: drift, quality (realised "
        "and estimated), the change between windows, the monitor's health, serving by bento "
        "version, releases and approvals.",
        "tags": ["driftloop"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": [_model_variable(name)]},
        "annotations": {"list": _annotations()},
        "panels": panels,
    }


def _drift_row(layout: _Layout, project: Project) -> list[dict]:
    """The dataset's drift share against its threshold, and each column's scores."""
    m = _MODEL
    return [
        layout.row("Drift"),
        layout.panel(
            "Drift share",
            [(f"driftloop_drift_share{{{m}}}", "drift share")],
            unit="percentunit",
            limit=project.config.monitor.drift_share,
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
    ]


def _quality_row(layout: _Layout, project: Project) -> list[dict]:
    """Model quality against its limit, the window's verdict and size, the monitor's age."""
    cfg, m = project.config, _MODEL
    return [
        layout.row("Quality and windows"),
        layout.panel(
            "Model quality",
            [(f"driftloop_quality{{{m}}}", "{{metric}}")],
            w=12,
            limit=cfg.monitor.quality_limit,
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
    ]


def _estimate_row(layout: _Layout, project: Project) -> list[dict]:
    """Quality estimated before the labels arrive, beside the realised value, the estimate's
    error, and each window against the previous usable one."""
    cfg, m = project.config, _MODEL
    primary = f'{m},metric="{cfg.primary_metric}"'
    change = cfg.monitor.change_share or cfg.monitor.drift_share
    key = "monitor.change_share" if cfg.monitor.change_share else "monitor.drift_share"
    band = [  # the band is shaded between its two edges, drawn without lines
        {
            "matcher": {"id": "byName", "options": "band upper"},
            "properties": [
                {"id": "custom.fillBelowTo", "value": "band lower"},
                {"id": "custom.lineWidth", "value": 0},
            ],
        },
        {
            "matcher": {"id": "byName", "options": "band lower"},
            "properties": [{"id": "custom.lineWidth", "value": 0}],
        },
    ]
    return [
        layout.row("Estimated quality and window change"),
        layout.panel(
            f"Estimated {cfg.primary_metric} and realised",
            [
                (f"driftloop_estimated_quality{{{primary}}}", "estimated"),
                (f"driftloop_estimated_quality_lower{{{primary}}}", "band lower"),
                (f"driftloop_estimated_quality_upper{{{primary}}}", "band upper"),
                (f"driftloop_quality{{{primary}}}", "realised"),
            ],
            w=12,
            limit=cfg.monitor.quality_limit,
            overrides=band,
            description=f"{cfg.primary_metric} estimated without labels, with its band "
            f"({cfg.estimate.confidence:.0%} of windows), beside the value on labelled rows; "
            "the line is monitor.quality_limit.",
        ),
        layout.panel(
            "Estimate error",
            [(f"driftloop_estimate_error{{{m}}}", "{{metric}}")],
            w=6,
            description="The estimate minus the realised value, once a window's labels arrived.",
        ),
        layout.panel(
            "Estimate past the limit",
            [(f"max(driftloop_estimated_quality_breached{{{m}}})", "breached")],
            kind="stat",
            w=6,
        ),
        layout.panel(
            "Change since the previous window",
            [(f"driftloop_window_change_share{{{m}}}", "changed share")],
            unit="percentunit",
            limit=change,
            w=12,
            description="Share of feature columns drifted against the previous usable window, "
            f"with the reference's methods and thresholds; the line is {key}.",
        ),
        layout.panel(
            "Sudden change",
            [(f"max(driftloop_sudden_change{{{m}}})", "sudden change")],
            kind="stat",
            w=12,
        ),
    ]


def _serving_row(layout: _Layout, project: Project) -> list[dict]:
    """Prediction traffic, errors, latency and load per bento version (API calls only)."""
    serving = project.config.serving
    api = f'job="{SLOTS_JOB}",{_MODEL},{API_CALLS}'
    by_version, version = "sum by (service_version)", "{{service_version}}"
    req = f"bentoml_service_request_total{{{api}}}"
    err = f'bentoml_service_request_total{{{api},http_response_code=~"5.."}}'
    lat = f"bentoml_service_request_duration_seconds_bucket{{{api}}}"
    win = "[$__rate_interval]"
    return [
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
            limit=serving.max_error_ratio,
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
            limit=serving.max_p95_latency_seconds,
            w=12,
        ),
        layout.panel(
            "Requests in progress",
            [(f"{by_version} (bentoml_service_request_in_progress{{{api}}})", version)],
            w=12,
        ),
    ]


def _releases_row(layout: _Layout) -> list[dict]:
    """The bento serving now, past releases, roll-forward outcomes and approval decisions."""
    m = _MODEL
    return [
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


def _datasource() -> dict:
    return {"type": "prometheus", "uid": DATASOURCE_UID}


def _model_variable(name: str) -> dict:
    """The dashboard's `model` variable: every model the monitor reports, this one first."""
    return {
        "name": "model",
        "label": "model",
        "type": "query",
        "datasource": _datasource(),
        "query": {"query": _MODELS_QUERY, "refId": "model"},
        "definition": _MODELS_QUERY,
        "current": {"text": name, "value": name},
        "refresh": 2,
    }


def _annotations() -> list[dict]:
    """Releases and firing alerts marked on every time panel."""
    m = _MODEL
    return [
        {
            "name": "Releases",
            "datasource": _datasource(),
            "enable": True,
            "iconColor": "green",
            "expr": f"driftloop_release_timestamp_seconds{{{m}}} * 1000",
            "useValueForTime": True,
            "titleFormat": "release {{bento}}",
            "step": "1m",
        },
        {
            "name": "Alerts",
            "datasource": _datasource(),
            "enable": True,
            "iconColor": "red",
            "expr": f'ALERTS{{{m},alertstate="firing"}}',
            "titleFormat": "{{alertname}}",
            "step": "1m",
        },
    ]


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
        overrides: list[dict] | None = None,
    ) -> dict:
        ds = _datasource()
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
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
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
