"""One decision per approval request: the paused Prefect flow run is the record.

A retrain flow calls `await_decision`: it posts the Slack card, stores the request (evidence and
its hash) with the run, and pauses waiting for `ApprovalInput`. Slack (`asubmit_decision`), the
CLI (`submit_decision`) and the Prefect UI's resume form all resume that same run; the server
accepts exactly one resume of a paused run, so the first valid decision wins and every later
attempt is told who decided, how and when. Inputs that bypass `submit_decision` (the UI form) are
validated again in the flow; an invalid one is refused and the run pauses again.

Every decision and refusal is appended to `.driftloop/audit/approvals.jsonl` and counted in
`driftloop_approvals_total{decision,channel}` (recounted from that log on every push, so a
Pushgateway that is down loses nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import time
from collections import Counter as Tally
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID, uuid4

import httpx
from prefect import get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRunInput, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.input import RunInput
from prefect.input.actions import read_flow_run_input
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel

from config.loader import Project
from tasks.commands import CommandError
from tasks.evidence import DriftRow, Evidence, GateRow, evidence_hash  # noqa: F401
from tasks.metrics import PublishError, push
from tasks.notify import Notice, post_notice, update_notice

log = logging.getLogger("driftloop.approval")

Channel = Literal["slack", "ui", "cli"]
Outcome = Literal["approve", "reject", "expired"]

APPROVAL_JOB = "driftloop_approvals"
REQUEST_KEY = "driftloop-approval-request-"  # + evidence hash: one request per evidence
DECISION_KEY = "driftloop-approval-decision-"
ACTION_APPROVE = "driftloop_approve"
ACTION_REJECT = "driftloop_reject"
PAST = {"approve": "approved", "reject": "rejected", "expired": "expired"}


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


# ---------------------------------------------------------------- records


class ApprovalRequest(BaseModel):
    """Stored with the paused run (a flow run input), so every channel sees the same request."""

    run_id: str
    evidence: Evidence
    evidence_hash: str
    requested_at: datetime
    expires_at: datetime
    approvers: list[str] = []  # `channel:identity` (a bare identity: any channel); empty: anyone
    channels: list[str] = ["slack", "cli", "ui"]  # channels that may decide
    poll_seconds: float = 2.0
    card_channel: str | None = None
    card_ts: str | None = None
    url: str = ""


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

    def describe(self) -> str:
        """E.g. 'approved by alice via slack at 2026-05-01T10:00:00Z'."""
        when = _iso(self.decided_at)
        if self.outcome == "expired":
            return f"expired at {when} with no decision"
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
    event: Literal["decision", "refusal"]
    decision: str  # approve | reject | expired (for a refusal: what was asked)
    approver: str | None = None
    channel: str | None = None
    run_id: str
    evidence_hash: str | None = None
    comment: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ApprovalSettings:
    """The `approval` config section, with defaults until the section exists."""

    approvers: tuple[str, ...] = ()
    channels: tuple[str, ...] = ("slack", "cli", "ui")
    timeout_seconds: int = 24 * 3600
    poll_seconds: float = 2.0
    slack_host: str = "127.0.0.1"
    slack_port: int = 3100

    @classmethod
    def from_project(cls, project: Project) -> ApprovalSettings:
        section = getattr(project.config, "approval", None)
        if section is None:
            return cls()
        return cls(
            approvers=allowed_identities(section),
            channels=tuple(getattr(section, "channels", cls.channels)),
            timeout_seconds=int(getattr(section, "timeout_seconds", cls.timeout_seconds)),
            poll_seconds=float(getattr(section, "poll_seconds", cls.poll_seconds)),
            slack_host=str(getattr(section, "slack_host", cls.slack_host)),
            slack_port=int(getattr(section, "slack_port", cls.slack_port)),
        )


def allowed_identities(section: Any) -> tuple[str, ...]:
    """The allow-list as `channel:identity` entries, from the per-channel config."""
    approvers = getattr(section, "approvers", None)
    if approvers is None:
        return ()
    return tuple(
        f"{channel}:{identity}"
        for channel in ("slack", "cli", "ui")
        for identity in getattr(approvers, channel, [])
    )


def run_url(project: Project, run_id: str | UUID) -> str:
    return f"{project.config.endpoints.prefect}/runs/flow-run/{run_id}"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- audit log and metric


def audit_path(project: Project) -> Path:
    return project.state_dir / "audit" / "approvals.jsonl"


def append_audit(project: Project, entry: AuditEntry) -> None:
    """Append one line (locked, flushed to disk), then recount and push the metric."""
    path = audit_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = entry.model_dump_json() + "\n"
    with path.open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
            with contextlib.suppress(OSError):
                os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    publish_approval_metrics(project)


def read_audit(project: Project, run_id: str | None = None) -> list[AuditEntry]:
    path = audit_path(project)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            entry = AuditEntry.model_validate_json(line)
        except ValueError:
            log.warning("skipping an unreadable audit line in %s", path)
            continue
        if run_id is None or entry.run_id == run_id:
            entries.append(entry)
    return entries


def approval_counts(project: Project) -> dict[tuple[str, str], int]:
    """(decision, channel) -> count, from the audit log; refusals count as decision 'refused'."""
    tally: Tally[tuple[str, str]] = Tally()
    for entry in read_audit(project):
        if entry.event == "decision":
            tally[(entry.decision, entry.channel or "none")] += 1
        else:
            tally[("refused", entry.channel or "none")] += 1
    return dict(tally)


def approvals_registry(project: Project) -> CollectorRegistry:
    registry = CollectorRegistry()
    total = Counter(
        "driftloop_approvals",
        "Approval decisions and refusals, by decision and channel",
        ("decision", "channel"),
        registry=registry,
    )
    for (decision, channel), count in approval_counts(project).items():
        total.labels(decision, channel).inc(count)
    return registry


def publish_approval_metrics(project: Project) -> bool:
    """Push the recount; a Pushgateway that is down is logged, the next push catches up."""
    try:
        push(project, APPROVAL_JOB, approvals_registry(project), replace=True)
    except PublishError as exc:
        log.warning("approval metrics not pushed (kept in the audit log): %s", exc)
        return False
    return True


def record_refusal(
    project: Project,
    run_id: str,
    decision: str,
    approver: str | None,
    channel: str | None,
    evidence_hash: str | None,
    reason: str,
    comment: str = "",
) -> None:
    log.warning(
        "refused %s by %s via %s for run %s: %s", decision, approver, channel, run_id, reason
    )
    append_audit(
        project,
        AuditEntry(
            at=_now(),
            event="refusal",
            decision=decision,
            approver=approver,
            channel=channel,
            run_id=run_id,
            evidence_hash=evidence_hash,
            comment=comment,
            reason=reason,
        ),
    )


async def _arefusal(*args: Any) -> None:
    """`record_refusal` off the event loop: its push must not stall a Slack acknowledgement."""
    await asyncio.to_thread(record_refusal, *args)


# ---------------------------------------------------------------- what people see


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _gate_lines(evidence: Evidence) -> list[str]:
    rows = [("metric", "champion", "candidate", "delta", "pass")]
    rows += [
        (g.metric, _num(g.champion), _num(g.candidate), _num(g.delta), "yes" if g.passed else "NO")
        for g in evidence.gate
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]


def _drift_lines(evidence: Evidence, limit: int = 10) -> list[str]:
    lines = []
    for d in evidence.drift[:limit]:
        method = f" {d.method}" if d.method else ""
        limit_text = f" (threshold {_num(d.threshold)})" if d.threshold is not None else ""
        flag = "" if d.drifted else " (not drifted)"
        lines.append(f"`{d.column}`{method}: {_num(d.score)}{limit_text}{flag}")
    if len(evidence.drift) > limit:
        lines.append(f"... and {len(evidence.drift) - limit} more")
    return lines


def evidence_markdown(request: ApprovalRequest) -> str:
    """The resume form's description in the Prefect UI, and the `pending` detail."""
    ev = request.evidence
    parts = [
        f"## Approve `{ev.candidate}` for `{ev.model}`?",
        f"**Why:** {ev.reason}",
        f"**Data rev:** `{ev.data_rev}` · **Retrain run:** `{ev.retrain_run_id}` · "
        f"**Evidence hash:** `{request.evidence_hash}` · **Expires:** {_iso(request.expires_at)}",
    ]
    if ev.gate:
        parts.append("### Gate: candidate vs champion")
        parts.append("| metric | champion | candidate | delta | pass |\n|---|---|---|---|---|")
        parts[-1] += "".join(
            f"\n| {g.metric} | {_num(g.champion)} | {_num(g.candidate)} | {_num(g.delta)} | "
            f"{'yes' if g.passed else 'NO'} |"
            for g in ev.gate
        )
    if ev.drift_summary or ev.drift:
        parts.append("### Drift")
        if ev.drift_summary:
            parts.append(ev.drift_summary)
        parts.extend(f"- {line}" for line in _drift_lines(ev))
    who = ", ".join(request.approvers) if request.approvers else "anyone"
    parts.append(
        "Choose **decision** (approve or reject) and copy the evidence hash above into "
        "**evidence_hash**: it binds the decision to this evidence, and a missing or different "
        f"hash is refused. Here you decide as `ui:{UI_IDENTITY}`, the holder of the Prefect "
        f"server's auth string; a name typed as **approver** is kept in the comment "
        f"(allowed: {who}; channels: {', '.join(request.channels)})."
    )
    return "\n\n".join(parts)


