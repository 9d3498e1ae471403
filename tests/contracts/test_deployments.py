"""The committed monitoring files are a fresh render of the config; they agree with the docs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from config.loader import Project, load_project
from tasks.render.alert_tests import rules_tests
from tasks.render.alerts import alert_rules
from tasks.render.deployments import write_deployments
from tasks.render.grafana import grafana_dashboard
from tasks.render.names import GRAFANA_DASHBOARDS_DIR

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ROOT / "deployments"
METRIC_NAME = re.compile(r"\b(?:driftloop|bentoml)_[a-z_]+[a-z]")


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(ROOT / "config" / "driftloop.yaml")


def config_copy(tmp_path: Path, change: Callable[[dict], None]) -> Project:
    """A project whose config is the default one with `change` applied."""
    raw = yaml.safe_load((ROOT / "config" / "driftloop.yaml").read_text())
    change(raw)
    path = tmp_path / "config" / "driftloop.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "pyproject.toml").touch()  # marks tmp_path as the project root
    return load_project(path)


def rules_of(project: Project) -> list[dict]:
    return [rule for group in alert_rules(project)["groups"] for rule in group["rules"]]


def expr_of(project: Project, alert: str) -> str:
    return next(r["expr"] for r in rules_of(project) if r["alert"] == alert)


def test_committed_files_are_a_fresh_render_of_the_config(project, tmp_path):
    written = write_deployments(project, tmp_path)
    assert len(written) >= 10
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = DEPLOYMENTS / rel
        assert committed.is_file(), f"deployments/{rel} is missing: run `driftloop render`"
        assert committed.read_text() == path.read_text(), (
            f"deployments/{rel} differs from the config: run `driftloop render`"
        )


def test_every_file_says_it_is_rendered_and_holds_no_machine_path(project, tmp_path):
    for path in write_deployments(project, tmp_path):
        text = path.read_text()
        head = json.loads(text)["description"] if path.suffix == ".json" else text[:200]
        assert "Rendered from config/driftloop.yaml by `driftloop render`" in head, path.name
        assert str(ROOT) not in text and str(tmp_path) not in text, path.name


def test_alert_names_are_those_of_docs_metrics_md(project):
    docs = (ROOT / "docs" / "metrics.md").read_text().split("## Alert rules", 1)[1]
    documented = set(re.findall(r"^\| `(Driftloop\w+)`", docs, flags=re.M))
    assert len(documented) == 8
    assert {rule["alert"] for rule in rules_of(project)} == documented


def test_rules_and_panels_use_only_documented_metrics(project):
    documented = set(METRIC_NAME.findall((ROOT / "docs" / "metrics.md").read_text()))
    used = set(METRIC_NAME.findall(json.dumps(alert_rules(project))))
    used |= set(METRIC_NAME.findall(json.dumps(grafana_dashboard(project))))
    assert "driftloop_column_drift_score" in used
    assert used <= documented, f"not in docs/metrics.md: {sorted(used - documented)}"


def test_default_thresholds_are_the_configs(project):
    cfg = project.config
    assert expr_of(project, "DriftloopDatasetDrift").endswith(f">= {cfg.monitor.drift_share}")
    assert expr_of(project, "DriftloopQualityBelowThreshold").endswith(
        f'metric="rmse"}} > {cfg.monitor.quality_limit:g}'
    )
    assert f"> {2 * cfg.monitor.interval_seconds}" in expr_of(project, "DriftloopMonitorStale")
    assert expr_of(project, "DriftloopServingErrors").endswith(f"> {cfg.serving.max_error_ratio}")
    assert expr_of(project, "DriftloopServingLatency").endswith(
        f"> {cfg.serving.max_p95_latency_seconds:g}"
    )


def test_changing_a_threshold_in_the_config_changes_the_rules(project, tmp_path):
    def change(raw: dict) -> None:
        raw["monitor"].update(drift_share=0.4, interval_seconds=120, quality_limit=42.5)
        raw["serving"].update(max_error_ratio=0.05, max_p95_latency_seconds=1.25)

    changed = config_copy(tmp_path, change)
    expected = {
        "DriftloopDatasetDrift": ">= 0.4",
        "DriftloopQualityBelowThreshold": "> 42.5",
        "DriftloopMonitorStale": "> 240",
        "DriftloopServingErrors": "> 0.05",
        "DriftloopServingLatency": "> 1.25",
    }
    for alert, comparison in expected.items():
        assert comparison in expr_of(changed, alert)
        assert expr_of(changed, alert) != expr_of(project, alert)
    tests = json.dumps(rules_tests(changed))
    assert "0.7x10" in tests  # the drift test now straddles 0.4, not the default


def test_quality_rule_follows_the_metrics_direction(tmp_path):
    def change(raw: dict) -> None:
        raw["evaluate"]["primary"] = "r2"  # greater is better: worse means below the limit
        raw["monitor"]["quality_limit"] = 0.7

    changed = config_copy(tmp_path, change)
    assert expr_of(changed, "DriftloopQualityBelowThreshold").endswith('metric="r2"} < 0.7')


def test_no_quality_limit_renders_no_quality_rule_and_no_test(tmp_path):
    changed = config_copy(tmp_path, lambda raw: raw["monitor"].pop("quality_limit"))
    assert "DriftloopQualityBelowThreshold" not in {r["alert"] for r in rules_of(changed)}
    assert "DriftloopQualityBelowThreshold" not in json.dumps(rules_tests(changed))


def test_every_rule_carries_labels_and_evidence(project):
    for rule in rules_of(project):
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["labels"]["model"] == project.config.project.name
        assert rule["for"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"] and notes["runbook"], rule["alert"]
    drift = next(r for r in rules_of(project) if r["alert"] == "DriftloopDatasetDrift")
    assert "report_url" in drift["annotations"] and "runs_url" in drift["annotations"]


def test_every_rule_is_tested_not_firing_firing_and_resolved(project):
    groups = rules_tests(project)["tests"]
    for rule in rules_of(project):
        covered = False
        for group in groups:
            cases = [c for c in group["alert_rule_test"] if c["alertname"] == rule["alert"]]
            fired = [c["exp_alerts"][0]["exp_labels"] for c in cases if c["exp_alerts"]]
            if fired and all(rule["labels"].items() <= labels.items() for labels in fired):
                firing = [bool(c["exp_alerts"]) for c in cases]
                covered |= not firing[0] and not firing[-1]
        assert covered, f"no test group: {rule['alert']} quiet, firing, resolved"


def test_dashboard_is_well_formed_and_every_panel_queries_prometheus(project):
    dashboard = json.loads((DEPLOYMENTS / "grafana" / "dashboards" / "driftloop.json").read_text())
    datasource = yaml.safe_load(
        (DEPLOYMENTS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == project.config.endpoints.prometheus
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    queried = [p for p in panels if p["type"] != "row"]
    assert len(queried) >= 15
    for panel in queried:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        assert all(
            t["expr"].strip() and t["datasource"] == panel["datasource"] for t in panel["targets"]
        ), panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    titles = {p["title"]: p for p in queried}
    for wanted in (
        "Drift share",
        "Column drift scores",
        "Model quality",
        "5xx share by version",
        "p95 latency by version",
        "Serving now",
        "Approvals",
    ):
        assert wanted in titles
    steps = titles["Drift share"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == project.config.monitor.drift_share
    assert dashboard["templating"]["list"][0]["current"]["value"] == project.config.project.name


def test_dashboard_provider_points_at_a_folder(project):
    provider = yaml.safe_load(
        (DEPLOYMENTS / "grafana" / "provisioning" / "dashboards" / "driftloop.yml").read_text()
    )["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == GRAFANA_DASHBOARDS_DIR


def test_compose_runs_the_stacks_services_on_the_configs_ports(project):
    cfg = project.config
    doc = yaml.safe_load((DEPLOYMENTS / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {
        "prefect",
        "prefect-worker",
        "pushgateway",
        "prometheus",
        "alertmanager",
        "nginx",
        "bento",
    }
    ep = cfg.endpoints
    published = {int(p.rsplit(":", 1)[1]) for p in services["prefect"]["ports"]}
    assert published == {
        ep.port("prefect"),
        ep.port("pushgateway"),
        ep.port("prometheus"),
        ep.port("alertmanager"),
        ep.port("worker"),
        cfg.serving.port,
        cfg.serving.slot_ports[0],
    }
    assert all(p.startswith("127.0.0.1:") for p in services["prefect"]["ports"])
    listen = {
        "pushgateway": ep.port("pushgateway"),
        "prometheus": ep.port("prometheus"),
        "alertmanager": ep.port("alertmanager"),
    }
    for name, port in listen.items():
        assert f"--web.listen-address=0.0.0.0:{port}" in services[name]["command"], name
    assert services["prefect"]["command"][-1] == str(ep.port("prefect"))
    assert services["bento"]["environment"]["BENTOML_PORT"] == str(cfg.serving.slot_ports[0])
    assert f"listen {cfg.serving.port};" in (DEPLOYMENTS / "docker" / "nginx.conf").read_text()
    for name, service in services.items():
        if name != "prefect":
            assert service["network_mode"] == "service:prefect", name
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), image
    assert services["bento"]["image"].startswith(f"{cfg.project.name}:${{BENTO_VERSION:?")
    assert "prometheus.yml" in {p.name for p in (DEPLOYMENTS / "prometheus").iterdir()}
