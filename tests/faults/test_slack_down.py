"""Slack down or rate-limited: notices are retried with backoff, give up within a bound, and
never block or crash a flow; an approval still gets through the CLI or the Prefect UI's API.

Already proved in tests/tasks/test_notify.py: a 429 is retried after its Retry-After, 5xx
answers exhaust the retries and the notice goes to the log, an unreachable Slack is reported
and not raised. This file adds a Retry-After too long to wait for, timeouts, and approvals
while Slack is down.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import typer
from typer.testing import CliRunner

from driftloop.approve_cmd import approve
from tasks.notify import Notice, post_notice
from tests.fakes.approval_stub import project_copy
from tests.support import free_port

pytestmark = pytest.mark.timeout(180)
NOTICE = Notice(text="bikeshare: dataset drift")


@pytest.fixture
def fast(tmp_path):
    """A project whose Slack calls time out after 1 s, retried twice."""
    return project_copy(tmp_path, {"notify": {"timeout_seconds": 1, "max_retries": 2}})


def test_a_retry_after_longer_than_the_timeout_is_not_waited_for(slack, fast):
    slack.fail_next(429, {"Retry-After": "3600"})
    began = time.monotonic()
    delivery = post_notice(fast, NOTICE)
    assert time.monotonic() - began < 5  # not an hour
    assert not delivery.delivered and "429" in delivery.error
    assert len(slack.posted()) == 1


def test_a_short_retry_after_is_honoured_then_delivered(slack, fast):
    slack.fail_next(429, {"Retry-After": "1"})
    slack.fail_next(429, {"Retry-After": "1"})
    began = time.monotonic()
    assert post_notice(fast, NOTICE).delivered
    assert time.monotonic() - began >= 2 and len(slack.posted()) == 3


def test_timeouts_are_retried_with_backoff_then_reported(slack, fast):
    slack.delay = 1.5  # longer than notify.timeout_seconds: every call times out
    began = time.monotonic()
    delivery = post_notice(fast, NOTICE)
    took = time.monotonic() - began
    assert not delivery.delivered and "timed out" in delivery.error.lower()
    assert took < 3 * 1 + 10  # three timeouts plus the backoff, nothing more
    time.sleep(slack.delay)  # the fake records a call once its delay is over
    assert len(slack.posted()) == 3  # the first try and 2 retries


def test_timeouts_then_success_deliver_once(slack, fast):
    slack.delay = 1.5
    began = time.monotonic()

    def heal() -> None:
        time.sleep(1.2)
        slack.delay = 0

    threading.Thread(target=heal, daemon=True).start()
    assert post_notice(fast, NOTICE).delivered
    assert time.monotonic() - began < 10


@pytest.mark.integration
def test_slack_unreachable_a_paused_retrain_is_approved_by_cli(stub, project, monkeypatch):
    monkeypatch.setenv("SLACK_API_URL", f"http://127.0.0.1:{free_port()}/api/")  # nothing there
    run = stub()  # the approval card could not be posted; the run pauses all the same
    cli = typer.Typer()
    cli.command("approve")(approve)
    cli.command("noop")(lambda: None)
    done = CliRunner().invoke(
        cli,
        [
            "approve",
            run.run_id,
            "--evidence",
            run.hash,
            "--as",
            "alice",
            "--config",
            str(project.path),
        ],
    )
    assert done.exit_code == 0, done.output
    outcome = run.result()
    assert (outcome["outcome"], outcome["channel"]) == ("approve", "cli")


@pytest.mark.integration
def test_slack_failing_a_paused_retrain_is_approved_from_the_ui(
    stub, slack, project, prefect_server
):
    for _ in range(200):  # every Slack call in this test answers 503
        slack.fail_next(503)
    run = stub(approvers=("alice", "ui:prefect-ui"))
    # what the Prefect UI's resume form posts; like Prefect's own clients it retries a 503,
    # the server's answer when SQLite is busy with the paused run's polling
    for _ in range(10):
        answer = httpx.post(
            f"{prefect_server}/api/flow_runs/{run.run_id}/resume",
            json={
                "run_input": {
                    "decision": "approve",
                    "approver": "alice",
                    "comment": "from the UI",
                    "evidence_hash": run.hash,
                }
            },
            timeout=30,
        )
        if answer.status_code != 503:
            break
        time.sleep(1)
    assert answer.status_code == 201 and answer.json()["status"] == "ACCEPT", answer.text
    outcome = run.result()
    assert (outcome["outcome"], outcome["channel"], outcome["approver"]) == (
        "approve",
        "ui",
        "prefect-ui",
    )
    assert outcome["comment"] == "from the UI (typed name: alice)"
    posts = [c for c in slack.calls if c.method == "chat.postMessage"]
    assert posts, "the approval card was never tried"
    assert {c.status for c in posts} == {503}, "a message reached the channel"
