"""A retrain rig for fault tests: a trained project serving a release, labelled traffic in its
capture store, the `retrain` deployment on a process work pool, and a real Prefect worker that
runs it (each run in its own process, as in production)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.slack_api import FakeSlack
from tests.support import BIN, copy_project, driftloop, tool_env

POOL = "driftloop-faults"


@dataclass
class Rig:
    root: Path
    project: object  # config.loader.Project
    serving_bento: str
    deployment_id: str
    slack: FakeSlack
    worker: subprocess.Popen


def request_hash(project, run_id: str) -> str:
    """The evidence hash of the approval request stored with a paused retrain."""
    from tasks.approval.store import recorded_decision

    request, _ = recorded_decision(project, run_id)
    assert request is not None, f"run {run_id} holds no approval request"
    return request.evidence_hash


def wait_until(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.3):
    """Poll until `predicate` is truthy; fail naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def flow_run(run_id: str):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def task_states(run_id: str) -> dict[str, str]:
    """Task name -> state type of one flow run's task runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: r.state_type.value for r in runs if r.state_type}


def flow_pids(run_id: str) -> list[int]:
    """Processes started for this flow run (the Runner sets PREFECT__FLOW_RUN_ID in them)."""
    needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def descendants(pid: int) -> list[int]:
    """pid's children, grandchildren, ... (from /proc, no psutil)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started, as a lost host or container would."""
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def kill_run(run_id: str, seconds: float = 10) -> None:
    """SIGKILL every process of a flow run, again until none is left: a child the run started
    just as its parent was killed would otherwise outlive it, which a lost host never allows."""
    first = flow_pids(run_id)
    runners = {parent_of(pid) for pid in first}  # the worker's runner, which outlives the run
    deadline = time.monotonic() + seconds
    pids = first
    while pids and time.monotonic() < deadline:
        for pid in pids:
            kill_tree(pid)
        time.sleep(0.05)
        # a new child of the runner is its crash-hook process, started because the run died:
        # a lost host takes the run, not the worker that reports it
        pids = [p for p in flow_pids(run_id) if p in first or parent_of(p) not in runners]


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def bentos(project) -> set[str]:
    """Tags of the bentos in the project's BentoML store."""
    import json

    from tasks.release.package import bentoml_home

    out = subprocess.run(
        [str(BIN / "bentoml"), "list", "-o", "json"],
        env={**tool_env(), "BENTOML_HOME": str(bentoml_home(project))},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {b["tag"] for b in json.loads(out or "[]")}


def deploy(
    root: Path, name: str, entrypoint: str, parameters: dict[str, object], pool: str = POOL
) -> str:
    """A deployment of flow `name` on a process work pool, run in `root` (as `driftloop up`
    deploys the project's flows); returns its id."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name(name)
        return str(
            client.create_deployment(
                flow_id=flow_id,
                name=name,
                work_pool_name=pool,
                entrypoint=entrypoint,
                path=str(root),
                pull_steps=[
                    {"prefect.deployments.steps.set_working_directory": {"directory": str(root)}}
                ],
                parameters=parameters,
            )
        )


def start_worker(
    root: Path, slack: FakeSlack, api_url: str, home: str, pool: str = POOL, log: Path | None = None
) -> subprocess.Popen:
    """A real `prefect worker` on `pool`, in its own process group, talking to `slack`."""
    env = {
        **tool_env(),
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": home,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "SLACK_BOT_TOKEN": slack.token,
        "SLACK_API_URL": slack.url,
    }
    out = (log or root / ".driftloop" / "worker.log").open("wb")
    return subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
        cwd=root,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(worker: subprocess.Popen) -> None:
    """A worker needs two signals to stop (it waits for its runs after the first)."""
    for _ in range(2):
        if worker.poll() is not None:
            return
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            continue
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


def cancel_open_retrains() -> None:
    """Leave no retrain open for later tests (the policy would refuse to start theirs)."""
    from prefect import get_client
    from prefect.states import Cancelled

    from tasks.retrain.trigger import OPEN_STATES

    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(limit=200):
            if run.state_type in OPEN_STATES and run.name and run.flow_id:
                flow = client.read_flow(run.flow_id)
                if flow.name == "retrain":
                    client.set_flow_run_state(run.id, Cancelled(message="test cleanup"), force=True)


@pytest.fixture(scope="session")
def retrain_rig(tmp_path_factory, prefect_server) -> Iterator[Rig]:
    from config.loader import load_project
    from tasks.release.package import bento_info, build_bento, register_model
    from tasks.release.releases import Release, record_serving
    from tests.integration.test_retrain_gate import capture_labelled_traffic

    root = copy_project(tmp_path_factory.mktemp("retrain-rig"))
    driftloop(root, "data")
    driftloop(root, "train")
    project = load_project(root / "config/driftloop.yaml")
    bento = build_bento(project, register_model(project))
    labels = bento_info(project, bento.tag)["labels"]
    record_serving(
        project, Release(bento=bento.tag, model_tag=bento.model_tag, url="-", labels=labels)
    )
    capture_labelled_traffic(project, ["April", "May"])
    deployment_id = deploy(
        root, "retrain", "flows/retrain.py:retrain", {"config": str(project.path)}
    )
    slack = FakeSlack().start()
    worker = start_worker(root, slack, f"{prefect_server}/api", os.environ["PREFECT_HOME"])
    try:
        yield Rig(root, project, bento.tag, deployment_id, slack, worker)
    finally:
        cancel_open_retrains()
        stop_worker(worker)
        from prefect import get_client

        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
        slack.stop()
