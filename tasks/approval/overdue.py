"""What the waiting flow does when a deadline step falls due: re-post the card (remind) or ask
the escalation identities (escalate), each recorded in the audit log and counted in the metric.

The audit log also says which steps were taken, so a flow that restarts mid-wait neither repeats
an escalation nor re-sends reminders it already sent.
"""

from __future__ import annotations

import logging
from datetime import datetime

from config.loader import Project
from tasks.approval.audit import append_audit, read_audit
from tasks.approval.card import approval_card, escalation_notice, reminder_notice
from tasks.approval.deadline import Step
from tasks.approval.records import TIMEOUT, ApprovalRequest, AuditEntry, iso, utc_now
from tasks.notify import post_notice, update_notice

log = logging.getLogger("driftloop.approval")

STEP_EVENTS = {"remind": ("reminder", "reminded"), "escalate": ("escalation", "escalated")}


def steps_taken(project: Project, request: ApprovalRequest) -> list[AuditEntry]:
    """The reminders and escalations already recorded for this request."""
    return [
        e
        for e in read_audit(project, request.run_id)
        if e.event in ("reminder", "escalation") and e.evidence_hash == request.evidence_hash
    ]


def done_until(project: Project, request: ApprovalRequest) -> datetime | None:
    """The scheduled time of the last step taken (None: none yet)."""
    return max((e.due_at for e in steps_taken(project, request) if e.due_at), default=None)


def take_step(project: Project, request: ApprovalRequest, step: Step) -> None:
    """Remind or escalate (Slack off: the notice goes to the log), then audit it."""
    event, counted = STEP_EVENTS[step.kind]
    if step.kind == "remind":
        count = 1 + sum(e.event == "reminder" for e in steps_taken(project, request))
        post_notice(project, reminder_notice(request, count), thread_ts=request.card_ts)
        note = f"reminder {count}; rejected by timeout at {iso(request.final_at)}"
    else:
        if request.card_channel and request.card_ts:  # the card names who may now decide
            card = approval_card(request, escalated=True)
            update_notice(project, request.card_channel, request.card_ts, card)
        post_notice(project, escalation_notice(request), thread_ts=request.card_ts)
        note = f"escalated to {', '.join(request.escalate_to)} until {iso(request.final_at)}"
    log.warning("approval for run %s past its deadline: %s", request.run_id, note)
    append_audit(
        project,
        AuditEntry(
            at=utc_now(),
            event=event,
            decision=counted,
            channel=TIMEOUT,
            run_id=request.run_id,
            evidence_hash=request.evidence_hash,
            comment=note,
            due_at=step.at,
        ),
    )
