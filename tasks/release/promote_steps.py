"""The promote flow's steps as Prefect tasks: the sealed approval, the release artifact, the
roll-forward. Each step that fails says so in the cycle's Slack thread and the run's log before
it raises, so the flow only wires them and every side effect is a task run in the Prefect UI."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from tasks.approval.audit import record_refusal
from tasks.approval.identity import NoRecordedApproval, verified_approval
from tasks.approval.records import Decision
from tasks.notify import Notice, send_notice
from tasks.release.package import Bento, build_bento, export_bento
from tasks.release.releases import Attempt, Release
from tasks.release.rollout import RolloutFailed, attempt_failed, put_into_service


@task(cache_policy=NO_CACHE)
def check_approval(
    project: Project, candidate: str, retrain_run: str, evidence_hash: str
) -> Decision:
    """The sealed approval recorded for exactly this candidate and evidence; without it the
    request is refused, audited and told, and nothing changes: no parameter stands in for it."""
    try:
        return verified_approval(project, retrain_run, candidate, evidence_hash)
    except NoRecordedApproval as exc:
        text = f":no_entry: promotion of {candidate} refused: {exc}. Serving is unchanged."
        get_run_logger().error(text)
        record_refusal(project, retrain_run, "promote", None, "promote", evidence_hash, str(exc))
        send_notice(project, Notice(text=text), None)
        raise


def promotion_lineage(decision: Decision, retrain_run: str, evidence_hash: str) -> dict[str, str]:
    """The approval's part of a bento's lineage labels (the model adds data rev and commit)."""
    return {
        "retrain_run": retrain_run,
        "approver": decision.approver or "",
        "approval_channel": decision.channel or "",
        "approved_at": decision.decided_at.isoformat(timespec="seconds"),
        "evidence_hash": evidence_hash,
    }


@task(cache_policy=NO_CACHE)
def build_release(project: Project, candidate: str, lineage: dict[str, str]) -> Bento:
    """`bentoml build` with the lineage labels and the exact model tag, then the exported
    archive (the release artifact); a failure is logged as an attempt failed at `build`."""
    try:
        bento = build_bento(project, candidate, extra_labels=lineage)
        archive = export_bento(project, bento.tag)
    except Exception as exc:
        attempt = attempt_failed(project, None, "build", exc, model_tag=candidate, labels=lineage)
        report_failure(project, attempt)
        raise
    get_run_logger().info("built %s; release artifact %s", bento.tag, archive)
    return bento


@task(cache_policy=NO_CACHE)
def roll_forward(project: Project, bento: Bento) -> Release:
    """Idle slot ready, smoke-tested, traffic switched, watched, old slot off (or the configured
    backend's equivalent); any failure leaves the previous release serving, and says so."""
    try:
        return put_into_service(project, bento, progress=get_run_logger().info)
    except RolloutFailed as exc:
        report_failure(project, exc.attempt)
        raise


def report_failure(project: Project, attempt: Attempt) -> None:
    what = attempt.release.bento or f"a bento of {attempt.release.model_tag}"
    serving = attempt.previous or "nothing"
    text = (
        f":x: {what} was not promoted: {attempt.outcome.replace('_', ' ')} at {attempt.stage}.\n"
        f"Reason: {attempt.reason[:1500]}\n{serving} keeps serving. "
        "`driftloop lineage` shows what serves; the attempt is in .driftloop/audit/releases.jsonl."
    )
    get_run_logger().error(text)
    send_notice(project, Notice(text=text), None)


def promoted_text(release: Release, decision: Decision) -> str:
    return (
        f":rocket: {release.bento} now serving (model {release.model_tag}), "
        f"approved by {decision.channel}:{decision.approver or 'n/a'}"
    )
