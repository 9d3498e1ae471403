"""Starting and finding retrain runs in Prefect: the deployment the policy triggers."""

from __future__ import annotations

from prefect import get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from config.loader import Project

RETRAIN_DEPLOYMENT = "retrain/retrain"
OPEN_STATES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]


def open_retrain(project: Project) -> str | None:
    """The id and state of a retrain run that is not finished, if any (running or awaiting
    approval): the policy never starts a second one."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=OPEN_STATES))
            ),
            limit=20,
        )
    mine = [
        r for r in runs if (r.parameters or {}).get("model") in (None, project.config.project.name)
    ]
    if not mine:
        return None
    run = mine[0]
    return f"{run.name} ({run.id}, {run.state_name})"


@task(name="start_retrain", cache_policy=NO_CACHE)
def start_retrain(project: Project, reason: str, evidence: dict) -> str | None:
    """Start the `retrain` deployment; returns its run id, or None when it is not registered."""
    try:
        run = run_deployment(
            RETRAIN_DEPLOYMENT,
            parameters={"reason": reason, "evidence": evidence},
            timeout=0,
            tags=["policy"],
        )
    except ObjectNotFound:
        return None
    return str(run.id)
