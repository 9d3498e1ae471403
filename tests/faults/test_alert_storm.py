"""Alert storm: 100 firing alerts reach Slack as one message per group. Real Alertmanager
running the rendered config (Slack receiver, grouped by alertname and model); Slack's incoming
webhook is a local recorder, the only stand-in."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml

from config.loader import load_project
from tasks.render.runtime import write_runtime
from tests.fakes.webhook import Webhook
from tests.support import ROOT, free_port, wait_answering

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
GROUP_WAIT = 2  # seconds; the rendered 30s only slows the test, grouping is the same


@pytest.fixture
def alertmanager(tmp_path):
    """Alertmanager on a free port, posting Slack messages to a local webhook recorder."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "prometheus-alertmanager is not installed; run `make setup`"
    hook = Webhook()
    secret = tmp_path / "slack-webhook"
    secret.write_text(hook.url + "\n")
    files = write_runtime(load_project(ROOT / "config/driftloop.yaml"), tmp_path, secret)
    config = yaml.safe_load(files.alertmanager_config.read_text())
    config["route"]["group_wait"] = f"{GROUP_WAIT}s"
    files.alertmanager_config.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={files.alertmanager_config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(f"{url}/-/ready", process, 30, "Alertmanager")
        yield url, hook
    finally:
        process.terminate()
        process.wait(10)
        hook.stop()


def column_alerts(model: str, count: int) -> list[dict]:
    now = datetime.now(UTC)
    return [
        {
            "labels": {"alertname": "DriftloopColumnDrift", "model": model, "column": f"c{i}"},
            "annotations": {"summary": f"{model}: column c{i} drifted"},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
        }
        for i in range(count)
    ]


def test_a_hundred_firing_alerts_make_one_slack_message_per_group(alertmanager):
    url, hook = alertmanager
    storm = column_alerts("bikeshare", 70) + column_alerts("other-model", 30)
    for i in range(0, len(storm), 10):  # arriving over a second, as rule evaluations would
        answer = httpx.post(f"{url}/api/v2/alerts", json=storm[i : i + 10], timeout=10)
        assert answer.status_code == 200, answer.text
        time.sleep(0.1)

    deadline = time.monotonic() + GROUP_WAIT + 10
    while len(hook.posts) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(GROUP_WAIT + 2)  # nothing more may follow within the group interval
    assert len(hook.posts) == 2, [p.get("text", p) for p in hook.posts]
    titles = sorted(str(p) for p in hook.posts)
    assert any("[FIRING:70]" in t and "bikeshare" in t for t in titles), titles
    assert any("[FIRING:30]" in t and "other-model" in t for t in titles), titles
