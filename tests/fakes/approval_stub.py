"""A stand-in for the retrain flow's approval step: a tiny flow that calls `await_decision`.

`StubRun` runs it in a thread against the test Prefect server, waits until its request is
pending (so tests get the run id and evidence hash), and on close decides any request a failed
test left open, so no run stays paused.
"""

from __future__ import annotations

import contextvars
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_client

from config.loader import Project, load_project
from tasks.approval.pending import pending_requests
from tasks.approval.records import PendingRequest
from tasks.approval.wait import await_decision
from tasks.evidence import DriftRow, Evidence, GateRow
from tests.support import private_ports


def sample_evidence(candidate: str, model: str = "bikeshare") -> Evidence:
    return Evidence(
        model=model,
        reason="2 windows in a row with dataset drift",
        drift_summary="2 of 11 columns drifted",
        drift=[
            DriftRow(column="temp", method="wasserstein", score=0.31, threshold=0.1),
            DriftRow(column="season", method="jensenshannon", score=0.4, threshold=0.1),
        ],
        gate=[
            GateRow(metric="rmse", champion=61.2, candidate=48.1, delta=-13.1, passed=True),
            GateRow(metric="r2", champion=0.71, candidate=0.8, delta=0.09, passed=True),
        ],
        data_rev="1a2b3c4",
        candidate=candidate,
        retrain_run_id="00000000-0000-0000-0000-000000000000",
    )


@flow(name="approval-stub")
def approval_stub(
    config_path: str, candidate: str, timeout: float, approvers: list[str], poll: float
) -> dict[str, Any]:
    """Ask for approval of a made-up candidate and return the decision."""
    project = load_project(config_path)
    decision = await_decision(
        project, sample_evidence(candidate), timeout, approvers, poll_seconds=poll
    )
    return decision.model_dump(mode="json")


class StubRun:
    def __init__(
        self,
        project: Project,
        candidate: str,
        timeout: float = 60,
        approvers: tuple[str, ...] = ("alice",),
        poll: float = 0.5,
    ) -> None:
        self.project = project
        self.candidate = candidate
        self.args = (str(project.path), candidate, timeout, list(approvers), poll)
        self.outcome: dict[str, Any] | None = None
        self.error: BaseException | None = None
        # the caller's context carries the test server's Prefect settings; a bare thread would
        # fall back to the settings read at import and start an ephemeral server
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._run,), daemon=True)
        self.request: PendingRequest | None = None

    def _run(self) -> None:
        try:
            self.outcome = approval_stub(*self.args)
        except BaseException as exc:
            self.error = exc

    def start(self, wait: bool = True, deadline: float = 60) -> StubRun:
        self.thread.start()
        if wait:
            self.request = self.wait_pending(deadline)
        return self

    def wait_pending(self, deadline: float = 60) -> PendingRequest:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for request in pending_requests(self.project):
                if request.evidence.candidate == self.candidate and self._paused(request.run_id):
                    return request
            assert self.thread.is_alive(), f"the stub flow ended early: {self.error!r}"
            time.sleep(0.2)
        raise AssertionError(f"no pending request for {self.candidate} within {deadline} s")

    def _paused(self, run_id: str) -> bool:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
        return state is not None and state.is_paused()

    @property
    def run_id(self) -> str:
        assert self.request is not None
        return self.request.run_id

    @property
    def hash(self) -> str:
        assert self.request is not None
        return self.request.evidence_hash

    @property
    def button_value(self) -> str:
        return f"{self.run_id}:{self.hash}"

    def result(self, timeout: float = 60) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stub flow did not finish in time"
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome

    def close(self) -> None:
        """Decide a request a failed test left open, so the flow thread ends; flush its logs
        while the server still runs."""
        from prefect.logging.handlers import APILogHandler

        if self.thread.is_alive() and self.request is not None:
            self._decide_for_cleanup()
        APILogHandler().flush()

    def _decide_for_cleanup(self) -> None:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(self.run_id)
            if run.state is not None and run.state.is_paused():
                from tasks.approval.identity import input_seal

                approver = self.args[3][0].split(":")[-1] if self.args[3] else "cleanup"
                comment = "test cleanup"
                seal = input_seal(
                    self.project, self.run_id, "reject", approver, "cli", comment, self.hash
                )
                client.resume_flow_run(
                    self.run_id,
                    run_input={
                        "decision": "reject",
                        "approver": approver,
                        "comment": comment,
                        "evidence_hash": self.hash,
                        "seal": seal,
                    },
                )
        self.thread.join(30)


def decide_args(verb: str, run: StubRun, who: str, *extra: str) -> list[str]:
    """`driftloop approve|reject` for a stub run, on its evidence, as `who`, with its config."""
    return [
        verb,
        run.run_id,
        "--evidence",
        run.hash,
        "--as",
        who,
        *extra,
        "--config",
        str(run.project.path),
    ]


def project_copy(root: Path, edit: dict[str, dict[str, Any]] | None = None) -> Project:
    """The repo's config in a fresh root (state, audit log and all stay under `root`)."""
    import yaml

    source = Path(__file__).resolve().parents[2] / "config" / "driftloop.yaml"
    raw = yaml.safe_load(source.read_text())
    raw["approval"]["cli_as"] = True  # the tests' CLI decides as the people they name
    raw["approval"]["slack_team_id"] = "T0TEAM"  # the local Slack's workspace
    private_ports(raw)  # nothing listens there: never a default port
    for section, values in (edit or {}).items():
        raw.setdefault(section, {}).update(values)
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("# marks the project root for tests\n")
    path = root / "config" / "driftloop.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_project(path)


def record_approval(
    project: Project, candidate: str, approver: str = "alice", channel: str = "cli"
) -> tuple[str, str]:
    """A retrain run that holds a sealed approval of `candidate`, as the approval path records
    one, without running a retrain: (run id, evidence hash) for the promote flow."""
    from datetime import UTC, datetime, timedelta

    from tasks.approval.identity import seal_decision
    from tasks.approval.records import ApprovalRequest, Decision
    from tasks.approval.store import DECISION_KEY, REQUEST_KEY, write_input
    from tasks.evidence import evidence_hash

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(approval_stub, name=f"approved-{candidate}")
    evidence = sample_evidence(candidate, model=project.config.project.name)
    hash_ = evidence_hash(evidence)
    now = datetime.now(UTC)
    request = ApprovalRequest(
        run_id=str(run.id),
        evidence=evidence,
        evidence_hash=hash_,
        requested_at=now,
        expires_at=now + timedelta(hours=1),
    )
    decision = Decision(
        outcome="approve",
        approver=approver,
        channel=channel,
        decided_at=now,
        evidence_hash=hash_,
        run_id=str(run.id),
        candidate=candidate,
    )
    write_input(run.id, REQUEST_KEY + hash_, request)
    write_input(run.id, DECISION_KEY + hash_, seal_decision(project, decision))
    return str(run.id), hash_
