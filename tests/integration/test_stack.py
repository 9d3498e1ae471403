"""`driftloop up | status | down` with the real binaries under supervisord, and failure paths."""

from __future__ import annotations

import os
import socket
import sys
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
        slack = {"SLACK_WEBHOOK_URL": webhook.url, **SECRETS}
        up(stack_project, env=slack)
        hook = stack_project / ".driftloop/stack/secrets/slack_webhook_url"
        hook.chmod(0o644)  # an older file's mode must not survive the next `up`
        assert up(stack_project, env=slack).returncode == 0  # idempotent: `up` again is fine
        assert hook.stat().st_mode & 0o777 == 0o600
        conf = stack_project / ".driftloop/stack/supervisord.conf"
        assert conf.stat().st_mode & 0o777 == 0o600  # it holds the worker's secrets
        secrets_reach_only_the_worker(project, webhook.url)

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


SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-test-bot-token",
    "SLACK_SIGNING_SECRET": "test-signing-secret",
    "SLACK_APP_TOKEN": "xapp-test-app-token",
    "DRIFTLOOP_DECISION_KEY": "test-decision-key-" + "k" * 16,
}


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def secrets_reach_only_the_worker(project, webhook_url: str) -> None:
    """/proc/PID/environ of every program: only the worker holds the Slack tokens and the
    decision key; a serving slot, added as `start_slot` adds one, holds none of them."""
    from tasks.release import serving
    from tasks.stack.paths import stack_dir
    from tasks.stack.supervisor import program_section, program_states, supervisorctl

    slot = stack_dir(project) / "slots" / "blue.conf"
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    env = {"BENTOML_HOME": "x", **serving.thread_env(project), **serving.capture_env(project)}
    slot.write_text("\n".join(program_section(project, "bento-blue", sleeper, env)) + "\n")

    def slot_running():
        states = program_states(project)
        return states if states.get("bento-blue", ("",))[0] == "RUNNING" else None

    supervisorctl(project, "update", check=True)
    try:
        states = wait_for(slot_running, 30)
        secret = {*SECRETS, "SLACK_WEBHOOK_URL", "PREFECT_API_AUTH_STRING"}
        worker = environ(states["prefect-worker"][1])
        assert {k: worker.get(k) for k in SECRETS} == SECRETS
        assert worker["SLACK_WEBHOOK_URL"] == webhook_url and worker["PREFECT_API_AUTH_STRING"]
        nginx = states["nginx"][1]
        for name, pid in [
            *[(n, states[n][1]) for n in ("nginx", "prometheus", "pushgateway", "alertmanager")],
            *[("nginx worker", child) for child in children(nginx)],
            ("bento-blue", states["bento-blue"][1]),
        ]:
            env = environ(pid)
            leaked = sorted(k for k in env if k in secret or k.startswith("SLACK_"))
            assert not leaked, f"{name} (pid {pid}) holds {leaked}"
        server = environ(states["prefect-server"][1])
        assert not [k for k in server if k.startswith("SLACK_") or k == "DRIFTLOOP_DECISION_KEY"]
    finally:
        serving.stop_slot(project, "blue")


def test_a_newline_in_config_or_path_starts_no_program(tmp_path):
    """A config value or a project path holding `\\n[program:evil]\\ncommand=...` is refused
    before anything is written or started: no such program, no marker file."""
    marker = tmp_path / "pwned"
    evil = f"x\n[program:evil]\ncommand=/bin/touch {marker}"

    pooled = copy_project(tmp_path / "pool")
    edit_config(pooled, free_endpoints)
    edit_config(pooled, lambda raw: raw["stack"].update(work_pool=evil))
    done = up(pooled, check=False)
    assert done.returncode != 0 and "stack.work_pool" in done.stderr + done.stdout
    assert "control character" in done.stderr + done.stdout
    assert not (pooled / ".driftloop/stack/supervisord.conf").exists()

    placed = tmp_path / f"{evil}\n;" / "proj"  # the path itself, as a clone could be named
    placed.mkdir(parents=True)
    copy_project(placed)
    edit_config(placed, free_endpoints)
    done = up(placed, check=False)
    assert done.returncode == 1 and "control character" in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (placed / ".driftloop/stack/supervisord.conf").exists()
    for root in (pooled, placed):
        assert not supervisor_running(root)
    time.sleep(2)  # what an injected program would have had to touch the marker
    assert not marker.exists()


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
