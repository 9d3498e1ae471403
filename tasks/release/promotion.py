"""A second chance for an approved candidate whose promotion failed (a held port, a full disk).

`driftloop promote RUN` puts the candidate of retrain RUN into service with the decision
already recorded with that run: nobody is asked again, and nobody can use it for a run that
was rejected, expired, never approved, or whose candidate was promoted already.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect import get_client
from prefect.exceptions import ObjectNotFound

from config.loader import Project
from tasks.approval.store import recorded_decision
from tasks.commands import CommandError
from tasks.release.releases import read_attempts


class PromotionRefused(CommandError):
    """The run's record does not allow a promotion; the message says why."""


@dataclass(frozen=True)
class ApprovedCandidate:
    run_id: str
    candidate: str
    approver: str
    channel: str
    approved_at: str
    evidence_hash: str


def approved_candidate(project: Project, run_id: str) -> ApprovedCandidate:
    """The candidate of `run_id` with the approval recorded for it, or PromotionRefused."""

    run = _retrain_run(run_id)
    request, decision = recorded_decision(project, str(run.id))
    if request is None:
        raise PromotionRefused(
            f"retrain run {run_id} never asked for approval (its gate failed, or it ended "
            "before the request); nothing to promote"
        )
    if decision is None:
        if run.state_type and run.state_type.value in ("PAUSED", "SCHEDULED"):
            raise PromotionRefused(
                f"retrain run {run_id} is still waiting for a decision: "
                f"`driftloop approve {run_id}` decides it (and promotes on approval)"
            )
        raise PromotionRefused(f"retrain run {run_id} was never approved: no decision recorded")
    if decision.outcome != "approve":
        comment = f" ({decision.comment})" if decision.comment else ""
        raise PromotionRefused(
            f"retrain run {run_id} was {decision.describe()}{comment}; only an approved "
            "candidate can be promoted"
        )
    promoted = _promoted_release(project, str(run.id))
    if promoted is not None:
        raise PromotionRefused(f"retrain run {run_id}'s candidate was already promoted: {promoted}")
    if run.state_type and run.state_type.value in ("RUNNING", "PENDING"):
        raise PromotionRefused(
            f"retrain run {run_id} is still running its promotion; wait for it to end"
        )
    return ApprovedCandidate(
        run_id=str(run.id),
        candidate=request.evidence.candidate,
        approver=decision.approver or "",
        channel=decision.channel or "",
        approved_at=decision.decided_at.isoformat(timespec="seconds"),
        evidence_hash=decision.evidence_hash,
    )


def _retrain_run(run_id: str):
    try:
        UUID(run_id)
    except ValueError:
        raise PromotionRefused(
            f"{run_id!r} is not a flow run id (the retrain's id, as `driftloop pending` "
            "and the Slack card show it)"
        ) from None
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            raise PromotionRefused(f"there is no flow run {run_id} on the Prefect server") from None
    return run


def _promoted_release(project: Project, run_id: str) -> str | None:
    """'BENTO at TIME' when a release of this run's candidate was ever put into service."""
    for attempt in read_attempts(project):
        release = attempt.release
        if attempt.outcome == "promoted" and release.labels.get("retrain_run") == run_id:
            return f"{release.bento} at {attempt.at}"
    return None
