"""What the deadline does, as pure functions of the request and the clock: the schedule of
reminders, escalation and close, which step is due, and who may decide when. No server."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from config.schema import ApprovalConfig
from tasks.approval.audit import approval_counts, read_audit
from tasks.approval.card import approval_card, deadline_text, escalation_notice, reminder_notice
from tasks.approval.deadline import Step, deciders, due_step, next_step, schedule
from tasks.approval.overdue import done_until, take_step
from tasks.approval.records import ApprovalRequest, Decision
from tasks.approval.submit import check_submission
from tests.fakes.approval_stub import project_copy, sample_evidence

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
HASH = "0123456789abcdef"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def request(on_timeout: str = "reject", **extra) -> ApprovalRequest:
    """Requested at T0, due at T0+100 s; remind and escalate close at T0+400 s."""
    fields = {
        "run_id": "run-1",
        "evidence": sample_evidence("bikeshare:v2"),
        "evidence_hash": HASH,
        "requested_at": T0,
        "expires_at": at(100),
        "on_timeout": on_timeout,
        "closes_at": at(400) if on_timeout != "reject" else None,
        "remind_every_seconds": 120,
        "approvers": ["cli:alice", "slack:U0ALICE"],
        "escalate_to": ["cli:carol", "slack:U0CAROL"] if on_timeout == "escalate" else [],
    }
    return ApprovalRequest(**(fields | extra))


def test_reject_closes_at_the_deadline():
    assert schedule(request()) == [Step(at(100), "close")]


def test_remind_reminds_at_the_deadline_and_every_interval_then_closes():
    assert schedule(request("remind")) == [
        Step(at(100), "remind"),
        Step(at(220), "remind"),
        Step(at(340), "remind"),
        Step(at(400), "close"),
    ]


def test_escalate_escalates_at_the_deadline_then_closes():
    assert schedule(request("escalate")) == [Step(at(100), "escalate"), Step(at(400), "close")]


def test_nothing_is_due_before_the_deadline_and_the_wait_runs_until_it():
    steps = schedule(request("remind"))
    assert due_step(steps, at(99), None) is None
    assert next_step(steps, None) == Step(at(100), "remind")
    assert due_step(steps, at(100), None) == Step(at(100), "remind")


def test_a_step_taken_is_not_taken_again_and_the_next_one_is_waited_for():
    steps = schedule(request("remind"))
    assert due_step(steps, at(150), done_until=at(100)) is None
    assert next_step(steps, at(100)) == Step(at(220), "remind")


def test_reminders_missed_while_away_collapse_into_one():
    steps = schedule(request("remind"))
    assert due_step(steps, at(345), done_until=at(100)) == Step(at(340), "remind")


def test_a_due_close_wins_over_missed_reminders_and_escalation():
    assert due_step(schedule(request("remind")), at(401), at(100)) == Step(at(400), "close")
    assert due_step(schedule(request("escalate")), at(500), None) == Step(at(400), "close")


def test_escalated_identities_decide_only_from_the_deadline():
    req = request("escalate")
    assert deciders(req, at(99)) == ["cli:alice", "slack:U0ALICE"]
    assert deciders(req, at(100)) == ["cli:alice", "slack:U0ALICE", "cli:carol", "slack:U0CAROL"]
    assert deciders(request("remind", escalate_to=["cli:carol"]), at(200)) == [
        "cli:alice",
        "slack:U0ALICE",
    ]


def test_submission_rules_around_the_escalation():
    req = request("escalate")
    early = check_submission(req, HASH, "carol", "cli", at(50))
    assert early == (
        "cli:carol may decide only once the request is escalated, at 2026-05-01T10:01:40Z"
    )
    assert check_submission(req, HASH, "carol", "cli", at(150)) is None
    assert check_submission(req, HASH, "U0CAROL", "slack", at(150)) is None
    assert check_submission(req, HASH, "alice", "cli", at(150)) is None  # approvers still may
    # the escalation is per channel: carol's CLI identity does not make her Slack id decide
    assert "not on the approver allow-list" in check_submission(
        req, HASH, "carol", "slack", at(150)
    )
    assert "not on the approver allow-list" in check_submission(
        req, HASH, "mallory", "cli", at(150)
    )
    assert check_submission(req, HASH, "carol", "cli", at(401)) == (
        "the request closed at 2026-05-01T10:06:40Z (rejected by timeout)"
    )


def test_remind_keeps_the_request_open_for_approvers_until_the_final_deadline():
    req = request("remind")
    assert check_submission(req, HASH, "alice", "cli", at(399)) is None
    assert "closed at 2026-05-01T10:06:40Z" in check_submission(req, HASH, "alice", "cli", at(401))
    assert "closed at 2026-05-01T10:01:40Z" in check_submission(
        request(), HASH, "alice", "cli", at(101)
    )


def test_the_card_says_what_the_deadline_does():
    assert deadline_text(request()) == "2026-05-01T10:01:40Z, then rejected"
    assert deadline_text(request("remind")) == (
        "2026-05-01T10:01:40Z, then reminders every 120 s until 2026-05-01T10:06:40Z, then rejected"
    )
    assert deadline_text(request("escalate")) == (
        "2026-05-01T10:01:40Z, then escalated to cli:carol, slack:U0CAROL until "
        "2026-05-01T10:06:40Z, then rejected"
    )


def test_the_escalation_mentions_slack_ids_only_and_escapes_everything_else():
    req = request("escalate", escalate_to=["slack:U0CAROL", "cli:<!channel>", "slack:<!here>"])
    text = escalation_notice(req).text
    assert "<@U0CAROL>" in text
    assert "cli:&lt;!channel&gt;" in text and "slack:&lt;!here&gt;" in text
    assert "<!channel>" not in text and "<!here>" not in text
    card = approval_card(req, escalated=True)
    assert any("<@U0CAROL>" in b.get("text", {}).get("text", "") for b in card.blocks)
    assert card.blocks[-1]["type"] == "actions"  # still decidable


def test_a_reminder_is_the_card_again_with_its_buttons():
    notice = reminder_notice(request("remind"), 2)
    assert notice.blocks[0]["text"]["text"].startswith(
        ":alarm_clock: *Reminder 2: still waiting for a decision*"
    )
    assert [e["action_id"] for e in notice.blocks[-1]["elements"]] == [
        "driftloop_approve",
        "driftloop_reject",
    ]


def test_a_rejection_by_timeout_is_named_so_and_promises_nothing():
    decision = Decision(outcome="reject", decided_at=at(400), evidence_hash=HASH)
    assert decision.timed_out
    assert decision.describe() == "rejected by timeout at 2026-05-01T10:06:40Z with no decision"
    card = approval_card(request(), decision)
    assert (
        ":hourglass: *Rejected by timeout at 2026-05-01T10:06:40Z"
        in card.blocks[-1]["text"]["text"]
    )
    assert "Nothing will be promoted." in card.blocks[-1]["text"]["text"]
    person = Decision(
        outcome="reject", approver="alice", channel="cli", decided_at=at(50), evidence_hash=HASH
    )
    assert not person.timed_out


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"on_timeout": "escalate"}, "approval.escalate_to names nobody"),
        (
            {"on_timeout": "escalate", "escalate_to": {"slack": ["@carol"]}},
            "'@carol' is not a Slack user id",
        ),
        (
            {"on_timeout": "escalate", "escalate_to": {"slack": ["<!channel>"]}},
            "is not a Slack user id",
        ),
        (
            {"on_timeout": "escalate", "escalate_to": {"ui": ["prefect-ui"]}, "channels": ["cli"]},
            "approval.escalate_to.ui lists identities but ui is not in approval.channels",
        ),
        ({"on_timeout": "wait"}, "on_timeout"),
        ({"remind_every_seconds": 0}, "remind_every_seconds"),
    ],
)
def test_bad_deadline_config_is_refused_saying_what_to_fix(section, message):
    with pytest.raises(ValidationError, match=message):
        ApprovalConfig.model_validate(section)


def test_the_shipped_default_is_reject():
    assert ApprovalConfig().on_timeout == "reject"
    ok = ApprovalConfig.model_validate({"on_timeout": "escalate", "escalate_to": {"cli": ["c"]}})
    assert ok.escalate_to.cli == ["c"]


def test_with_slack_off_a_reminder_is_logged_audited_and_not_taken_twice(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    project = project_copy(tmp_path)
    req = request("remind")
    assert done_until(project, req) is None
    with caplog.at_level(logging.INFO, logger="driftloop"):
        take_step(project, req, Step(at(100), "remind"))
        take_step(project, req, Step(at(220), "remind"))
    assert "Reminder 1: still waiting for a decision" in caplog.text
    assert "Reminder 2: still waiting for a decision" in caplog.text
    logged = read_audit(project, "run-1")
    assert [(e.event, e.decision, e.channel, e.due_at) for e in logged] == [
        ("reminder", "reminded", "timeout", at(100)),
        ("reminder", "reminded", "timeout", at(220)),
    ]
    assert done_until(project, req) == at(220)
    assert next_step(schedule(req), done_until(project, req)) == Step(at(340), "remind")
    assert approval_counts(project) == {("reminded", "timeout"): 2}
