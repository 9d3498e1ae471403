"""Ten retrain triggers at once start one retrain; a run started around the trigger (another
channel, a stale queue) stands down while one is open. Real Prefect server and process worker."""

from __future__ import annotations

import contextvars
import os
import subprocess
import threading

import pytest

from tasks.evidence import WindowEvidence
from tests.faults.conftest import flow_run, request_hash, wait_until
from tests.support import BIN, tool_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]
TRIGGERS = 10


def trigger_at_once(project, count: int) -> list[str | None]:
    """`count` policy triggers released together from their own threads."""
    from tasks.retrain.trigger import start_retrain

    gate = threading.Barrier(count)
    results: list[str | None] = [None] * count

    def one(i: int) -> None:
        gate.wait(10)
        results[i] = start_retrain.fn(project, f"test: burst {i}", WindowEvidence(message="burst"))

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(one, i)) for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def retrain_runs() -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])))


def test_ten_triggers_at_once_run_one_retrain(retrain_rig):
    from prefect import get_client

    from tasks.approval.submit import submit_decision
    from tasks.retrain.trigger import start_retrain

    project = retrain_rig.project
    before = {str(r.id) for r in retrain_runs()}
    ids = trigger_at_once(project, TRIGGERS)
    created = [r for r in retrain_runs() if str(r.id) not in before]
    assert len(created) == 1, [r.name for r in created]
    assert set(ids) == {str(created[0].id)}  # every trigger was handed the one run
    run_id = ids[0]

    # it runs to the approval; meanwhile another trigger is handed the same open run
    wait_until(lambda: flow_run(run_id).state.is_paused(), 300, "the retrain asking for approval")
    assert start_retrain.fn(project, "test: late", None) == run_id
    by_hand = subprocess.run(
        [str(BIN / "driftloop"), "retrain", "--config", str(project.path)],
        cwd=project.root,
        env={**tool_env(), "PREFECT_API_URL": os.environ["PREFECT_API_URL"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert by_hand.returncode == 1 and "a retrain is already open" in by_hand.stdout, by_hand

    # a run created around the trigger (not through it) stands down, with the reason
    with get_client(sync_client=True) as client:
        stray = str(client.create_flow_run_from_deployment(retrain_rig.deployment_id).id)
    state = wait_until(
        lambda: (s := flow_run(stray).state) is not None and s.is_final() and s, 120, "the stray"
    )
    assert state.is_cancelled() and f"another retrain is open: {created[0].name}" in state.message
    assert flow_run(run_id).state.is_paused()  # the first one is untouched

    why, hash_ = "test: burst done", request_hash(project, run_id)
    result = submit_decision(project, run_id, "reject", "alice", "cli", why, hash_)
    assert result.status == "recorded", result.message
    wait_until(lambda: flow_run(run_id).state.is_completed(), 60, "the retrain finishing")