def approval_card(request: ApprovalRequest, decision: Decision | None = None) -> Notice:
    """The Block Kit card: evidence, then the buttons, or the outcome in their place."""
    ev = request.evidence
    title = f"{ev.model}: approve candidate {ev.candidate}?"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Why*\n{ev.reason}"[:2900]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Data rev*\n`{ev.data_rev}`"},
                {"type": "mrkdwn", "text": f"*Candidate*\n`{ev.candidate}`"},
                {"type": "mrkdwn", "text": f"*Evidence hash*\n`{request.evidence_hash}`"},
                {"type": "mrkdwn", "text": f"*Expires*\n{_iso(request.expires_at)}"},
            ],
        },
    ]
    if ev.gate:
        table = "\n".join(_gate_lines(ev))
        blocks.append(_mrkdwn(f"*Gate: candidate vs champion*\n```{table}```"))
    if ev.drift_summary or ev.drift:
        text = "\n".join(filter(None, [ev.drift_summary, *("• " + x for x in _drift_lines(ev))]))
        blocks.append(_mrkdwn(f"*Drift*\n{text}"))
    links = f"<{request.url}|Prefect run>" if request.url else ""
    cli = f"`driftloop approve {request.run_id}`"
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": " · ".join(filter(None, [links, cli]))}],
        }
    )
    if decision is None:
        value = f"{request.run_id}:{request.evidence_hash}"
        blocks.append(
            {
                "type": "actions",
                "block_id": "driftloop_approval",
                "elements": [
                    _button("Approve", ACTION_APPROVE, value, "primary", "Approve and roll out?"),
                    _button("Reject", ACTION_REJECT, value, "danger", "Reject this candidate?"),
                ],
            }
        )
        return Notice(text=f"Approval needed: {title}", blocks=blocks)
    icon = {"approve": ":white_check_mark:", "reject": ":x:", "expired": ":hourglass:"}
    said = plain(decision.describe())
    line = f"{icon[decision.outcome]} *{said[:1].upper() + said[1:]}*"  # ids keep their case
    if decision.comment:
        line += f"\n> {plain(decision.comment)}"
    if decision.outcome == "expired":
        line += "\nNothing will be promoted."
    blocks.append(_mrkdwn(line))
    return Notice(text=plain(f"{title} {decision.describe()}"), blocks=blocks)


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}


