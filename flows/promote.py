"""The promote flow: an approved candidate becomes the serving model, or the old one stays."""

from __future__ import annotations

from prefect import flow, get_run_logger

from config.loader import load_project
from tasks.notify import Notice, close_thread, send_notice
from tasks.package import build_bento, export_bento
from tasks.rollout import go_live


@flow(name="promote", log_prints=True, persist_result=True)
def promote(
    candidate: str,
    retrain_run: str = "",
    approver: str = "",
    evidence_hash: str = "",
    config: str | None = None,
) -> str:
    """Build the bento with its lineage, roll it forward, and say what serves now."""
    logger = get_run_logger()
    project = load_project(config)

    # 1. bentoml build, lineage on the labels, the exact model tag as a build argument
    bento = build_bento(
        project,
        candidate,
        extra_labels={
            "retrain_run": retrain_run,
            "approver": approver,
            "evidence_hash": evidence_hash,
        },
    )
    archive = export_bento(project, bento.tag)
    logger.info("built %s; release artifact %s", bento.tag, archive)

    # 2. roll forward: idle slot ready, traffic switched, old slot stopped
    release = go_live(project, bento)

    # 3. say so, and end the cycle's thread
    send_notice(
        project,
        Notice(
            text=f"{bento.tag} now serving (model {candidate}), approved by {approver or 'n/a'}"
        ),
        None,
    )
    close_thread(project)
    return release.bento
