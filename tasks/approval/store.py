"""The run-input store: the request and the decision live with the paused run as its inputs.

A request is stored under `REQUEST_KEY` + its evidence hash, the flow's decision under
`DECISION_KEY` + the hash; Prefect keeps each resume under `paused-<key>-response`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRunInput
from pydantic import BaseModel

from config.loader import Project
from config.schema import APPROVAL_CHANNELS
from tasks.approval.records import UI_IDENTITY, ApprovalRequest, Decision, utc_now

T = TypeVar("T")

REQUEST_KEY = "driftloop-approval-request-"  # + evidence hash: one request per evidence
DECISION_KEY = "driftloop-approval-decision-"


def _decode(item: FlowRunInput) -> Any:
    return item.decoded_value


async def _inputs(client: PrefectClient, run_id: UUID, prefix: str) -> list[FlowRunInput]:
    return await client.filter_flow_run_input(
        flow_run_id=run_id, key_prefix=prefix, limit=500, exclude_keys=set()
    )


async def latest_request(client: PrefectClient, run_id: UUID) -> ApprovalRequest | None:
    """The newest request stored with the run (a retried run may have stored several)."""
    items = await _inputs(client, run_id, REQUEST_KEY)
    if not items:
        return None
    latest = max(items, key=lambda i: i.created or datetime.min.replace(tzinfo=UTC))
    return ApprovalRequest.model_validate(_decode(latest))


async def read_decision(client: PrefectClient, run_id: UUID, hash_: str) -> Decision | None:
    """The decision the flow recorded for the evidence `hash_`, if any."""
    items = await _inputs(client, run_id, DECISION_KEY + hash_)
    return Decision.model_validate(_decode(items[0])) if items else None


async def latest_response(
    client: PrefectClient, run_id: UUID, request: ApprovalRequest
) -> Decision | None:
    """The newest input the server accepted (maybe not yet validated by the flow)."""
    items = [i for i in await _inputs(client, run_id, "paused-") if i.key.endswith("-response")]
    if not items:
        return None
    latest = max(items, key=lambda i: i.created or datetime.min.replace(tzinfo=UTC))
    value = _decode(latest) or {}
    try:  # the claimed channel, for telling a later submitter who came first; unverified
        channel = json.loads(value.get("seal") or "{}").get("channel", "ui")
    except (ValueError, AttributeError):
        channel = "ui"
    return Decision(
        outcome=value.get("decision", "approve"),
        approver=value.get("approver") if value.get("seal") else UI_IDENTITY,
        channel=channel if channel in APPROVAL_CHANNELS else "ui",
        comment=value.get("comment", ""),
        decided_at=latest.created or utc_now(),
        evidence_hash=value.get("evidence_hash") or request.evidence_hash,
        run_id=str(run_id),
    )


def recorded_decision(
    project: Project, run_id: str
) -> tuple[ApprovalRequest | None, Decision | None]:
    """The request stored with a retrain run and the decision recorded for it, as the run's
    own inputs hold them (None where there is none)."""

    async def read(client: PrefectClient, run: UUID):
        request = await latest_request(client, run)
        if request is None:
            return None, None
        return request, await read_decision(client, run, request.evidence_hash)

    return run_sync(read, UUID(run_id))


def write_input(run_id: UUID, key: str, value: BaseModel) -> None:
    """Store `value` with the run under `key`."""
    with get_client(sync_client=True) as client:
        client.create_flow_run_input(flow_run_id=run_id, key=key, value=value.model_dump_json())


def run_sync(coro_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run one of the async readers from sync flow code (no loop is running there)."""

    async def go():
        async with get_client() as client:
            return await coro_fn(client, *args)

    return asyncio.run(go())
