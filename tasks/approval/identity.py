"""Who decided: the identity an input proves by its seal, and whether a recorded decision is ours.

The CLI and the Slack app seal a resume input with the local decision key (`seal`); the flow
trusts the channel and approver only when that seal verifies, and an unsealed input is the
Prefect UI's. The flow seals the decision it records, and a promotion needs exactly such a
sealed approval (`verified_approval`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from config.loader import Project
from config.schema import SEALING_CHANNELS
from tasks.approval.records import UI_IDENTITY, ApprovalInput, Channel, Decision
from tasks.approval.seal import seal, verify
from tasks.approval.store import recorded_decision
from tasks.commands import CommandError


class Forged(ValueError):
    """An input whose seal does not verify: refused, whatever it claims."""


@dataclass(frozen=True)
class Identity:
    """Who an input proves it came from, and the comment to record with it."""

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
    fields = _input_fields(run_id, decision, approver, channel, comment, evidence_hash)
    return json.dumps({"channel": channel, "sig": seal(project, fields)})


def authenticate(project: Project, run_id: str, answer: ApprovalInput) -> Identity:
    """The channel and identity an input proves: its seal's, or the UI's when it has none."""
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
    if channel not in SEALING_CHANNELS or not verify(project, fields, str(signature)):
        raise Forged("the input's seal does not verify (forged or altered)")
    return Identity(channel, answer.approver, answer.comment)


def seal_decision(project: Project, decision: Decision) -> Decision:
    """`decision` with its seal: what the flow records, and what `verified_approval` checks."""
    return decision.model_copy(update={"seal": seal(project, decision.sealed_fields())})


class NoRecordedApproval(CommandError):
    """A promotion asked for without an approval recorded for exactly that candidate."""


def verified_approval(
    project: Project, run_id: str, candidate: str, evidence_hash_: str
) -> Decision:
    """The sealed approval recorded with `run_id` for `candidate` on `evidence_hash_`, or
    NoRecordedApproval saying what is missing. Only this makes a promotion legitimate."""
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
