"""The rendered monitoring files against the real promtool, amtool, docker-compose, Pushgateway
and Prometheus: configs load, every rule's tests pass, every dashboard query runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway
from prometheus_client.exposition import start_http_server

from config.loader import Project, load_project
from tasks.render.alert_tests import rules_tests
from tasks.render.alerts import alert_rules, drift_report_key
from tasks.render.compose import compose as render_compose
from tasks.render.deployments import write_deployments
from tasks.render.grafana import grafana_dashboard
from tasks.render.names import IMAGES, MONITOR_JOB, SERVING_JOB
from tasks.render.runtime import write_runtime
from tests.support import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ROOT / "deployments"


def need(binary: str) -> str:
    """The binary's path; a missing one is a broken setup, not a reason to skip."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} is not installed: run `make setup` (it installs the Debian packages)"
        )
    return path


def run(args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 60):
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"{done.args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(ROOT / "config" / "driftloop.yaml")


@pytest.fixture(scope="module", params=["committed", "rendered"])
def deployments(request, project, tmp_path_factory) -> Path:
    """The committed deployments/ tree, and a fresh render of the config in a temp dir."""
    if request.param == "committed":
        return DEPLOYMENTS
    out = tmp_path_factory.mktemp("deployments")
    write_deployments(project, out)
    return out


def config_variant(tmp_path: Path, change) -> Project:
    raw = yaml.safe_load((ROOT / "config" / "driftloop.yaml").read_text())
    change(raw)
    path = tmp_path / "driftloop.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_project(path)


# ---------------------------------------------------------------- promtool and amtool


def test_promtool_checks_the_prometheus_config(deployments):
    out = ok(run([need("promtool"), "check", "config", "prometheus/prometheus.yml"], deployments))
    assert "SUCCESS: 1 rule files found" in out


def test_promtool_checks_the_rules(deployments):
    out = ok(run([need("promtool"), "check", "rules", "prometheus/rules.yml"], deployments))
    assert re.search(r"SUCCESS: \d+ rules found", out)


def test_promtool_runs_the_rules_tests(deployments):
    ok(run([need("promtool"), "test", "rules", "prometheus/rules_test.yml"], deployments))


def test_the_rules_tests_catch_a_wrong_threshold(project, tmp_path):
    """The tests are not vacuous: rules with a drifted threshold fail them."""
    write_deployments(project, tmp_path)
    rules = tmp_path / "prometheus" / "rules.yml"
    share = project.config.monitor.drift_share
    rules.write_text(rules.read_text().replace(f">= {share}", f">= {(1 + share) / 1.9}"))
    done = run([need("promtool"), "test", "rules", "prometheus/rules_test.yml"], tmp_path)
    assert done.returncode != 0 and "DriftloopDatasetDrift" in done.stdout + done.stderr


def _no_quality_limit(raw: dict) -> None:
    raw["monitor"].pop("quality_limit")


def _greater_is_better(raw: dict) -> None:
    raw["evaluate"]["primary"] = "r2"
    raw["monitor"]["quality_limit"] = 0.75


def _other_thresholds(raw: dict) -> None:
    raw["monitor"].update(drift_share=0.2, interval_seconds=45)
    raw["serving"].update(max_error_ratio=0.2, max_p95_latency_seconds=0.05)


@pytest.mark.parametrize("change", [_no_quality_limit, _greater_is_better, _other_thresholds])
def test_rules_and_their_tests_follow_a_config_change(change, tmp_path):
    changed = config_variant(tmp_path, change)
    out = tmp_path / "out"
    write_deployments(changed, out)
    ok(run([need("promtool"), "check", "rules", "prometheus/rules.yml"], out))
    ok(run([need("promtool"), "test", "rules", "prometheus/rules_test.yml"], out))


def test_amtool_checks_the_null_receiver_variant(deployments):
    out = ok(run([need("amtool"), "check-config", "alertmanager/alertmanager.yml"], deployments))
    assert "1 receivers" in out and "1 templates" in out


