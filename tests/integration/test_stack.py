"""`driftloop up | status | down` with the real binaries under supervisord, and failure paths."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from tests.fakes.webhook import Webhook
from tests.support import (
    BIN,
    copy_project,
    edit_config,
    free_port,
    prefect_auth,
    prefect_post,
    sh,
    tool_env,
)

pytestmark = pytest.mark.integration


def free_endpoints(raw: dict) -> None:
    for key in ("prefect", "pushgateway", "prometheus", "alertmanager", "worker", "reports"):
        raw["endpoints"][key] = f"http://127.0.0.1:{free_port()}"
    raw["serving"]["port"] = free_port()
    raw["serving"]["slot_ports"] = [free_port(), free_port()]
    raw["stack"]["scrape_interval_seconds"] = 1


def up(root: Path, env: dict[str, str] | None = None, check: bool = True):
    import subprocess

    done = subprocess.run(
        [str(BIN / "driftloop"), "up"],
        cwd=root,
        env={**tool_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=400,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def supervisor_running(root: Path) -> bool:
    pidfile = root / ".driftloop/stack/supervisord.pid"
    if not pidfile.exists():
        return False
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


@pytest.fixture
def stack_project(tmp_path):
    root = copy_project(tmp_path)
    edit_config(root, free_endpoints)
    yield root
    sh([str(BIN / "driftloop"), "down"], root, check=False)


def test_up_alert_reaches_slack_status_and_down(stack_project):
    from config.loader import load_project

    project = load_project(stack_project / "config/driftloop.yaml")
    ep = project.config.endpoints
    webhook = Webhook()
    try:
        slack = {"SLACK_WEBHOOK_URL": webhook.url}
        up(stack_project, env=slack)
        assert up(stack_project, env=slack).returncode == 0  # idempotent: `up` again is fine

        status = sh([str(BIN / "driftloop"), "status"], stack_project).stdout
        for name in (
            "prefect-server",
            "prefect-worker",
            "pushgateway",
            "prometheus",
            "alertmanager",
            "nginx",
        ):
            assert name in status
        assert status.count("RUNNING") == 6
        # the Prefect API answers only with the auth string; its health check without it
        assert httpx.get(f"{ep.prefect}/api/admin/version").status_code == 401
        assert httpx.post(f"{ep.prefect}/api/work_pools/filter", json={}).status_code == 403
        assert httpx.get(f"{ep.prefect}/api/csrf-token", params={"client": "x"}).status_code == 401
        assert httpx.get(f"{ep.prefect}/api/health").status_code == 200
        auth = prefect_auth(stack_project)
        no_csrf = httpx.post(f"{ep.prefect}/api/work_pools/filter", json={}, auth=auth)
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
        pool = prefect_post(ep.prefect, "/api/work_pools/filter", {}, auth).json()
        assert project.config.stack.work_pool in [p["name"] for p in pool]
        assert (stack_project / ".driftloop/prefect-auth").stat().st_mode & 0o777 == 0o600

        push_drift(ep.pushgateway, project.config.project.name, share=0.8)
        alert = wait_for(lambda: firing(ep.prometheus, "DriftloopDatasetDrift"), 150)
        assert alert["labels"]["model"] == project.config.project.name
        post = wait_for(lambda: next(iter(webhook.posts), None), 120)
        text = str(post)
        assert "DriftloopDatasetDrift" in text and "temp" in text and "0.4" in text
        pids = [int(p) for p in _pids(status)]
    finally:
        webhook.stop()
    assert "stack stopped" in sh([str(BIN / "driftloop"), "down"], stack_project).stdout
    assert not supervisor_running(stack_project)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_busy_port_is_named_and_nothing_starts(stack_project):
    from config.loader import load_project

    port = load_project(stack_project / "config/driftloop.yaml").config.endpoints.port("prometheus")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        done = up(stack_project, check=False)
    assert done.returncode == 1
    assert f"prometheus: port {port} on 127.0.0.1 is in use by another process" in done.stderr
    assert "Traceback" not in done.stderr
    assert not supervisor_running(stack_project)


def test_missing_binary_says_run_make_setup(stack_project, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    for tool in (
        "promtool",
        "amtool",
        "nginx",
        "prometheus-pushgateway",
        "prometheus-alertmanager",
        "git",
    ):
        real = sh(["which", tool], stack_project).stdout.strip()
        (shim / tool).symlink_to(real)
    done = up(stack_project, env={"PATH": f"{BIN}:{shim}"}, check=False)
    assert done.returncode == 1
    assert "prometheus: binary `prometheus` not found; run `make setup`" in done.stderr
    assert not supervisor_running(stack_project)


def test_invalid_rule_file_is_reported_and_nothing_starts(stack_project):
    (stack_project / "deployments/prometheus/mine.yml").write_text(
        "groups:\n- name: mine\n  rules:\n  - alert: Broken\n    expr: sum(by (\n"
    )
    edit_config(
        stack_project,
        lambda raw: raw["stack"].update(extra_rule_files=["deployments/prometheus/mine.yml"]),
    )
    done = up(stack_project, check=False)
    assert done.returncode == 1
    assert "prometheus: config invalid" in done.stderr and "mine.yml" in done.stderr
    assert not supervisor_running(stack_project)


# ---------------------------------------------------------------- helpers


def push_drift(gateway: str, model: str, share: float) -> None:
    registry = CollectorRegistry()
    Gauge("driftloop_drift_share", "", registry=registry).set(share)
    Gauge("driftloop_dataset_drift", "", registry=registry).set(1)
    labels = ["column", "method"]
    for name, value in (("score", 0.4), ("threshold", 0.1), ("detected", 1)):
        Gauge(f"driftloop_column_drift_{name}", "", labels, registry=registry).labels(
            "temp", "wasserstein"
        ).set(value)
    push_to_gateway(
        gateway, job="driftloop_monitor", registry=registry, grouping_key={"model": model}
    )


def firing(prometheus: str, name: str):
    alerts = httpx.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]
    return next(
        (a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"), None
    )


def wait_for(probe, timeout: float):
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        assert time.monotonic() < deadline, f"not seen within {timeout} s"
        time.sleep(1)
    return value


def _pids(status: str) -> list[str]:
    import re

    return re.findall(r"RUNNING\s*│\s*(\d+)", status)
