"""Submitting a decision from the CLI or Slack: check it, resume the paused run with it sealed,
and tell the submitter whether it was recorded, or who decided first, or why it was refused.

`check_submission` is the one rule for every channel; the flow applies it again to inputs that
came another way (the Prefect UI's form).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Literal
from uuid import UUID

from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import ObjectNotFound

from config.loader import Project
from config.schema import APPROVAL_CHANNELS
from tasks.approval.audit import arecord_refusal, read_audit
from tasks.approval.deadline import deciders
from tasks.approval.identity import input_seal
from tasks.approval.records import ApprovalRequest, Channel, Decision, SubmitResult, iso, utc_now
from tasks.approval.store import latest_request, latest_response, read_decision


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
    allowed = deciders(request, now)
    if allowed and approver not in allowed_on(allowed, channel):
        if request.on_timeout == "escalate" and approver in allowed_on(
            request.escalate_to, channel
        ):
            return (
                f"{channel}:{approver} may decide only once the request is escalated, "
                f"at {iso(request.expires_at)}"
            )
        listed = ", ".join(allowed)
        return f"{channel}:{approver} is not on the approver allow-list ({listed})"
    if now > request.final_at:
        return f"the request closed at {iso(request.final_at)} (rejected by timeout)"
    return None


def allowed_on(approvers: list[str], channel: str) -> list[str]:
    """The identities the allow-list names for `channel` (bare entries count on any)."""
    return [
        entry.split(":", 1)[1] if ":" in entry else entry
        for entry in approvers
        if ":" not in entry or entry.split(":", 1)[0] == channel
    ]


async def _settle(client: PrefectClient, run_id: UUID, request: ApprovalRequest, seconds: float):
    """Wait for the flow to record a decision, pause again, or end.

    Returns (kind, decision, run): decided (recorded by the flow), paused (it refused the input and
    waits again), ended (finished without a decision), or pending (not confirmed in time: the
    newest accepted input, provisionally).
    """
    deadline = time.monotonic() + seconds
    while True:
        run = await client.read_flow_run(run_id)
        decision = await read_decision(client, run_id, request.evidence_hash)
        if decision is not None:
            return "decided", decision, run
        if run.state is not None and run.state.is_paused():
            return "paused", None, run
        if run.state is not None and run.state.is_final():
            return "ended", None, run
        if time.monotonic() > deadline:
            return "pending", await latest_response(client, run_id, request), run
        await asyncio.sleep(0.2)


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
            request = await latest_request(client, run_uuid)
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
            reason = check_submission(request, evidence_hash, approver, channel, utc_now())
            if reason:
                await arecord_refusal(
                    project, rid, decision, approver, channel, evidence_hash, reason, comment
                )
                return SubmitResult(status="refused", run_id=rid, message=reason, request=request)
            submitted_at = utc_now()
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
                    f"the request closed at {iso(request.final_at)} (rejected by timeout)"
                    if expired
                    else f"Prefect refused the input: {getattr(answer.details, 'reason', '')}"
                )
                await arecord_refusal(
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
                channel=e.channel if e.channel in APPROVAL_CHANNELS else None,
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
    await arecord_refusal(project, rid, decision, approver, channel, request.evidence_hash, message)
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
