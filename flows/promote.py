"""The promote flow: an approved candidate becomes the serving model, or the old one stays.

Nothing here changes what serves until the candidate has passed its checks
(tasks/release/rollout.py); a failure at any step is told to the cycle's Slack thread
(tasks/release/promote_steps.py) and ends the run Failed.
"""

from __future__ import annotations

from prefect import flow

from config.loader import load_project
from tasks.notify import Notice, close_thread, send_notice
from tasks.release.promote_steps import (
    build_release,
    check_approval,
    promoted_text,
    promotion_lineage,
    roll_forward,
)
from tasks.release.releases import read_serving
from tasks.release.rollout import reconcile


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
    project = load_project(config)

    # 0. the sealed approval recorded with the retrain run, for exactly this candidate and
    #    evidence; without it nothing changes
    decision = check_approval(project, candidate, retrain_run, evidence_hash)

    # 1. bentoml build (lineage on the labels, the exact model tag as a build argument) and
    #    the exported archive, the release artifact
    lineage = promotion_lineage(decision, retrain_run, evidence_hash)
    bento = build_release(project, candidate, lineage)

    # 2. roll forward: idle slot ready, smoke-tested, traffic switched, watched, old slot off
    #    (or the configured backend's equivalent)
    release = roll_forward(project, bento)

    # 3. say so, and end the cycle's thread
    send_notice(project, Notice(text=promoted_text(release, decision)), None)
    close_thread(project)
    return release.bento
