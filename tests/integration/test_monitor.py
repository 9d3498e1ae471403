"""The monitor on the real stack: replayed traffic, a monitor run, metrics in Prometheus, a notice
thread at a local Slack Web API, the report served, Prefect artifacts, and the stale alert."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.fakes.slack_api import FakeSlack
from tests.integration.test_stack import firing, free_endpoints, up, wait_for
from tests.support import (
    BIN,
    copy_project,
    driftloop,
    edit_config,
    prefect_auth,
    prefect_post,
    sh,
    tool_env,
)

pytestmark = pytest.mark.integration


def monitor(root: Path, env: dict, start: str, end: str) -> dict:
    done = subprocess.run(
        [str(BIN / "driftloop"), "monitor", "--start", start, "--end", end],
        cwd=root,
        env={**tool_env(), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return json.loads(done.stdout[done.stdout.index("{") :])


@pytest.fixture
def live(tmp_path):
    """A fresh clone with its stack up, the first model serving behind nginx, Slack faked."""
    root = copy_project(tmp_path)

    def change(raw):
        free_endpoints(raw)
        raw["monitor"]["interval_seconds"] = 10  # stale after 20 s without a run

    edit_config(root, change)
    driftloop(root, "data")
    driftloop(root, "train")
    slack = FakeSlack().start()
    env = {"SLACK_BOT_TOKEN": slack.token, "SLACK_API_URL": slack.url}
    up(root, env=env)
    from config.loader import load_project
    from tasks.release.package import build_bento, register_model
    from tasks.release.rollout import go_live

    project = load_project(root / "config/driftloop.yaml")
    sh(
        [
            str(BIN / "supervisorctl"),
            "-c",
            str(root / ".driftloop/stack/supervisord.conf"),
            "stop",
            "prefect-worker",
        ],
        root,
    )  # only the runs this test starts
    go_live(project, build_bento(project, register_model(project)))
    yield project, slack, env
    slack.stop()
    sh([str(BIN / "driftloop"), "down"], root, check=False)


def test_monitor_publishes_notifies_reports_and_goes_stale(live):
    from tasks.release.releases import read_serving
    from tasks.release.traffic import load_traffic, replay

    project, slack, env = live
    root = project.root
    url = f"http://{project.config.serving.host}:{project.config.serving.port}"
    sample = load_traffic(project, query="mnth in ['May', 'June']")
    stats = replay(
        url,
        sample,
        sample.times,
        speed=3600 * 400,
        batch=16,
        label_delay=timedelta(hours=6),
        max_seconds=120,
    )
    assert stats.failed == 0 and stats.sent == len(sample.records)

    may = monitor(root, env, "2011-05-01", "2011-06-01")
    assert may["verdict"] == "drift" and may["rows"] == 744
    assert may["label_coverage"] > 0.9
    assert may["report"] and all(httpx.get(u).status_code == 200 for u in may["report"])

    # metrics reach Prometheus through the Pushgateway
    prom = project.config.endpoints.prometheus
    name = project.config.project.name

    def share():
        result = httpx.get(
            f"{prom}/api/v1/query", params={"query": f'driftloop_drift_share{{model="{name}"}}'}
        ).json()
        found = result["data"]["result"]
        return float(found[0]["value"][1]) if found else None

    assert wait_for(share, 30) == pytest.approx(may["drift_share"])

    def serving_info():
        result = httpx.get(
            f"{prom}/api/v1/query", params={"query": f'driftloop_serving_info{{model="{name}"}}'}
        ).json()
        return result["data"]["result"] or None

    (info,) = wait_for(serving_info, 30)
    assert info["metric"]["bento"] == read_serving(project).bento

    # one Slack thread per cycle: the second notice replies to the first
    june = monitor(root, env, "2011-06-01", "2011-07-01")
    first, second = slack.posted()[:2]
    assert "thread_ts" not in first or first.get("thread_ts") is None
    assert "dataset drift" in first["text"] and "temp" in json.dumps(first["blocks"])
    assert second["thread_ts"] is not None and june["rows"] == 720

    # the Prefect artifacts of the run
    artifacts = prefect_post(
        project.config.endpoints.prefect,
        "/api/artifacts/filter",
        {},
        prefect_auth(project.root),
    ).json()
    keys = {a["key"] for a in artifacts}
    assert {f"{name}-monitor-summary", f"{name}-column-drift", f"{name}-drift-report"} <= keys

    # runs stop (the worker is down): the stale-monitor alert fires
    alert = wait_for(lambda: firing(prom, "DriftloopMonitorStale"), 200)
    assert alert["labels"]["model"] == name
