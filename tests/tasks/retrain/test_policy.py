"""The retrain policy, table-driven: consecutive windows, cooldown, one open request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.schema import PolicyConfig
from tasks.retrain.policy import WindowOutcome, decide

NOW = datetime(2011, 5, 1, 12, tzinfo=UTC)
OK = WindowOutcome(dataset_drift=False, quality_breached=False)
DRIFT = WindowOutcome(dataset_drift=True, quality_breached=False)
WORSE = WindowOutcome(dataset_drift=False, quality_breached=True)
BAD_DATA = WindowOutcome(dataset_drift=True, quality_breached=True, usable=False)
POLICY = PolicyConfig(consecutive_windows=2, cooldown_seconds=3600)


@pytest.mark.parametrize(
    ("history", "last", "open_request", "fire", "says"),
    [
        ([], None, None, False, "0 of the last 2 windows bad"),
        ([DRIFT], None, None, False, "1 of the last 2 windows bad"),
        ([OK, DRIFT], None, None, False, "1 of the last 2"),
        ([DRIFT, OK], None, None, False, "1 of the last 2"),
        ([DRIFT, DRIFT], None, None, True, "2 bad windows in a row (dataset drift)"),
        ([DRIFT, WORSE], None, None, True, "(dataset drift, quality)"),
        ([OK, DRIFT, DRIFT], None, None, True, "2 bad windows in a row"),
        ([DRIFT, BAD_DATA], None, None, False, "1 of the last 2"),
        ([DRIFT, BAD_DATA, DRIFT], None, None, True, "2 bad windows in a row"),
        ([DRIFT, OK, BAD_DATA, DRIFT], None, None, False, "1 of the last 2"),
        ([DRIFT, DRIFT], None, "retrain run abc", False, "already open (retrain run abc)"),
        ([DRIFT, DRIFT], NOW - timedelta(minutes=30), None, False, "cooling down"),
        ([DRIFT, DRIFT], NOW - timedelta(minutes=61), None, True, "2 bad windows in a row"),
    ],
)
def test_decide(history, last, open_request, fire, says):
    trigger = decide(POLICY, history, NOW, last_trigger_at=last, open_request=open_request)
    assert trigger.fire is fire
    assert says in trigger.reason


def test_only_configured_reasons_count():
    drift_only = PolicyConfig(consecutive_windows=1, triggers=["dataset_drift"])
    assert not decide(drift_only, [WORSE], NOW).fire
    assert decide(drift_only, [DRIFT], NOW).fire


def test_cooldown_message_says_how_long():
    trigger = decide(POLICY, [DRIFT, DRIFT], NOW, last_trigger_at=NOW - timedelta(minutes=59))
    assert "60 s to go" in trigger.reason


ESTIMATED = WindowOutcome(dataset_drift=False, quality_breached=False, estimated_breached=True)


def test_an_estimate_past_the_limit_counts_only_when_the_policy_listens():
    default = PolicyConfig(consecutive_windows=2)
    assert not decide(default, [ESTIMATED, ESTIMATED], NOW).fire

    listening = PolicyConfig(consecutive_windows=2, triggers=["estimated_quality"])
    trigger = decide(listening, [ESTIMATED, ESTIMATED], NOW)
    assert trigger.fire
    assert trigger.reason == "2 bad windows in a row (estimated quality)"


def test_reasons_name_only_the_triggers_listened_to():
    policy = PolicyConfig(consecutive_windows=1, triggers=["estimated_quality"])
    both = WindowOutcome(dataset_drift=True, quality_breached=False, estimated_breached=True)
    assert decide(policy, [both], NOW).reason == "1 bad windows in a row (estimated quality)"
