"""The approval records: the request, the resume form, the decision, what a submitter is told,
a pending request and an audit line; each is what one side writes and every other side reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from prefect.input import RunInput
from pydantic import BaseModel

from config.schema import APPROVAL_CHANNELS, ApprovalChannel
from tasks.evidence import Evidence

Channel = ApprovalChannel
Outcome = Literal["approve", "reject", "expired"]  # expired: a timeout recorded before on_timeout
OnTimeout = Literal["reject", "remind", "escalate"]
PAST = {"approve": "approved", "reject": "rejected", "expired": "expired"}
TIMEOUT = "timeout"  # the audit log's and the metric's channel for what the deadline did


UI_IDENTITY = "prefect-ui"  # all the Prefect UI proves: its user holds the server's auth string


class ApprovalInput(RunInput):
    """The resume form: a decision must be chosen explicitly (no default).

    Channel and identity are never typed. driftloop's CLI and Slack app seal theirs with the
    local decision key (`seal`); an input without a seal came through the Prefect UI or its API
    and counts as `ui:prefect-ui`, whatever name is typed in `approver`.
    """

    decision: Literal["approve", "reject"]
    approver: str = ""
    comment: str = ""
    evidence_hash: str
    seal: str = ""


class ApprovalRequest(BaseModel):
    """Stored with the paused run (a flow run input), so every channel sees the same request."""

    run_id: str
    evidence: Evidence
    evidence_hash: str
    requested_at: datetime
    expires_at: datetime
    approvers: list[str] = []  # `channel:identity` (a bare identity: any channel); empty: anyone
    channels: list[str] = list(APPROVAL_CHANNELS)  # channels that may decide
    poll_seconds: float = 2.0
    card_channel: str | None = None
    card_ts: str | None = None
    url: str = ""
    on_timeout: OnTimeout = "reject"  # what `expires_at` does; see `tasks.approval.deadline`
    closes_at: datetime | None = None  # remind, escalate: the final deadline (None: expires_at)
    remind_every_seconds: float | None = None
    escalate_to: list[str] = []  # `channel:identity`, who may also decide from `expires_at`

    @property
    def final_at(self) -> datetime:
        """After this nothing can be decided: the request is rejected by timeout."""
        return self.closes_at or self.expires_at


class Decision(BaseModel):
    outcome: Outcome
    approver: str | None = None
    channel: Channel | None = None
    comment: str = ""
    decided_at: datetime
    evidence_hash: str
    run_id: str | None = None
    candidate: str = ""
    seal: str = ""  # HMAC under the local decision key, set by the flow that recorded it

    def sealed_fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"seal"})

    @property
    def timed_out(self) -> bool:
        """Decided by the deadline, not by a person (no channel proved anyone)."""
        return self.channel is None and self.outcome != "approve"

    def describe(self) -> str:
        """E.g. 'approved by alice via slack at 2026-05-01T10:00:00Z'."""
        when = iso(self.decided_at)
        if self.outcome == "expired":
            return f"expired at {when} with no decision"
        if self.timed_out:
            return f"rejected by timeout at {when} with no decision"
        return f"{PAST[self.outcome]} by {self.approver} via {self.channel} at {when}"


class SubmitResult(BaseModel):
    """What to tell the person who submitted: recorded, or why not."""

    status: Literal["recorded", "already_decided", "refused"]
    message: str
    run_id: str
    decision: Decision | None = None  # ours when recorded, the winner's when already decided
    request: ApprovalRequest | None = None

    @property
    def recorded(self) -> bool:
        return self.status == "recorded"


class PendingRequest(BaseModel):
    run_id: str
    run_name: str
    evidence: Evidence
    evidence_hash: str
    requested_at: datetime
    expires_at: datetime
    age_seconds: float
    approvers: list[str]
    url: str


class AuditEntry(BaseModel):
    at: datetime
    event: Literal["decision", "refusal", "reminder", "escalation"]
    decision: str  # approve | reject | expired | reminded | escalated (refusal: what was asked)
    approver: str | None = None
    channel: str | None = None
    run_id: str
    evidence_hash: str | None = None
    comment: str = ""
    reason: str = ""
    due_at: datetime | None = None  # a reminder's or escalation's scheduled time


def iso(when: datetime) -> str:
    """UTC to the second, e.g. 2026-05-01T10:00:00Z: how requests and decisions show times."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> datetime:
    """Now, timezone-aware in UTC."""
    return datetime.now(UTC)