def _button(text: str, action_id: str, value: str, style: str, question: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
        "style": style,
        "confirm": {
            "title": {"type": "plain_text", "text": "Are you sure?"},
            "text": {"type": "mrkdwn", "text": question},
            "confirm": {"type": "plain_text", "text": text},
            "deny": {"type": "plain_text", "text": "Cancel"},
        },
    }


@task(cache_policy=NO_CACHE)
def post_approval_card(project: Project, request: ApprovalRequest):
    """Post the card (logged instead when there is no Slack token)."""
    return post_notice(project, approval_card(request))


@task(cache_policy=NO_CACHE)
def update_approval_card(project: Project, request: ApprovalRequest, decision: Decision):
    """Replace the buttons with the outcome."""
    if request.card_channel is None or request.card_ts is None:
        return post_notice(project, approval_card(request, decision))
    return update_notice(
        project, request.card_channel, request.card_ts, approval_card(request, decision)
    )


def reply_on_card(project: Project, request: ApprovalRequest, text: str) -> None:
    post_notice(project, Notice(text=plain(text)), thread_ts=request.card_ts)


def plain(text: str) -> str:
    """Slack's three control characters escaped: a name or comment typed by a person can never
    become a mention (`<!channel>`), a link or markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------- validation


def check_submission(
    request: ApprovalRequest,
    evidence_hash: str | None,
    approver: str,
    channel: str,
    now: datetime,
) -> str | None:
    """Why this submission cannot decide the request, or None when it can."""
    if not evidence_hash:
        return (
            "no evidence hash: a decision names the evidence it was made on "
            f"(this request shows {request.evidence_hash}; `driftloop pending` lists it)"
        )
    if evidence_hash != request.evidence_hash:
        return (
            f"stale evidence: the decision names evidence {evidence_hash} but the request "
            f"shows {request.evidence_hash}; review the current evidence and decide again"
        )
    if channel not in request.channels:
        return f"{channel} may not decide (approval.channels: {', '.join(request.channels)})"
    if request.approvers and approver not in allowed_on(request.approvers, channel):
        listed = ", ".join(request.approvers)
        return f"{channel}:{approver} is not on the approver allow-list ({listed})"
    if now > request.expires_at:
        return f"the request expired at {_iso(request.expires_at)}"
    return None


def allowed_on(approvers: list[str], channel: str) -> list[str]:
    """The identities the allow-list names for `channel` (bare entries count on any)."""
    return [
        entry.split(":", 1)[1] if ":" in entry else entry
        for entry in approvers
        if ":" not in entry or entry.split(":", 1)[0] == channel
    ]


# ---------------------------------------------------------------- identities and seals


class Forged(ValueError):
    """An input whose seal does not verify: refused, whatever it claims."""


@dataclass(frozen=True)
class Identity:
    channel: Channel
    approver: str
    comment: str


def _input_fields(
    run_id: str, decision: str, approver: str, channel: str, comment: str, evidence_hash: str
) -> dict[str, str]:
    return {
        "run_id": run_id,
        "decision": decision,
        "approver": approver,
        "channel": channel,
        "comment": comment,
        "evidence_hash": evidence_hash,
    }


def input_seal(
    project: Project,
    run_id: str,
    decision: str,
    approver: str,
    channel: Channel,
    comment: str,
    evidence_hash: str,
) -> str:
    """What the CLI and the Slack app attach to a resume: their channel, sealed with the rest."""
    from tasks.approval.seal import seal

    fields = _input_fields(run_id, decision, approver, channel, comment, evidence_hash)
    return json.dumps({"channel": channel, "sig": seal(project, fields)})


def authenticate(project: Project, run_id: str, answer: ApprovalInput) -> Identity:
    """The channel and identity an input proves: its seal's, or the UI's when it has none."""
    from tasks.approval.seal import verify

    if not answer.seal:
        typed = answer.approver.strip()
        note = f" (typed name: {typed})" if typed and typed != UI_IDENTITY else ""
        return Identity("ui", UI_IDENTITY, (answer.comment + note).strip())
    try:
        claimed = json.loads(answer.seal)
        channel, signature = claimed["channel"], claimed["sig"]
    except (ValueError, TypeError, KeyError):
        raise Forged("the input's seal is malformed") from None
    fields = _input_fields(
        run_id, answer.decision, answer.approver, str(channel), answer.comment, answer.evidence_hash
    )
    if channel not in ("slack", "cli") or not verify(project, fields, str(signature)):
        raise Forged("the input's seal does not verify (forged or altered)")
    return Identity(channel, answer.approver, answer.comment)


def seal_decision(project: Project, decision: Decision) -> Decision:
    from tasks.approval.seal import seal

    return decision.model_copy(update={"seal": seal(project, decision.sealed_fields())})


class NoRecordedApproval(CommandError):
    """A promotion asked for without an approval recorded for exactly that candidate."""


def verified_approval(
    project: Project, run_id: str, candidate: str, evidence_hash_: str
) -> Decision:
    """The sealed approval recorded with `run_id` for `candidate` on `evidence_hash_`, or
    NoRecordedApproval saying what is missing. Only this makes a promotion legitimate."""
    from tasks.approval.seal import verify

    try:
        request, decision = recorded_decision(project, run_id)
    except ValueError:
        raise NoRecordedApproval(f"{run_id!r} is not a retrain run id") from None
    if request is None or decision is None:
        raise NoRecordedApproval(f"run {run_id} has no recorded decision")
    if not verify(project, decision.sealed_fields(), decision.seal):
        raise NoRecordedApproval(f"the decision recorded with run {run_id} is not sealed by us")
    if decision.outcome != "approve":
        raise NoRecordedApproval(f"run {run_id} was {decision.describe()}")
    if decision.candidate != candidate or request.evidence.candidate != candidate:
        raise NoRecordedApproval(
            f"run {run_id} approved {decision.candidate or request.evidence.candidate}, "
            f"not {candidate}"
        )
    if decision.evidence_hash != evidence_hash_:
        raise NoRecordedApproval(
            f"run {run_id} was approved on evidence {decision.evidence_hash}, not {evidence_hash_}"
        )
    return decision


# ---------------------------------------------------------------- reading the record


def _decode(item: FlowRunInput) -> Any:
    return item.decoded_value


async def _inputs(client, run_id: UUID, prefix: str) -> list[FlowRunInput]:
    return await client.filter_flow_run_input(
        flow_run_id=run_id, key_prefix=prefix, limit=500, exclude_keys=set()
    )


async def _latest_request(client, run_id: UUID) -> ApprovalRequest | None:
    items = await _inputs(client, run_id, REQUEST_KEY)
    if not items:
        return None
    latest = max(items, key=lambda i: i.created or datetime.min.replace(tzinfo=UTC))
    return ApprovalRequest.model_validate(_decode(latest))


async def _read_decision(client, run_id: UUID, hash_: str) -> Decision | None:
    items = await _inputs(client, run_id, DECISION_KEY + hash_)
    return Decision.model_validate(_decode(items[0])) if items else None


async def _latest_response(client, run_id: UUID, request: ApprovalRequest) -> Decision | None:
    """The newest input the server accepted (maybe not yet validated by the flow)."""
    items = [i for i in await _inputs(client, run_id, "paused-") if i.key.endswith("-response")]
    if not items:
        return None
    latest = max(items, key=lambda i: i.created or datetime.min.replace(tzinfo=UTC))
    value = _decode(latest) or {}
    try:  # the claimed channel, for telling a later submitter who came first; unverified
        channel = json.loads(value.get("seal") or "{}").get("channel", "ui")
    except (ValueError, AttributeError):
        channel = "ui"
    return Decision(
        outcome=value.get("decision", "approve"),
        approver=value.get("approver") if value.get("seal") else UI_IDENTITY,
        channel=channel if channel in ("slack", "cli", "ui") else "ui",
        comment=value.get("comment", ""),
        decided_at=latest.created or _now(),
        evidence_hash=value.get("evidence_hash") or request.evidence_hash,
        run_id=str(run_id),
    )


async def _settle(client, run_id: UUID, request: ApprovalRequest, seconds: float):
    """Wait for the flow to record a decision, pause again, or end.

    Returns (kind, decision, run): decided (recorded by the flow), paused (it refused the input and
    waits again), ended (finished without a decision), or pending (not confirmed in time: the
    newest accepted input, provisionally).
    """
    deadline = time.monotonic() + seconds
    while True:
        run = await client.read_flow_run(run_id)
        decision = await _read_decision(client, run_id, request.evidence_hash)
        if decision is not None:
            return "decided", decision, run
        if run.state is not None and run.state.is_paused():
            return "paused", None, run
        if run.state is not None and run.state.is_final():
            return "ended", None, run
        if time.monotonic() > deadline:
            return "pending", await _latest_response(client, run_id, request), run
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------- submitting (CLI, Slack)


async def asubmit_decision(
    project: Project,
    flow_run_id: str | UUID,
    decision: Literal["approve", "reject"],
    approver: str,
    channel: Channel,
    comment: str = "",
    evidence_hash: str | None = None,
    *,
    settle_seconds: float | None = None,
) -> SubmitResult:
    """Resume the paused run with this decision, or say why not (who decided, stale, expired).

    `approver` is the identity the caller's channel authenticated (a Slack user id, the OS
    user); the input is sealed with it so the flow knows the channel without trusting a field.
    Safe to call concurrently: the server resumes a paused run once and aborts every other
    resume, which is then told who won.
    """
    rid = str(flow_run_id)
    try:
        run_uuid = UUID(rid)
    except ValueError:
        return SubmitResult(status="refused", run_id=rid, message=f"{rid!r} is not a run id")
    async with get_client() as client:
        for _ in range(5):  # a run can pause again after refusing another input
            try:
                run = await client.read_flow_run(run_uuid)
            except ObjectNotFound:
                return SubmitResult(status="refused", run_id=rid, message=f"no flow run {rid}")
            request = await _latest_request(client, run_uuid)
            if request is None:
                return SubmitResult(
                    status="refused", run_id=rid, message=f"run {rid} is not an approval request"
                )
            settle = settle_seconds if settle_seconds is not None else request.poll_seconds * 3 + 3
            if run.state is None or not run.state.is_paused():
                kind, winner, run = await _settle(client, run_uuid, request, settle)
                if kind == "paused":
                    continue
                return await _too_late(project, request, run, winner, decision, approver, channel)
            reason = check_submission(request, evidence_hash, approver, channel, _now())
            if reason:
                await _arefusal(
                    project, rid, decision, approver, channel, evidence_hash, reason, comment
                )
                return SubmitResult(status="refused", run_id=rid, message=reason, request=request)
            submitted_at = _now()
            answer = await client.resume_flow_run(
                run_uuid,
                run_input={
                    "decision": decision,
                    "approver": approver,
                    "comment": comment,
                    "evidence_hash": request.evidence_hash,
                    "seal": input_seal(
                        project, rid, decision, approver, channel, comment, request.evidence_hash
                    ),
                },
            )
            if answer.status == SetStateStatus.ABORT:  # someone else resumed it first
                continue
            if answer.status == SetStateStatus.REJECT:
                expired = answer.state is not None and answer.state.type == StateType.FAILED
                why = (
                    f"the request expired at {_iso(request.expires_at)}"
                    if expired
                    else f"Prefect refused the input: {getattr(answer.details, 'reason', '')}"
                )
                await _arefusal(
                    project, rid, decision, approver, channel, request.evidence_hash, why
                )
                return SubmitResult(status="refused", run_id=rid, message=why, request=request)
            kind, recorded, _ = await _settle(client, run_uuid, request, settle)
            if kind == "paused":  # the flow refused it (it audits the reason) and waits again
                why = _flow_refusal_reason(project, rid, submitted_at)
                return SubmitResult(status="refused", run_id=rid, message=why, request=request)
            recorded = recorded or Decision(
                outcome=decision,
                approver=approver,
                channel=channel,
                comment=comment,
                decided_at=submitted_at,
                evidence_hash=request.evidence_hash,
                run_id=rid,
            )
            note = "" if kind == "decided" else " (the run has resumed and will record it)"
            return SubmitResult(
                status="recorded",
                run_id=rid,
                message=f"{recorded.describe()}{note}",
                decision=recorded,
                request=request,
            )
    return SubmitResult(
        status="refused", run_id=rid, message=f"run {rid} keeps changing state; try again"
    )


async def _too_late(project, request, run, winner, decision, approver, channel) -> SubmitResult:
    rid = request.run_id
    if winner is None:  # a run that ended without storing its decision: the audit log may know
        logged = [e for e in read_audit(project, rid) if e.event == "decision"]
        if logged:
            e = logged[-1]
            winner = Decision(
                outcome=e.decision,
                approver=e.approver,
                channel=e.channel if e.channel in ("slack", "ui", "cli") else None,
                comment=e.comment,
                decided_at=e.at,
                evidence_hash=e.evidence_hash or request.evidence_hash,
                run_id=rid,
            )
    if winner is not None:
        message = f"already {winner.describe()}"
    else:
        state = run.state.name if run.state else "unknown"
        message = f"run {rid} is {state} and no longer waits for a decision"
    await _arefusal(project, rid, decision, approver, channel, request.evidence_hash, message)
    status = "already_decided" if winner is not None else "refused"
    return SubmitResult(
        status=status, run_id=rid, message=message, decision=winner, request=request
    )


def _flow_refusal_reason(project: Project, run_id: str, since: datetime) -> str:
    refusals = [e for e in read_audit(project, run_id) if e.event == "refusal" and e.at >= since]
    if refusals:
        return refusals[-1].reason
    return "the run refused the input and is waiting again (see its logs)"


def submit_decision(
    project: Project,
    flow_run_id: str | UUID,
    decision: Literal["approve", "reject"],
    approver: str,
    channel: Channel,
    comment: str = "",
    evidence_hash: str | None = None,
) -> SubmitResult:
    """The blocking form of `asubmit_decision` (CLI). In async code await `asubmit_decision`."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("submit_decision called inside an event loop: await asubmit_decision")
    return asyncio.run(
        asubmit_decision(project, flow_run_id, decision, approver, channel, comment, evidence_hash)
    )


