"""Slack notices against a local server speaking Slack's Web API: threads, retries, no token."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from config.loader import load_project
from tasks.monitor.results import CheckResult, MetricValue, QualityResult
from tasks.notify import (
    Notice,
    as_text,
    current_thread,
    monitor_notice,
    open_thread,
    post_notice,
    update_notice,
)

ROOT = Path(__file__).resolve().parents[2]
NOTICE = Notice(
    text="bikeshare: dataset drift",
    blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "*temp* 0.31 > 0.1"}}],
)


@pytest.fixture
def project(tmp_path):
    proj = load_project(ROOT / "config/driftloop.yaml")
    return type(proj)(config=proj.config, path=proj.path, root=tmp_path)


def test_notice_posts_blocks_to_the_configured_channel(slack, project):
    delivery = post_notice(project, NOTICE)
    assert delivery.delivered and delivery.ts
    (body,) = slack.posted()
    assert body["channel"] == project.config.notify.channel
    assert body["blocks"] == NOTICE.blocks and body["text"] == NOTICE.text


def test_later_notices_reply_in_the_cycle_thread(slack, project):
    first = post_notice(project, NOTICE)
    thread = open_thread(project, first, reason="drift")
    assert current_thread(project) == thread
    reply = post_notice(project, Notice(text="retrain started"), thread_ts=thread.ts)
    assert reply.delivered
    assert slack.posted()[1]["thread_ts"] == first.ts
    assert update_notice(project, first.channel, first.ts, Notice(text="resolved")).delivered
    assert slack.posted("chat.update")[0]["ts"] == first.ts


def test_rate_limit_is_retried_after_retry_after(slack, project):
    slack.fail_next(429, {"Retry-After": "1"})
    began = time.monotonic()
    delivery = post_notice(project, NOTICE)
    assert delivery.delivered
    assert time.monotonic() - began >= 1  # honoured Retry-After
    assert len(slack.posted()) == 2


def test_server_errors_exhaust_retries_then_log_not_raise(slack, project, caplog):
    for _ in range(project.config.notify.max_retries + 1):
        slack.fail_next(503)
    with caplog.at_level(logging.WARNING, logger="driftloop.notify"):
        delivery = post_notice(project, NOTICE)
    assert not delivery.delivered and "503" in delivery.error
    assert len(slack.posted()) == project.config.notify.max_retries + 1
    assert "*temp* 0.31 > 0.1" in caplog.text  # the evidence still reaches the log


def test_unreachable_slack_is_reported_not_raised(monkeypatch, project):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-x")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9/api/")  # nothing listens on port 9
    delivery = post_notice(project, NOTICE)
    assert not delivery.delivered
    assert "URLError" in delivery.error or "Connection" in delivery.error


def test_without_a_token_the_notice_goes_to_the_log(monkeypatch, project, caplog):
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    with caplog.at_level(logging.INFO, logger="driftloop.notify"):
        delivery = post_notice(project, NOTICE)
    assert not delivery.delivered and delivery.error == "no token"
    assert "bikeshare: dataset drift" in caplog.text and "*temp* 0.31 > 0.1" in caplog.text
    assert open_thread(project, delivery, "drift") is None


def test_wrong_token_is_a_clear_failure(slack, project, monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-wrong")
    delivery = post_notice(project, NOTICE)
    assert not delivery.delivered and "invalid_auth" in delivery.error


def test_classifier_quality_is_shown_beside_the_held_out_value(project):
    quality = QualityResult(
        task="binary",
        status="ok",
        target="churned",
        prediction_column="prediction",
        rows=400,
        labelled_rows=300,
        coverage=0.75,
        min_labels=50,
        primary="roc_auc",
        reference_source="held_out",
        limit=0.95,
        limit_breached=True,
        metrics=[
            MetricValue(name="roc_auc", current=0.912, reference=0.987, greater_is_better=True),
            MetricValue(name="f1", current=0.8, reference=0.9, greater_is_better=True),
            MetricValue(
                name="log_loss",
                current=None,
                reference=0.11,
                greater_is_better=False,
                note="needs probabilities; the window has none",
            ),
        ],
    )
    result = CheckResult(
        verdict="no_drift", message="no dataset drift", drift_share_threshold=0.3, quality=quality
    )
    text = as_text(monitor_notice(project, result, "May", "churn:v1", {}))
    assert "roc_auc past its limit" in text
    assert "• roc_auc: 0.912 (held-out 0.987) :warning: past limit 0.95" in text
    assert "• f1: 0.8 (held-out 0.9)" in text
    assert "• log_loss: not computed (needs probabilities; the window has none)" in text
