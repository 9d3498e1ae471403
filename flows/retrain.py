"""The retrain flow: a `dvc repro` candidate, the gate, and one decision by a person."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled

from config.loader import load_project
from flows.promote import promote
from tasks.approval.settings import ApprovalSettings
from tasks.approval.wait import await_decision
from tasks.evidence import WindowEvidence, approval_evidence, evidence_hash
from tasks.notify import Notice, send_notice
from tasks.release.releases import read_serving
from tasks.release.rollout import reconcile
from tasks.retrain.candidate import (
    judge_candidate,
    new_training_set,
    retrain_outcome,
    train_candidate,
)
from tasks.retrain.trigger import earlier_open_retrain


def report_crash(flow, flow_run, state) -> None:
    """on_crashed: the process running the retrain died (killed, out of memory, host lost).
    Say so in the model's thread: nothing was promoted, and a new trigger starts afresh."""

    run = flow_run
    project = load_project((run.parameters or {}).get("config"))
    undone = reconcile(project)  # the promote subflow may have died mid-roll-forward
    serving = read_serving(project)
    send_notice(
        project,
        Notice(
            text=f"retrain run {run.name} ({run.id}) crashed: {state.message or state.name}. "
            f"{undone + '; ' if undone else ''}"
            f"Nothing was promoted; {serving.bento if serving else 'no release'} is still "
            "serving. Trigger a new retrain (`driftloop retrain`) when the cause is fixed."
        ),
        new_cycle_reason=None,
    )


@flow(name="retrain", log_prints=True, persist_result=True, on_crashed=[report_crash])
def retrain(
    reason: str = "manual",
    evidence: WindowEvidence | None = None,
    config: str | None = None,
) -> dict:
    """Train a candidate on the recent labelled window, gate it, ask a person, promote on yes."""
    logger = get_run_logger()
    project = load_project(config)
    run_id = str(flow_run.id or f"local-{int(time.time())}")

    # 0. one retrain per model at a time: the earliest open run goes ahead, later ones stand down
    blocker = earlier_open_retrain(project, run_id) if flow_run.id else None
    if blocker:
        logger.warning("another retrain is open (%s); this one stands down", blocker)
        return Cancelled(message=f"another retrain is open: {blocker}")
    serving = read_serving(project)
    if serving is None:
        raise RuntimeError("no release is serving: nothing to retrain against")
    send_notice(project, Notice(text=f"retrain started: {reason}"), new_cycle_reason=reason)

    # 1. the new training set, versioned (DVC + git)
    trainset = new_training_set(project, serving, run_id)
    logger.info(
        "training set: %s rows (%s reference + %s recent, %s held out), data rev %s",
        trainset.rows,
        trainset.reference_rows,
        trainset.window_rows,
        len(trainset.holdout),
        trainset.data_rev[:12],
    )

    # 2. dvc repro: the same pipeline a person runs
    training, candidate = train_candidate(project, run_id)
    logger.info("candidate %s; held-out split %s", candidate, training.metrics)

    # 3. the gate: candidate vs champion on the held-out recent window
    verdict = judge_candidate(project, serving.model_tag, trainset.holdout, candidate_tag=candidate)
    logger.info("gate: %s", verdict.reason)
    if not verdict.passed:
        send_notice(
            project,
            Notice(
                text=f"candidate {candidate} failed the gate: {verdict.reason}; no approval asked"
            ),
            None,
        )
        return retrain_outcome(candidate, trainset.data_rev, verdict)

    # 4. one decision: Slack buttons, the Prefect UI resume form, or the CLI
    proof = approval_evidence(
        project.config.project.name,
        reason,
        evidence,
        verdict.lines,
        trainset.data_rev,
        candidate,
        run_id,
    )
    settings = ApprovalSettings.from_project(project)
    decision = await_decision(project, proof, settings.timeout_seconds, settings.approvers)
    logger.info("decision: %s", decision.describe())
    if decision.outcome != "approve":
        return retrain_outcome(candidate, trainset.data_rev, verdict, decision.describe())

    # 5. promote: a lineage-labelled bento, rolled forward behind nginx
    release = promote(
        candidate=candidate, retrain_run=run_id, evidence_hash=evidence_hash(proof), config=config
    )
    return retrain_outcome(candidate, trainset.data_rev, verdict, decision.describe(), release)