# ---------------------------------------------------------------- pending requests


async def apending_requests(project: Project) -> list[PendingRequest]:
    model = project.config.project.name
    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    found = []
    now = _now()
    async with get_client() as client:
        for run in await client.read_flow_runs(flow_run_filter=paused, limit=200):
            request = await _latest_request(client, run.id)
            if request is None or request.evidence.model != model:
                continue
            if await _read_decision(client, run.id, request.evidence_hash) is not None:
                continue
            found.append(
                PendingRequest(
                    run_id=str(run.id),
                    run_name=run.name,
                    evidence=request.evidence,
                    evidence_hash=request.evidence_hash,
                    requested_at=request.requested_at,
                    expires_at=request.expires_at,
                    age_seconds=(now - request.requested_at).total_seconds(),
                    approvers=request.approvers,
                    url=run_url(project, run.id),
                )
            )
    return sorted(found, key=lambda p: p.requested_at)


def pending_requests(project: Project) -> list[PendingRequest]:
    """Paused runs waiting for an approval of this model, oldest first."""
    return asyncio.run(apending_requests(project))


# ---------------------------------------------------------------- the flow side


def recorded_decision(
    project: Project, run_id: str
) -> tuple[ApprovalRequest | None, Decision | None]:
    """The request stored with a retrain run and the decision recorded for it, as the run's
    own inputs hold them (None where there is none)."""

    async def read(client, run: UUID):
        request = await _latest_request(client, run)
        if request is None:
            return None, None
        return request, await _read_decision(client, run, request.evidence_hash)

    return _sync(read, UUID(run_id))


