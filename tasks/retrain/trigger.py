"""Starting and finding retrain runs in Prefect: the deployment the policy triggers.

At most one retrain per model is open (running or awaiting approval) at a time, whoever starts
it. Two guards make that hold under concurrent triggers: `start_retrain` keys each new run on the
newest earlier one, so simultaneous triggers collapse into one run on the server; and a retrain
run that finds an earlier open one (started some other way) stands down before doing anything.
"""

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
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from config.loader import Project
from tasks.evidence import WindowEvidence

RETRAIN_DEPLOYMENT = "retrain/retrain"
OPEN_STATES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]


def _retrain_runs(open_only: bool) -> list[FlowRun]:
    """The retrain runs on this model's Prefect server, oldest first. The deployment's name is
    fixed (`retrain/retrain`), so a server holds one model's loop and every run is this model's."""
    run_filter = None
    if open_only:
        run_filter = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=OPEN_STATES))
        )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
            flow_run_filter=run_filter,
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=200,
        )
    return sorted(runs, key=lambda r: (r.created, str(r.id)))


def _describe(run: FlowRun) -> str:
    return f"{run.name} ({run.id}, {run.state_name})"


def open_retrain(project: Project) -> str | None:
    """The id and state of a retrain run that is not finished, if any (running or awaiting
    approval): the policy never starts a second one."""
    runs = _retrain_runs(open_only=True)
    return _describe(runs[0]) if runs else None


def earlier_open_retrain(project: Project, run_id: str) -> str | None:
    """An open retrain run created before `run_id`, if any: the earliest open run goes ahead and
    every later one stands down, so concurrent runs agree on one without a lock."""
    runs = _retrain_runs(open_only=True)
    me = next((r for r in runs if str(r.id) == run_id), None)
    if me is None:
        return _describe(runs[0]) if runs else None
    earlier = [r for r in runs if (r.created, str(r.id)) < (me.created, str(me.id))]
    return _describe(earlier[0]) if earlier else None


@task(cache_policy=NO_CACHE)
def start_retrain(
    project: Project, reason: str, evidence: WindowEvidence | None, source: str = "policy"
) -> str | None:
    """Start the `retrain` deployment unless a retrain is open; returns the run id (the open
    one's when there is one), or None when the deployment is not registered."""
    runs = _retrain_runs(open_only=False)
    newest = runs[-1] if runs else None
    if newest is not None and newest.state_type in OPEN_STATES:
        return str(newest.id)
    # triggers racing each other all read the same newest run, hence send the same key: the
    # server creates one run for them and hands it to each
    after = str(newest.id) if newest else "none"
    try:
        run = run_deployment(
            RETRAIN_DEPLOYMENT,
            parameters={
                "reason": reason,
                "evidence": evidence.model_dump(mode="json") if evidence else None,
            },
            timeout=0,
            tags=[source],
            idempotency_key=f"retrain:{project.config.project.name}:after:{after}",
        )
    except ObjectNotFound:
        return None
    return str(run.id)
