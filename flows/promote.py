"""The promote flow: an approved candidate becomes the serving model, or the old one stays.

Nothing here changes what serves until the candidate has passed its checks
(tasks/release/rollout.py); a failure at any step is told to the cycle's Slack thread and
ends the run Failed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from config.loader import Project, load_project
from tasks.approval.identity import NoRecordedApproval, verified_approval
from tasks.notify import Notice, close_thread, send_notice
from tasks.release.package import build_bento, export_bento
from tasks.release.releases import Attempt, Release, read_serving
from tasks.release.rollout import RolloutFailed, attempt_failed, put_into_service, reconcile


def reconcile_after_crash(flow, flow_run, state) -> None:
    """on_crashed: the process died mid-roll-forward; put serving back as recorded, say so."""
    project = load_project((flow_run.parameters or {}).get("config"))
    undone = reconcile(project)
    serving = read_serving(project)
    send_notice(
        project,
        Notice(
            text=f":x: promote run {flow_run.name} crashed: {state.message or state.name}. "
            f"{undone or 'Nothing had changed'}; "
            f"{serving.bento if serving else 'nothing'} is serving."
        ),
        None,
    )


@flow(name="promote", log_prints=True, persist_result=True, on_crashed=[reconcile_after_crash])
def promote(
    candidate: str,
    retrain_run: str,
    evidence_hash: str,
    config: str | None = None,
) -> str:
    """Build the approved candidate's bento with its lineage, roll it forward, say what serves."""
    logger = get_run_logger()
    project = load_project(config)

    # 0. the sealed approval recorded with the retrain run, for exactly this candidate and
    #    evidence: no parameter can stand in for it; without it nothing changes
    try:
        decision = verified_approval(project, retrain_run, candidate, evidence_hash)
    except NoRecordedApproval as exc:
        refuse_promotion(project, candidate, retrain_run, evidence_hash, str(exc))
        raise
    approver = decision.approver or ""

    # 1. bentoml build (lineage on the labels, the exact model tag as a build argument) and
    #    the exported archive, the release artifact
    lineage = {
        "retrain_run": retrain_run,
        "approver": approver,
        "approval_channel": decision.channel or "",
        "approved_at": decision.decided_at.isoformat(timespec="seconds"),
        "evidence_hash": evidence_hash,
    }
    try:
        bento = build_bento(project, candidate, extra_labels=lineage)
        archive = export_bento(project, bento.tag)
    except Exception as exc:
        report_failure(
            project,
            attempt_failed(project, None, "build", exc, model_tag=candidate, labels=lineage),
        )
        raise
    logger.info("built %s; release artifact %s", bento.tag, archive)

    # 2. roll forward: idle slot ready, smoke-tested, traffic switched, watched, old slot off
    #    (or the configured backend's equivalent)
    try:
        release = put_into_service(project, bento, progress=logger.info)
    except RolloutFailed as exc:
        report_failure(project, exc.attempt)
        raise

    # 3. say so, and end the cycle's thread
    who = f"{decision.channel}:{approver}"
    send_notice(project, Notice(text=promoted_text(release, who)), None)
    close_thread(project)
    return release.bento


def refuse_promotion(
    project: Project, candidate: str, retrain_run: str, evidence_hash: str, reason: str
) -> None:
    """Audit a promotion asked for without a recorded approval; serving is not touched."""
    from tasks.approval.audit import record_refusal

    text = f":no_entry: promotion of {candidate} refused: {reason}. Serving is unchanged."
    get_run_logger().error(text)
    record_refusal(project, retrain_run, "promote", None, "promote", evidence_hash, reason)
    send_notice(project, Notice(text=text), None)


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


def promoted_text(release: Release, approver: str) -> str:
    return (
        f":rocket: {release.bento} now serving (model {release.model_tag}), "
        f"approved by {approver or 'n/a'}"
    )