def _write_input(run_id: UUID, key: str, value: BaseModel) -> None:
    with get_client(sync_client=True) as client:
        client.create_flow_run_input(flow_run_id=run_id, key=key, value=value.model_dump_json())


def _sync(coro_fn, *args):
    """Run one of the async readers from sync flow code (no loop is running there)."""

    async def go():
        async with get_client() as client:
            return await coro_fn(client, *args)

    return asyncio.run(go())


# A refused, reset or timed-out connection: the Prefect server is away (restarting, say).
SERVER_AWAY = (httpx.TransportError,)


def _await_server(error: Exception, until: datetime, every: float = 0.5) -> None:
    """Block until the Prefect API answers its health check; re-raise `error` if it still does
    not at `until` (the request's expiry: nothing could be decided after it anyway)."""
    began = time.monotonic()
    log.warning(
        "Prefect server unreachable while awaiting approval (%s: %s); waiting for it until %s",
        type(error).__name__,
        error,
        _iso(until),
    )
    while _now() < until:
        with get_client(sync_client=True) as client:  # a new client fails fast while refused
            if client.api_healthcheck() is None:
                log.warning(
                    "Prefect server reachable again after %.1f s; still awaiting approval",
                    time.monotonic() - began,
                )
                return
        time.sleep(every)
    log.error(
        "Prefect server unreachable for %.1f s, until the approval request expired",
        time.monotonic() - began,
    )
    raise error


