"""The one decision record against a real Prefect server: CLI and UI channels, evidence binding,
the allow-list, races, expiry, pending requests, the audit log and its metric."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from datetime import UTC, datetime

import pytest
from prefect import get_client
from prefect.client.schemas.responses import SetStateStatus
from prefect.input.actions import read_flow_run_input

from tasks.approval.audit import append_audit, approval_counts, read_audit
from tasks.approval.pending import pending_requests
from tasks.approval.records import AuditEntry
from tasks.approval.submit import asubmit_decision, submit_decision
from tasks.evidence import Evidence, evidence_hash
from tests.fakes.approval_stub import project_copy, sample_evidence
from tests.support import free_port

pytestmark = pytest.mark.timeout(180)
CARD_TS = "1700000001.000100"  # the fake's first chat.postMessage: the approval card


def state_of(run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def wait_until(predicate, timeout: float = 20, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_evidence_hash_is_canonical_and_binds_every_field():
    evidence = sample_evidence("bikeshare:c1")
    same = Evidence.model_validate(json.loads(evidence.model_dump_json()))
    assert evidence_hash(evidence) == evidence_hash(same)
    assert len(evidence_hash(evidence)) == 16
    worse = evidence.model_copy(
        update={"gate": [evidence.gate[0].model_copy(update={"candidate": 70.0})]}
    )
    assert evidence_hash(worse) != evidence_hash(evidence)
    assert evidence_hash(evidence.model_copy(update={"data_rev": "ffff"})) != evidence_hash(
        evidence
    )


def test_resume_form_requires_an_explicit_decision_and_shows_the_evidence(stub):
    run = stub()
    keyset = state_of(run.run_id).state_details.run_input_keyset
    schema = read_flow_run_input(keyset["schema"], flow_run_id=run.run_id)
    assert {"decision", "evidence_hash"} <= set(schema["required"])
    assert "default" not in schema["properties"]["decision"]
    assert "default" not in schema["properties"]["evidence_hash"]  # copied from the evidence
    assert "channel" not in schema["properties"]  # the transport's to say, never the form's
    description = read_flow_run_input(keyset["description"], flow_run_id=run.run_id)
    for shown in (run.request.evidence.candidate, "rmse", "61.2", "48.1", "1a2b3c4", run.hash):
        assert shown in description

    with get_client(sync_client=True) as client:  # what the UI would post with no decision
        answer = client.resume_flow_run(
            run.run_id, run_input={"approver": "alice", "evidence_hash": run.hash}
        )
    assert answer.status == SetStateStatus.REJECT
    assert "decision" in answer.details.reason
    assert state_of(run.run_id).is_paused()


def test_cli_decision_is_recorded_with_the_run_the_audit_log_and_the_card(stub, slack, project):
    run = stub()
    (card,) = slack.posted()
    assert [e["action_id"] for e in card["blocks"][-1]["elements"]] == [
        "driftloop_approve",
        "driftloop_reject",
    ]
    assert card["blocks"][-1]["elements"][0]["value"] == run.button_value
    assert "confirm" in card["blocks"][-1]["elements"][1]

    result = submit_decision(
        project, run.run_id, "approve", "alice", "cli", "looks better", run.hash
    )
    assert result.recorded, result.message
    assert result.message.startswith("approved by alice via cli at ")
    outcome = run.result()
    assert (outcome["outcome"], outcome["approver"], outcome["channel"]) == (
        "approve",
        "alice",
        "cli",
    )
    assert outcome["evidence_hash"] == run.hash and outcome["comment"] == "looks better"
    assert state_of(run.run_id).is_completed()
    (logged,) = [e for e in read_audit(project, run.run_id) if e.event == "decision"]
    assert (logged.decision, logged.approver, logged.channel) == ("approve", "alice", "cli")
    update = slack.card_updates()[-1]
    assert update["ts"] == CARD_TS
    assert not any(b["type"] == "actions" for b in update["blocks"])
    assert "Approved by alice via cli" in json.dumps(update["blocks"])
    assert all(p.run_id != run.run_id for p in pending_requests(project))


def test_stale_evidence_and_strangers_are_refused_and_the_run_keeps_waiting(stub, project):
    run = stub()
    stale = submit_decision(project, run.run_id, "approve", "alice", "cli", evidence_hash="0" * 16)
    assert stale.status == "refused" and "stale evidence" in stale.message
    stranger = submit_decision(project, run.run_id, "approve", "mallory", "cli", "", run.hash)
    assert stranger.status == "refused" and "not on the approver allow-list" in stranger.message
    assert state_of(run.run_id).is_paused()
    refusals = [e for e in read_audit(project, run.run_id) if e.event == "refusal"]
    assert [(e.approver, e.channel) for e in refusals] == [("alice", "cli"), ("mallory", "cli")]
    assert not [e for e in read_audit(project, run.run_id) if e.event == "decision"]

    assert submit_decision(project, run.run_id, "reject", "alice", "cli", "no", run.hash).recorded
    assert run.result()["outcome"] == "reject"


def test_timeout_rejects_the_request_updates_the_card_and_later_decisions_are_told(
    stub, slack, project
):
    assert project.config.approval.on_timeout == "reject"  # the shipped default
    run = stub(timeout=4)
    outcome = run.result(timeout=30)
    assert (outcome["outcome"], outcome["approver"], outcome["channel"]) == ("reject", None, None)
    assert state_of(run.run_id).is_completed()  # a timeout is an answer, not a crash
    update = slack.card_updates()[-1]
    assert "rejected by timeout at " in update["text"]
    assert "Nothing will be promoted" in json.dumps(update)
    assert not any(b["type"] == "actions" for b in update["blocks"])
    assert len(slack.posted()) == 1  # the card only: no reminder, no escalation
    late = submit_decision(project, run.run_id, "approve", "alice", "cli", "", run.hash)
    assert late.status == "already_decided"
    assert late.message.startswith("already rejected by timeout at ")
    logged = [e for e in read_audit(project, run.run_id) if e.event != "refusal"]
    assert [(e.event, e.decision, e.channel) for e in logged] == [("decision", "reject", "timeout")]


def test_ui_resume_is_checked_by_the_flow_refused_in_the_thread_then_decided(stub, slack, project):
    run = stub(approvers=("cli:alice",))

    def resume(**run_input):
        with get_client(sync_client=True) as client:  # what the UI posts as run_input
            return client.resume_flow_run(run.run_id, run_input=run_input)

    # no evidence hash: the server's schema refuses it, the run stays paused
    assert resume(decision="approve", approver="alice").status == SetStateStatus.REJECT
    # the form has no channel to claim: the server's schema refuses one
    claimed = resume(decision="approve", approver="alice", evidence_hash=run.hash, channel="cli")
    assert claimed.status == SetStateStatus.REJECT
    # a typed name proves nothing: it is the UI's identity, which is not allowed here
    typed = resume(decision="approve", approver="alice", evidence_hash=run.hash)
    assert typed.status == SetStateStatus.ACCEPT
    assert wait_until(lambda: state_of(run.run_id).is_paused()), "the flow did not pause again"
    (refusal,) = [e for e in read_audit(project, run.run_id) if e.event == "refusal"]
    assert (refusal.approver, refusal.channel) == ("prefect-ui", "ui")
    assert "not on the approver allow-list" in refusal.reason
    replies = [m for m in slack.posted() if m.get("thread_ts") == CARD_TS]
    assert replies and "ui:prefect-ui" in replies[-1]["text"]
    # a seal made up without the key is refused as forged
    forged = json.dumps({"channel": "cli", "sig": "0" * 64})
    assert (
        resume(decision="approve", approver="alice", evidence_hash=run.hash, seal=forged).status
        == SetStateStatus.ACCEPT
    )
    assert wait_until(
        lambda: len([e for e in read_audit(project, run.run_id) if e.event == "refusal"]) == 2
    )
    assert "forged" in read_audit(project, run.run_id)[-1].reason
    assert wait_until(lambda: state_of(run.run_id).is_paused())

    done = submit_decision(project, run.run_id, "reject", "alice", "cli", "holidays", run.hash)
    assert done.recorded, done.message
    outcome = run.result()
    assert (outcome["outcome"], outcome["approver"], outcome["channel"]) == (
        "reject",
        "alice",
        "cli",
    )


def test_approve_and_reject_10ms_apart_one_wins_and_the_other_is_told(stub, project):
    run = stub(approvers=())  # empty allow-list: anyone may decide

    async def race():
        async def later(decision, who, delay):
            await asyncio.sleep(delay)
            return await asyncio.wait_for(
                asubmit_decision(project, run.run_id, decision, who, "cli", "race", run.hash), 30
            )

        return await asyncio.gather(later("approve", "ann", 0), later("reject", "ben", 0.01))

    results = asyncio.run(race())
    assert sorted(r.status for r in results) == ["already_decided", "recorded"]
    winner = next(r for r in results if r.recorded)
    loser = next(r for r in results if not r.recorded)
    assert loser.message == f"already {winner.decision.describe()}"
    assert run.result()["outcome"] == winner.decision.outcome
    assert len([e for e in read_audit(project, run.run_id) if e.event == "decision"]) == 1


def test_pending_lists_waiting_requests_with_evidence_age_and_link(stub, project):
    run = stub()
    (mine,) = [p for p in pending_requests(project) if p.run_id == run.run_id]
    assert mine.url == f"{project.config.endpoints.prefect}/runs/flow-run/{run.run_id}"
    assert mine.evidence.candidate == run.candidate and mine.evidence_hash == run.hash
    assert 0 <= mine.age_seconds < 60 and mine.approvers == ["alice"]
    assert submit_decision(project, run.run_id, "approve", "alice", "cli", "", run.hash).recorded
    run.result()
    assert all(p.run_id != run.run_id for p in pending_requests(project))


def _metric_lines(gateway: str) -> list[str]:
    with urllib.request.urlopen(f"{gateway}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return [line for line in text.splitlines() if line.startswith("driftloop_approvals_total{")]


def test_approvals_metric_is_recounted_from_the_audit_log_so_a_down_gateway_loses_nothing(
    tmp_path,
):
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:  # a broken setup, not a reason to skip
        pytest.fail("prometheus-pushgateway is not installed: run `make setup`")
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    project = project_copy(tmp_path, {"endpoints": {"pushgateway": gateway}})

    def entry(decision: str, channel: str, event: str = "decision") -> AuditEntry:
        return AuditEntry(
            at=datetime.now(UTC), event=event, decision=decision, channel=channel, run_id="r1"
        )

    append_audit(project, entry("approve", "slack"))  # gateway down: kept, not lost
    assert approval_counts(project) == {("approve", "slack"): 1}
    server = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: _ready(gateway), timeout=20)
        append_audit(project, entry("reject", "cli"))
        append_audit(project, entry("approve", "ui", event="refusal"))
        append_audit(project, entry("reminded", "timeout", event="reminder"))
        append_audit(project, entry("reminded", "timeout", event="reminder"))
        append_audit(project, entry("escalated", "timeout", event="escalation"))
        append_audit(project, entry("reject", "timeout"))
        lines = _metric_lines(gateway)
        model = project.config.project.name
        expected = {
            ("approve", "slack"): 1,
            ("reject", "cli"): 1,
            ("refused", "ui"): 1,
            ("reminded", "timeout"): 2,
            ("escalated", "timeout"): 1,
            ("reject", "timeout"): 1,
        }
        for (decision, channel), count in expected.items():
            matching = [
                line
                for line in lines
                if f'decision="{decision}"' in line
                and f'channel="{channel}"' in line
                and f'model="{model}"' in line
            ]
            assert matching and float(matching[0].rsplit(" ", 1)[1]) == count, lines
    finally:
        server.terminate()
        server.wait(10)


def _ready(gateway: str) -> bool:
    try:
        with urllib.request.urlopen(f"{gateway}/-/ready", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False
