"""The Prefect server restarted 20 times while a retrain waits for approval: the request is
never lost, the paused run stays paused, and an approval afterwards still resumes it.

The server is a real one on SQLite, restarted as a process (the database file stays), as a
host reboot or `driftloop down`/`up` would; the run waits in the approval step of the retrain
(`await_decision`, through the same stub flow the approval tests use).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import BIN, free_port, stop_group

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
RESTARTS = 20


class Server:
    """`prefect server start` on a fixed port and home, stopped and started by its own pid."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": f"{self.url}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def start(self, deadline: float = 120) -> float:
        """Start and wait for /api/health; returns the seconds it took."""
        began = time.monotonic()
        log = (self.home / "server.log").open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host=127.0.0.1", f"--port={self.port}"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() - began < deadline:
            assert self.process.poll() is None, (self.home / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"Prefect server not healthy within {deadline} s")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, grace=20)


@pytest.fixture
def server(tmp_path):
    """A server of this test alone, with the Prefect settings of this process pointing at it.

    The client's own retries are off in this process: with them a poll rides out a short outage
    by itself and fails only when its back-off happens to span several restarts, so the waiting
    flow met the outage at random; without them it meets every one of the 20.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        PREFECT_HOME,
        temporary_settings,
    )

    home = tmp_path / "prefect-home"
    home.mkdir()
    own = Server(home)
    own.start()
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ.update({"PREFECT_API_URL": f"{own.url}/api", "PREFECT_HOME": str(home)})
    try:
        with temporary_settings(
            updates={
                PREFECT_API_URL: f"{own.url}/api",
                PREFECT_HOME: home,
                PREFECT_CLIENT_MAX_RETRIES: 0,
            }
        ):
            yield own
    finally:
        own.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_twenty_restarts_while_awaiting_approval_lose_nothing(server, slack, project):
    from prefect import get_client

    from tasks.approval.audit import read_audit
    from tasks.approval.pending import pending_requests

    run = start_stub(project, "bikeshare:restarts", timeout=900)
    try:
        for cycle in range(RESTARTS):
            server.stop()
            server.start()
            assert run.thread.is_alive(), f"the paused flow died at restart {cycle + 1}"
            pending = [p.run_id for p in pending_requests(project)]
            assert pending == [run.run_id], f"restart {cycle + 1}: pending {pending}"
            with get_client(sync_client=True) as client:
                assert client.read_flow_run(run.run_id).state.is_paused()

        result = submit_with_retries(
            project,
            run.run_id,
            "approve",
            "alice",
            "cli",
            "after restarts",
            run.hash,
        )
        assert result.status == "recorded", result.message
        outcome = run.result(timeout=120)
        assert (outcome["outcome"], outcome["approver"]) == ("approve", "alice")
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(run.run_id).state.is_completed()
        assert pending_requests(project) == []
        decided = [
            (e.decision, e.approver, e.channel)
            for e in read_audit(project, run.run_id)
            if e.event == "decision"
        ]
        assert decided == [("approve", "alice", "cli")]
    finally:
        run.close()


def submit_with_retries(*args):
    """A CLI decision with the client's default retries back on.

    The retries are off in this module for the waiting flow only. Just after a restart the
    server can answer 503 while SQLite is busy; `driftloop approve` rides that out with the
    client's own retries, and so does this."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from tasks.approval.submit import submit_decision

    default = PREFECT_CLIENT_MAX_RETRIES.default()
    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: default}):
        return submit_decision(*args)


def start_stub(project, candidate: str, timeout: float = 300):
    """A stub run waiting for approval; tried again when the server answered 503 (SQLite busy)
    while the run was created, which the client retries turned off in this module would absorb."""
    from tests.fakes.approval_stub import StubRun

    for attempt in range(3):
        run = StubRun(project, candidate=f"{candidate}-{attempt}", timeout=timeout, poll=0.5)
        try:
            return run.start()
        except AssertionError as exc:
            if "503" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def test_decision_given_while_the_waiting_flow_still_finds_the_server_away(
    server, slack, project, monkeypatch
):
    """The run is resumed before the flow looks again: it loads the input it was resumed with."""
    from tasks.approval import wait

    back = threading.Event()
    ride_out = wait.await_server

    def slow_to_look_again(error, until, every=0.5):
        ride_out(error, until, every)
        back.set()
        time.sleep(8)  # the decision below lands in here

    monkeypatch.setattr(wait, "await_server", slow_to_look_again)
    run = start_stub(project, "bikeshare:away")
    try:
        server.stop()
        server.start()
        assert back.wait(30), "the waiting flow did not notice the restart"
        result = submit_with_retries(project, run.run_id, "reject", "alice", "cli", "no", run.hash)
        assert result.status == "recorded", result.message
        outcome = run.result(timeout=60)
        assert (outcome["outcome"], outcome["comment"]) == ("reject", "no")
    finally:
        run.close()


def test_server_gone_just_as_the_run_pauses(server, slack, project, monkeypatch):
    """The pause never reaches the server: the flow pauses again once it is back."""
    import prefect.flow_runs

    from tests.fakes.approval_stub import StubRun

    pause = prefect.flow_runs.pause_flow_run
    keys: list[str] = []
    restart = threading.Thread(target=lambda: (time.sleep(3), server.start()))

    def pause_as_the_server_goes(*args, **kwargs):
        keys.append(kwargs["key"])
        if len(keys) == 1:
            server.stop()
            restart.start()
        return pause(*args, **kwargs)

    monkeypatch.setattr(prefect.flow_runs, "pause_flow_run", pause_as_the_server_goes)
    run = StubRun(project, candidate="bikeshare:gone", timeout=300, poll=0.5).start(wait=False)
    try:
        end = time.monotonic() + 60
        while restart.ident is None and time.monotonic() < end:  # not started yet
            time.sleep(0.1)
        restart.join(150)  # the server is up again
        run.request = run.wait_pending(60)
        assert len(set(keys)) == 2, keys  # the first pause failed, the second one waits
        result = submit_with_retries(project, run.run_id, "approve", "alice", "cli", "", run.hash)
        assert result.status == "recorded", result.message
        assert run.result(timeout=60)["outcome"] == "approve"
    finally:
        if restart.ident is not None:
            restart.join(150)  # so the fixture stops the server this thread started
        run.close()