def test_amtool_checks_the_slack_variant_and_the_webhook_stays_in_its_file(project, tmp_path):
    webhook = tmp_path / "slack-webhook"
    webhook.write_text("https://hooks.slack.example/services/T0/B0/secret\n")
    files = write_runtime(project, tmp_path / "stack", webhook)
    ok(run([need("amtool"), "check-config", str(files.alertmanager_config)]))
    config = yaml.safe_load(files.alertmanager_config.read_text())
    slack = config["receivers"][0]["slack_configs"][0]
    assert slack["api_url_file"] == str(webhook)
    assert config["route"]["group_by"] == ["alertname", "model"]
    assert "secret" not in files.alertmanager_config.read_text()


def test_slack_message_states_the_evidence(project, tmp_path):
    """The Slack text for a firing drift alert, rendered by amtool from the real template."""
    write_runtime(project, tmp_path, None)
    group = next(
        g for g in rules_tests(project)["tests"] if g["name"].startswith("DriftloopDataset")
    )
    expected = next(c["exp_alerts"][0] for c in group["alert_rule_test"] if c["exp_alerts"])
    alert = {
        "status": "firing",
        "labels": {"alertname": "DriftloopDatasetDrift", **expected["exp_labels"]},
        "annotations": expected["exp_annotations"],
        "startsAt": "2025-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": f"{project.config.endpoints.prometheus}/graph",
        "fingerprint": "0",
    }
    data = tmp_path / "data.json"
    data.write_text(
        json.dumps(
            {
                "receiver": "slack",
                "status": "firing",
                "alerts": [alert],
                "groupLabels": {"alertname": "DriftloopDatasetDrift"},
                "commonLabels": alert["labels"],
                "commonAnnotations": {},
                "externalURL": project.config.endpoints.alertmanager,
            }
        )
    )

    def show(name: str) -> str:
        args = [need("amtool"), "template", "render", f"--template.glob={tmp_path}/*.tmpl"]
        args += [f'--template.text={{{{ template "{name}" . }}}}', f"--template.data={data}"]
        return ok(run(args))

    text = show("driftloop.text")
    column = (project.config.data.numeric or ["column_a"])[0]
    assert f"{column} (0.31)" in text  # which column, and its score
    assert f"monitor.drift_share {project.config.monitor.drift_share}" in text  # the threshold
    assert drift_report_key(project) in text and "/runs|monitor runs>" in text
    assert "Next: " in text
    assert "[FIRING:1] DriftloopDatasetDrift" in show("driftloop.title")


# ---------------------------------------------------------------- docker-compose


