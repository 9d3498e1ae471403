"""`kill -9` of the process running a retrain, at each of its steps: the run ends Crashed well
within 2 minutes and is reported in Slack, serving is unchanged, no release is half-built, and
the next trigger runs to a decision. Real Prefect server and process worker, real DVC and
BentoML store. (Kills during promote are covered with the promote flow.)"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import (
    bentos,
    descendants,
    flow_pids,
    flow_run,
    kill_run,
    request_hash,
    task_states,
    wait_until,
)
from tests.support import sh

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
CRASH_DEADLINE = 120


def reached(run_id: str, step: str) -> bool:
    """The run is inside `step`: a task running, or (for `approval`) paused for the decision."""
    if step == "approval":
        state = flow_run(run_id).state
        return state is not None and state.is_paused()
    if task_states(run_id).get(step) != "RUNNING":
        return False
    if step == "train_candidate":  # kill while a stage runs, not before dvc starts
        return any(b"dvc" in _cmdline(pid) for top in flow_pids(run_id) for pid in descendants(top))
    return True


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


@pytest.mark.parametrize(
    "step", ["new_training_set", "train_candidate", "judge_candidate", "approval"]
)
def test_kill_9_during_a_retrain_step(retrain_rig, step):
    from tasks.approval.pending import pending_requests
    from tasks.release.releases import read_serving
    from tasks.retrain.trigger import open_retrain, start_retrain

    project, slack = retrain_rig.project, retrain_rig.slack
    before_bentos = bentos(project)
    run_id = start_retrain.fn(project, f"test: kill -9 at {step}", None)
    wait_until(lambda: reached(run_id, step), 300, f"the retrain reaching {step}", every=0.1)

    kill_run(run_id)
    killed_at = time.monotonic()
    state = wait_until(
        lambda: (s := flow_run(run_id).state) is not None and s.is_final() and s,
        CRASH_DEADLINE,
        "the killed run reaching a final state",
    )
    assert state.is_crashed(), state
    assert time.monotonic() - killed_at < CRASH_DEADLINE

    # reported: the thread says it crashed, and that nothing was promoted
    def crash_notice():
        return [b for b in slack.posted() if run_id in b.get("text", "") and "crashed" in b["text"]]

    (notice,) = wait_until(crash_notice, 120, "the crash notice")  # the worker runs the hook
    assert retrain_rig.serving_bento in notice["text"] and "Nothing was promoted" in notice["text"]

    # serving unchanged, nothing half-built, nothing left open or running
    assert read_serving(project).bento == retrain_rig.serving_bento
    assert bentos(project) == before_bentos
    assert open_retrain(project) is None
    assert run_id not in [p.run_id for p in pending_requests(project)]
    assert flow_pids(run_id) == []


def test_after_the_kills_the_next_trigger_runs_to_a_decision(retrain_rig):
    from tasks.approval.submit import submit_decision
    from tasks.release.releases import read_serving
    from tasks.retrain.trigger import start_retrain

    project = retrain_rig.project
    run_id = start_retrain.fn(project, "test: after the kills", None)
    wait_until(lambda: flow_run(run_id).state.is_paused(), 300, "the retrain asking for approval")
    result = submit_decision(
        project,
        run_id,
        "reject",
        "alice",
        "cli",
        "test: after the kills",
        request_hash(project, run_id),
    )
    assert result.status == "recorded", result.message
    wait_until(lambda: flow_run(run_id).state.is_completed(), 60, "the retrain finishing")
    assert read_serving(project).bento == retrain_rig.serving_bento
    # the data rev and dvc.lock of the last run are committed and DVC agrees with the workspace
    root = retrain_rig.root
    assert sh(["git", "status", "--porcelain", "--", "data", "dvc.lock"], root).stdout == ""
    assert "up to date" in sh(["dvc", "status"], root).stdout
