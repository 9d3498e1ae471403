"""What the deadline does (`approval.on_timeout`), as a schedule the waiting flow walks through.

`reject` closes the request at `timeout_seconds`. `remind` re-posts the card at the deadline and
every `remind_every_seconds` after it; `escalate` opens the decision to `approval.escalate_to`
at the deadline. Both keep the request open for `grace_seconds` more, then close it: a close is
a rejection by timeout, never a promotion. Pure functions of the request and the clock, so the
flow, a restarted flow and the submit side agree without asking each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from tasks.approval.records import ApprovalRequest

StepKind = Literal["remind", "escalate", "close"]


@dataclass(frozen=True)
class Step:
    at: datetime
    kind: StepKind


def schedule(request: ApprovalRequest) -> list[Step]:
    """Every step the deadline takes for this request, in time order, the close last."""
    final = request.final_at
    if request.on_timeout == "escalate" and final > request.expires_at:
        return [Step(request.expires_at, "escalate"), Step(final, "close")]
    if request.on_timeout == "remind" and final > request.expires_at:
        every = timedelta(seconds=max(request.remind_every_seconds or 0, 1))
        steps, at = [], request.expires_at
        while at < final:
            steps.append(Step(at, "remind"))
            at += every
        return [*steps, Step(final, "close")]
    return [Step(final, "close")]


def due_step(steps: list[Step], now: datetime, done_until: datetime | None) -> Step | None:
    """The step to take now: the latest one due and not yet taken (steps taken up to
    `done_until`). Reminders missed while the flow or the server was away collapse into one,
    and a due close wins over anything before it."""
    due = [s for s in steps if s.at <= now and (done_until is None or s.at > done_until)]
    return due[-1] if due else None


def next_step(steps: list[Step], done_until: datetime | None) -> Step:
    """The first step not yet taken: the wait pauses until its time."""
    return next(s for s in steps if done_until is None or s.at > done_until)


def escalated(request: ApprovalRequest, now: datetime) -> bool:
    """Whether `escalate_to` may decide: only with on_timeout escalate, only from the deadline."""
    return request.on_timeout == "escalate" and now >= request.expires_at


def deciders(request: ApprovalRequest, now: datetime) -> list[str]:
    """The allow-list in force at `now` (`channel:identity`; empty: anyone)."""
    if not request.approvers:
        return []
    return (
        [*request.approvers, *request.escalate_to]
        if escalated(request, now)
        else list(request.approvers)
    )