def _pause_for_input(
    run_id: UUID, form: type[ApprovalInput], until: datetime, poll: float
) -> ApprovalInput:
    """`pause_flow_run` for `form` until `until`, riding out Prefect server restarts.

    The pause polls the server, and when its client's retries ran out during a restart (or
    across several) the error ended the paused run Failed, so the request could no longer be
    decided. Here the wait outlives the server: once it answers again, the run's state says
    whether it is still paused (wait on), was resumed meanwhile (load the input) or never got
    to pause (pause again).
    """
    from prefect.flow_runs import pause_flow_run

    while True:
        key = uuid4().hex  # never reuse a pause key: a retried run must not replay input
        try:
            return pause_flow_run(
                wait_for_input=form,
                timeout=max(1, math.ceil((until - _now()).total_seconds())),
                poll_interval=poll,
                key=key,
            )
        except SERVER_AWAY as exc:
            _await_server(exc, until)
        answer = _wait_on_pause(run_id, form, key, until, poll)
        if answer is not None:
            return answer


def _wait_on_pause(
    run_id: UUID, form: type[ApprovalInput], key: str, until: datetime, poll: float
) -> ApprovalInput | None:
    """After an outage: poll while the run is in pause `key`, then load its input.

    None when the pause never began (the server went away before it took the state).
    """
    from prefect.input.run_input import keyset_from_base_key

    keyset = keyset_from_base_key(f"paused-{key}")
    form_checked = False
    while True:
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run_id)
            state = run.state
            if key not in (run.empirical_policy.pause_keys or set()):
                return None
            if state is not None and state.is_running():
                log.info("run %s was resumed while the Prefect server was away", run_id)
                return form.load(keyset)
            if state is None or not state.is_paused():
                name = state.name if state else "no state"
                if state is not None and state.is_failed():  # the server expired the pause
                    raise FlowPauseTimeout(f"Flow run was paused and never resumed ({name}).")
                raise RuntimeError(f"run {run_id} left its approval pause for {name}")
            if not form_checked:  # the outage may have cut the pause off before its form
                if read_flow_run_input(keyset["schema"], run_id) is None:
                    form.save(keyset, run_id)
                form_checked = True
            if _now() >= until:
                raise FlowPauseTimeout("Flow run was paused and never resumed.")
            time.sleep(poll)
        except SERVER_AWAY as exc:
            _await_server(exc, until)


