"""Putting a bento into service behind the stack's nginx: idle slot up, traffic over, old slot off.

This is the roll-forward's skeleton: the candidate must be ready before any traffic moves, and the
previous release keeps serving until the switch succeeded.
"""

from __future__ import annotations

from config.loader import Project
from tasks.metrics import push_serving_info
from tasks.package import Bento
from tasks.releases import Release, read_serving, record_serving
from tasks.serving import SLOTS, start_slot, stop_slot, switch_traffic


def idle_slot(current: Release | None) -> str:
    if current is None or current.slot not in SLOTS:
        return SLOTS[0]
    return SLOTS[1 - SLOTS.index(current.slot)]


def go_live(project: Project, bento: Bento) -> Release:
    """Serve `bento` through nginx; on any failure the previous release keeps serving."""
    current = read_serving(project)
    slot = idle_slot(current)
    start_slot(project, slot, bento.tag)
    try:
        switch_traffic(project, slot)
    except Exception:
        stop_slot(project, slot)
        raise
    serving = project.config.serving
    release = record_serving(
        project,
        Release(
            bento=bento.tag,
            model_tag=bento.model_tag,
            labels=bento.labels,
            slot=slot,
            url=f"http://{serving.host}:{serving.port}",
        ),
    )
    if current is not None and current.slot in SLOTS and current.slot != slot:
        stop_slot(project, current.slot)
    push_serving_info(project, release)
    return release
