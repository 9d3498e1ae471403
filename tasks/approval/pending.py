"""The requests still waiting: paused runs whose stored request has no recorded decision yet."""

from __future__ import annotations

import asyncio

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from config.loader import Project
from tasks.approval.records import PendingRequest, utc_now
from tasks.approval.settings import run_url
from tasks.approval.store import latest_request, read_decision


async def apending_requests(project: Project) -> list[PendingRequest]:
    """`pending_requests` for async code."""
    model = project.config.project.name
    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    found = []
    now = utc_now()
    async with get_client() as client:
        for run in await client.read_flow_runs(flow_run_filter=paused, limit=200):
            request = await latest_request(client, run.id)
            if request is None or request.evidence.model != model:
                continue
            if await read_decision(client, run.id, request.evidence_hash) is not None:
                continue
            found.append(
                PendingRequest(
                    run_id=str(run.id),
                    run_name=run.name,
                    evidence=request.evidence,
                    evidence_hash=request.evidence_hash,
                    requested_at=request.requested_at,
                    expires_at=request.final_at,
                    age_seconds=(now - request.requested_at).total_seconds(),
                    approvers=request.approvers,
                    url=run_url(project, run.id),
                )
            )
    return sorted(found, key=lambda p: p.requested_at)


def pending_requests(project: Project) -> list[PendingRequest]:
    """Paused runs waiting for an approval of this model, oldest first."""
    return asyncio.run(apending_requests(project))