def await_decision(
    project: Project,
    evidence: Evidence,
    timeout_seconds: float,
    allowed_approvers: list[str] | tuple[str, ...] = (),
    poll_seconds: float | None = None,
) -> Decision:
    """Ask for a decision and wait for it; call inside a (sync) flow run.

    Posts the Slack card, stores the request with the run, and pauses for `ApprovalInput` until
    a valid decision arrives or `timeout_seconds` pass (then the outcome is `expired`). Invalid
    input (stale evidence, an approver not on the allow-list, too late) is refused, audited and
    answered in the card's thread, and the run pauses again for the time that is left.
    """
    from prefect.context import FlowRunContext
    from prefect.states import Running

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("await_decision must be called inside a flow run")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("await_decision blocks: call it from a sync flow, not an async one")
    run_id = context.flow_run.id
    settings = ApprovalSettings.from_project(project)
    poll = poll_seconds if poll_seconds is not None else settings.poll_seconds
    hash_ = evidence_hash(evidence)

    # 1. an earlier attempt of this run may already hold the request, or even the decision
    existing = _sync(_read_decision, run_id, hash_)
    if existing is not None:
        return existing
    request = _sync(_latest_request, run_id)
    if request is None or request.evidence_hash != hash_:
        now = _now()
        request = ApprovalRequest(
            run_id=str(run_id),
            evidence=evidence,
            evidence_hash=hash_,
            requested_at=now,
            expires_at=now + timedelta(seconds=timeout_seconds),
            approvers=list(allowed_approvers),
            channels=list(settings.channels),
            poll_seconds=poll,
            url=run_url(project, run_id),
        )
        # 2. the card in Slack, then the request stored with the run
        delivery = post_approval_card(project, request)
        request = request.model_copy(
            update={"card_channel": delivery.channel, "card_ts": delivery.ts}
        )
        _write_input(run_id, REQUEST_KEY + hash_, request)
    _evidence_artifact(request)
    form = ApprovalInput.with_initial_data(description=evidence_markdown(request))

    # 3. pause until a valid decision or the deadline
    decision: Decision | None = None
    while decision is None:
        remaining = (request.expires_at - _now()).total_seconds()
        if remaining <= 0:
            break
        try:
            answer = _pause_for_input(run_id, form, request.expires_at, poll)
        except FlowPauseTimeout:
            # take the run back from Paused, or the server fails it for never resuming
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(
                    run_id, Running(message="approval request expired"), force=True
                )
            break
        decided_at = _input_time(run_id, answer) or _now()
        try:
            who = authenticate(project, str(run_id), answer)
            reason = check_submission(
                request, answer.evidence_hash, who.approver, who.channel, decided_at
            )
        except Forged as exc:
            who, reason = Identity("ui", answer.approver or UI_IDENTITY, answer.comment), str(exc)
        if reason:
            record_refusal(
                project,
                str(run_id),
                answer.decision,
                who.approver,
                who.channel,
                answer.evidence_hash,
                reason,
                who.comment,
            )
            reply_on_card(
                project,
                request,
                f"Refused {answer.decision} by {who.channel}:{who.approver}: {reason}",
            )
            continue
        decision = Decision(
            outcome=answer.decision,
            approver=who.approver,
            channel=who.channel,
            comment=who.comment,
            decided_at=decided_at,
            evidence_hash=hash_,
            run_id=str(run_id),
            candidate=evidence.candidate,
        )
    if decision is None:
        decision = Decision(
            outcome="expired",
            decided_at=_now(),
            evidence_hash=hash_,
            run_id=str(run_id),
            candidate=evidence.candidate,
        )

    # 4. record it, sealed, with the run and in the audit log, then show it on the card
    decision = seal_decision(project, decision)
    _write_input(run_id, DECISION_KEY + hash_, decision)
    append_audit(
        project,
        AuditEntry(
            at=decision.decided_at,
            event="decision",
            decision=decision.outcome,
            approver=decision.approver,
            channel=decision.channel or "timeout",
            run_id=str(run_id),
            evidence_hash=hash_,
            comment=decision.comment,
        ),
    )
    update_approval_card(project, request, decision)
    log.info("approval for run %s: %s", run_id, decision.describe())
    return decision


def _input_time(run_id: UUID, answer: RunInput) -> datetime | None:
    """When the server accepted this input (its record's creation time)."""
    key = getattr(getattr(answer, "metadata", None), "key", None)
    if not key:
        return None
    with get_client(sync_client=True) as client:
        items = client.filter_flow_run_input(
            flow_run_id=run_id, key_prefix=key, limit=1, exclude_keys=set()
        )
    return items[0].created if items else None


def _evidence_artifact(request: ApprovalRequest) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        evidence_markdown(request),
        key="approval-evidence",
        description=f"Evidence {request.evidence_hash} for the approval of "
        f"{request.evidence.candidate}",
    )