def compose_env(**extra: str) -> dict[str, str]:
    """No daemon needed: `config` only parses; a bogus DOCKER_HOST proves it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    return {**env, "DOCKER_HOST": "unix:///nonexistent/docker.sock", **extra}


def test_docker_compose_validates_the_compose_file(project):
    compose = [need("docker-compose"), "-f", str(DEPLOYMENTS / "compose.yaml"), "config"]
    out = ok(run([*compose, "--services"], env=compose_env(BENTO_VERSION="20250101-test")))
    assert set(out.split()) == set(render_compose(project)["services"])
    resolved = yaml.safe_load(ok(run(compose, env=compose_env(BENTO_VERSION="20250101-test"))))
    assert resolved["services"]["bento"]["image"] == f"{project.config.project.name}:20250101-test"


def test_compose_refuses_to_guess_the_bento_version():
    compose = [need("docker-compose"), "-f", str(DEPLOYMENTS / "compose.yaml"), "config"]
    done = run(compose, env=compose_env())
    assert done.returncode != 0 and "bentoml containerize" in done.stderr


def test_compose_images_are_the_releases_of_the_local_binaries():
    versions = {
        "prometheus": ok(run([need("prometheus"), "--version"])),
        "pushgateway": ok(run([need("prometheus-pushgateway"), "--version"])),
        "alertmanager": ok(run([need("prometheus-alertmanager"), "--version"])),
    }
    for service, out in versions.items():
        local = re.search(r"version (\d+\.\d+\.\d+)", out).group(1)
        assert IMAGES[service].endswith(f":v{local}"), (service, local)


# ---------------------------------------------------------------- a live Prometheus


@dataclass
class Live:
    project: Project
    url: str


def _wait(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _push_monitor_and_release_metrics(gateway: str, name: str) -> None:
    """One monitor run (drifting, bad quality, stamp long ago) and one release, as pushed."""
    reg = CollectorRegistry()
    Gauge("driftloop_drift_share", "", registry=reg).set(0.8)
    Gauge("driftloop_dataset_drift", "", registry=reg).set(1)
    col = ["column", "method"]
    Gauge("driftloop_column_drift_score", "", col, registry=reg).labels("temp", "wasserstein").set(
        0.4
    )
    Gauge("driftloop_column_drift_threshold", "", col, registry=reg).labels(
        "temp", "wasserstein"
    ).set(0.1)
    Gauge("driftloop_column_drift_detected", "", col, registry=reg).labels(
        "temp", "wasserstein"
    ).set(1)
    Gauge("driftloop_quality", "", ["metric"], registry=reg).labels("rmse").set(1e6)
    estimate = {"": 9e5, "_lower": 8e5, "_upper": 1.1e6}  # the whole band past the limit
    for suffix, value in estimate.items():
        Gauge(f"driftloop_estimated_quality{suffix}", "", ["metric"], registry=reg).labels(
            "rmse"
        ).set(value)
    Gauge("driftloop_estimate_error", "", ["metric"], registry=reg).labels("rmse").set(-1e5)
    Gauge("driftloop_estimated_quality_breached", "", registry=reg).set(1)
    Gauge("driftloop_window_change_share", "", registry=reg).set(0.9)
    Gauge("driftloop_sudden_change", "", registry=reg).set(1)
    Gauge("driftloop_window_rows", "", registry=reg).set(400)
    Gauge("driftloop_label_coverage_ratio", "", registry=reg).set(0.8)
    Gauge("driftloop_window_verdict", "", ["verdict"], registry=reg).labels("ok").set(1)
    Gauge("driftloop_monitor_duration_seconds", "", registry=reg).set(3.2)
    Gauge("driftloop_monitor_last_success_timestamp_seconds", "", registry=reg).set(
        time.time() - 1e6
    )
    push_to_gateway(gateway, job=MONITOR_JOB, registry=reg, grouping_key={"model": name})

    reg = CollectorRegistry()
    info = ["bento", "model_tag", "data_rev", "git_commit", "approver"]
    Gauge("driftloop_serving_info", "", info, registry=reg).labels(
        f"{name}:v2", f"{name}:m2", "abc", "def", "ana"
    ).set(1)
    Counter("driftloop_rollouts_total", "", ["outcome"], registry=reg).labels("promoted").inc()
    Counter("driftloop_approvals_total", "", ["decision", "channel"], registry=reg).labels(
        "approve", "cli"
    ).inc()
    Gauge("driftloop_release_timestamp_seconds", "", ["bento"], registry=reg).labels(
        f"{name}:v2"
    ).set(time.time())
    push_to_gateway(gateway, job=SERVING_JOB, registry=reg, grouping_key={"model": name})


def _fake_slot(port: int, name: str, stop: threading.Event):
    """A stand-in for a bento's /metrics: slow, failing prediction traffic plus probe hits."""
    reg = CollectorRegistry()
    labels = ["endpoint", "service_name", "service_version", "http_response_code"]
    total = Counter("bentoml_service_request_total", "", labels, registry=reg)
    duration = Histogram("bentoml_service_request_duration_seconds", "", labels, registry=reg)
    Gauge("bentoml_service_request_in_progress", "", labels[:3], registry=reg).labels(
        "/predict", name, "v2"
    ).set(1)
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=reg)

    def traffic() -> None:
        while not stop.wait(0.1):
            for code in ("200", "500"):
                total.labels("/predict", name, "v2", code).inc(5)
                duration.labels("/predict", name, "v2", code).observe(3.0)
            total.labels("/readyz", name, "v2", "200").inc()

    threading.Thread(target=traffic, daemon=True).start()
    return server


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def live(project, tmp_path_factory) -> Iterator[Live]:
    """A real Pushgateway and Prometheus on free loopback ports, running the rendered config."""
    prometheus, pushgateway = need("prometheus"), need("prometheus-pushgateway")
    tmp = tmp_path_factory.mktemp("live")
    ports = {name: free_port() for name in ("prometheus", "pushgateway", "alertmanager")}
    slots = [free_port(), free_port()]  # blue is the fake slot, green is down (as when idle)
    cfg = project.config
    variant = Project(
        config=cfg.model_copy(
            update={
                "endpoints": cfg.endpoints.model_copy(
                    update={k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
                ),
                "serving": cfg.serving.model_copy(update={"slot_ports": slots}),
                "stack": cfg.stack.model_copy(update={"scrape_interval_seconds": 1}),
            }
        ),
        path=project.path,
        root=project.root,
    )
    name = cfg.project.name
    processes: list[subprocess.Popen] = []
    stop = threading.Event()
    server = _fake_slot(slots[0], name, stop)
    try:
        log = (tmp / "pushgateway.log").open("w")
        processes.append(
            subprocess.Popen(
                [pushgateway, f"--web.listen-address=127.0.0.1:{ports['pushgateway']}"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        gateway = f"http://127.0.0.1:{ports['pushgateway']}"
        _wait(lambda: httpx.get(f"{gateway}/-/ready").status_code == 200, "the Pushgateway")
        _push_monitor_and_release_metrics(gateway, name)

        files = write_runtime(variant, tmp / "stack", None)
        log = (tmp / "prometheus.log").open("w")
        processes.append(
            subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={files.prometheus_config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                    f"--web.external-url={variant.config.endpoints.prometheus}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        url = variant.config.endpoints.prometheus
        _wait(lambda: httpx.get(f"{url}/-/ready").status_code == 200, "Prometheus")
        yield Live(variant, url)
    finally:
        stop.set()
        server.shutdown()
        for process in processes:
            _stop(process)


def query(live: Live, expr: str) -> dict:
    body = httpx.get(f"{live.url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body


def concrete(expr: str, model: str) -> str:
    """A Grafana query with its variables replaced the way Grafana would."""
    values = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$model": model}
    for variable, value in values.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


def test_every_dashboard_query_runs_against_prometheus(live):
    name = live.project.config.project.name
    dashboard = grafana_dashboard(live.project)
    targets = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    assert len(targets) >= 18
    # data for every panel once the pushed and scraped series have two samples each
    for title, expr in targets:
        _wait(lambda e=expr: query(live, concrete(e, name))["data"]["result"], f"data for {title}")
    for annotation in dashboard["annotations"]["list"]:
        query(live, concrete(annotation["expr"], name))
    variable = dashboard["templating"]["list"][0]["query"]["query"]
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable).groups()
    series = httpx.get(f"{live.url}/api/v1/series", params={"match[]": metric}).json()["data"]
    assert name in {s[label] for s in series}


def test_every_rule_loads_and_matches_the_published_series(live):
    """With the live series breaking every threshold, each alert becomes pending or firing."""

    def active() -> set[str]:
        alerts = httpx.get(f"{live.url}/api/v1/alerts").json()["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts}

    expected = {r["alert"] for g in alert_rules(live.project)["groups"] for r in g["rules"]}
    _wait(lambda: active() >= expected, f"all of {sorted(expected)} pending")
    groups = httpx.get(f"{live.url}/api/v1/rules").json()["data"]["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert rule["health"] == "ok", rule
    alerts = httpx.get(f"{live.url}/api/v1/alerts").json()["data"]["alerts"]
    errors = next(a for a in alerts if a["labels"]["alertname"] == "DriftloopServingErrors")
    assert errors["labels"]["service_version"] == "v2"
    assert float(errors["value"]) == pytest.approx(0.5, abs=0.01)  # probes are left out
    drift = next(a for a in alerts if a["labels"]["alertname"] == "DriftloopDatasetDrift")
    assert "temp (0.4)" in drift["annotations"]["description"]  # the evidence, from the series
    estimated = next(
        a for a in alerts if a["labels"]["alertname"] == "DriftloopEstimatedQualityBelowThreshold"
    )
    assert "is 9e+05, band 8e+05 to 1.1e+06" in estimated["annotations"]["description"]
    change = next(a for a in alerts if a["labels"]["alertname"] == "DriftloopSuddenChange")
    assert change["annotations"]["description"].startswith("0.90 of the feature columns")
