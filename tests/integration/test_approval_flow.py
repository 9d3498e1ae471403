"""One decision from Slack, the CLI or Socket Mode, end to end: a real Prefect server holds the
paused run, the interactivity app runs under uvicorn, and Slack is a local fake that signs its
requests exactly as Slack does."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from uuid import UUID

import httpx
import pytest
import typer
import uvicorn
from prefect import get_client
from typer.testing import CliRunner

from driftloop.approve_cmd import approve, pending, reject
from driftloop.slack_app import Interactions, create_app, run_socket_mode, uvicorn_config
from tasks.approval.audit import read_audit
from tasks.approval.identity import NoRecordedApproval, verified_approval
from tasks.approval.store import REQUEST_KEY, recorded_decision, write_input
from tasks.approval.submit import submit_decision
from tests.fakes.approval_stub import StubRun, decide_args, project_copy
from tests.fakes.slack_interactive import (
    APP_TOKEN,
    SocketModeServer,
    click,
    form_body,
    sign,
)
from tests.support import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
CARD_TS = "1700000001.000100"  # the fake's first chat.postMessage: the approval card

cli = typer.Typer()
cli.command("approve")(approve)
cli.command("reject")(reject)
cli.command("pending")(pending)
runner = CliRunner()


@pytest.fixture
def app_url(project, slack, prefect_server):
    """The interactivity app under uvicorn on a free port (HTTP transport)."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(project), "127.0.0.1", port))
    context = contextvars.copy_context()  # the test server's Prefect settings
    thread = threading.Thread(target=context.run, args=(server.run,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/slack/actions"
    server.should_exit = True
    thread.join(20)


@pytest.fixture
def stub_with(prefect_server, slack, tmp_path, request):
    """Start stub flows in a project whose `approval` section has these edits."""
    runs: list[StubRun] = []

    def start(approval: dict, **kwargs) -> StubRun:
        project = project_copy(tmp_path / f"project-{len(runs)}", {"approval": approval})
        run = StubRun(project, candidate=f"bikeshare:{request.node.name}-{len(runs)}", **kwargs)
        runs.append(run)
        return run.start()

    yield start
    for run in runs:
        run.close()


def post_clicks(url: str, bodies: list[bytes], gap: float = 0.0) -> list[tuple[int, float]]:
    """POST signed bodies concurrently (`gap` s apart); (status, seconds to acknowledge) each."""

    async def one(client, body, delay):
        await asyncio.sleep(delay)
        began = time.monotonic()
        answer = await client.post(url, content=body, headers=sign(body))
        return answer.status_code, time.monotonic() - began

    async def go():
        async with httpx.AsyncClient(timeout=10) as client:
            return await asyncio.gather(*(one(client, b, i * gap) for i, b in enumerate(bodies)))

    return asyncio.run(go())


def wait_for(predicate, timeout: float = 20) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def decisions(project, run_id):
    return [e for e in read_audit(project, run_id) if e.event == "decision"]


def refusals(project, run_id):
    return [e for e in read_audit(project, run_id) if e.event == "refusal"]


def test_the_same_signed_click_ten_times_concurrently_is_one_decision(
    stub, slack, project, app_url
):
    run = stub(approvers=("slack:U0ALICE",))
    body = form_body(click(run.button_value, message_ts=CARD_TS, response_url=slack.response_url()))
    answers = post_clicks(app_url, [body] * 10)
    assert [status for status, _ in answers] == [200] * 10
    assert max(seconds for _, seconds in answers) < 2.5  # inside Slack's 3 s
    outcome = run.result()
    assert (outcome["outcome"], outcome["approver"], outcome["channel"]) == (
        "approve",
        "U0ALICE",
        "slack",
    )
    assert len(decisions(project, run.run_id)) == 1
    assert refusals(project, run.run_id) == []  # repeats were dropped, not re-decided
    assert wait_for(lambda: slack.card_updates())
    update = slack.card_updates()[-1]
    assert update["ts"] == CARD_TS and "Approved by U0ALICE via slack" in json.dumps(update)
    assert not any(b["type"] == "actions" for b in update["blocks"])


def test_approve_and_reject_10ms_apart_one_wins_and_the_other_is_told(
    stub, slack, project, app_url
):
    run = stub(approvers=("slack:U0ALICE", "slack:U0BOB"))
    approve_click = click(run.button_value, response_url=slack.response_url())
    reject_click = click(
        run.button_value, "reject", user=("U0BOB", "bob"), response_url=slack.response_url()
    )
    answers = post_clicks(app_url, [form_body(approve_click), form_body(reject_click)], gap=0.01)
    assert [status for status, _ in answers] == [200, 200]
    outcome = run.result()
    (decided,) = decisions(project, run.run_id)
    assert decided.decision == outcome["outcome"]
    assert wait_for(lambda: slack.responses), "the loser was not told"
    (told,) = slack.responses
    winner = "approved by U0ALICE" if outcome["outcome"] == "approve" else "rejected by U0BOB"
    assert f"already {winner} via slack at " in told["text"]
    assert len(refusals(project, run.run_id)) == 1


def test_a_clicker_not_on_the_allow_list_changes_nothing_and_is_told(stub, slack, project, app_url):
    run = stub(approvers=("slack:U0ALICE",))
    body = form_body(
        click(run.button_value, user=("U0MAL", "mallory"), response_url=slack.response_url())
    )
    assert post_clicks(app_url, [body])[0][0] == 200
    assert wait_for(lambda: slack.responses), "the refused clicker was not told"
    assert "slack:U0MAL is not on the approver allow-list" in slack.responses[0]["text"]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.run_id).state.is_paused()
    (refused,) = refusals(project, run.run_id)
    assert (refused.approver, refused.channel) == ("U0MAL", "slack")
    assert decisions(project, run.run_id) == [] and slack.card_updates() == []

    alice = form_body(click(run.button_value, response_url=slack.response_url()))
    post_clicks(app_url, [alice])
    assert run.result()["approver"] == "U0ALICE"


def test_slack_approve_then_cli_approve_tells_the_cli_who_decided(stub, slack, project, app_url):
    run = stub(approvers=("slack:U0ALICE", "cli:alice"))
    listed = runner.invoke(cli, ["pending", "--json", "--config", str(project.path)])
    assert listed.exit_code == 0, listed.output
    mine = [r for r in json.loads(listed.stdout) if r["run_id"] == run.run_id]
    assert mine and mine[0]["url"].endswith(f"/runs/flow-run/{run.run_id}")

    post_clicks(app_url, [form_body(click(run.button_value))])
    assert run.result()["channel"] == "slack"
    late = runner.invoke(
        cli,
        decide_args("approve", run, "alice"),
    )
    assert late.exit_code == 1
    assert "already approved by U0ALICE via slack at " in late.output


def test_cli_decides_a_request_and_reject_needs_a_reason(stub, project):
    run = stub()
    no_reason = runner.invoke(
        cli,
        decide_args("reject", run, "alice", "-m", " "),
    )
    assert no_reason.exit_code == 2
    stranger = runner.invoke(
        cli,
        decide_args("approve", run, "mallory"),
    )
    assert stranger.exit_code == 1 and "allow-list" in stranger.output
    args = [
        "reject",
        run.run_id,
        "--evidence",
        run.hash,
        "-m",
        "worse on weekends",
        "--as",
        "alice",
    ]
    done = runner.invoke(cli, [*args, "--config", str(project.path)])
    assert done.exit_code == 0, done.output
    assert "rejected by alice via cli" in done.output
    assert run.result()["comment"] == "worse on weekends"


def test_socket_mode_click_decides_the_run(stub, slack, project, monkeypatch):
    server = SocketModeServer().start()
    slack.socket_url = server.url
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    run = stub(approvers=("slack:U0ALICE",))

    async def go():
        stop, ready = asyncio.Event(), asyncio.Event()
        handler = Interactions(project)
        serving = asyncio.create_task(run_socket_mode(project, stop, handler, ready))
        await asyncio.wait_for(ready.wait(), 10)
        envelope = await asyncio.to_thread(
            server.send_interactive, click(run.button_value, message_ts=CARD_TS)
        )
        ack = await asyncio.to_thread(server.wait_ack, envelope, 3)
        outcome = await asyncio.to_thread(run.result, 60)
        await handler.drain(20)
        stop.set()
        await asyncio.wait_for(serving, 10)
        return envelope, ack, outcome

    try:
        envelope, ack, outcome = asyncio.run(go())
    finally:
        server.stop()
    assert ack == {"envelope_id": envelope}
    assert (outcome["outcome"], outcome["channel"]) == ("approve", "slack")
    assert "Approved by U0ALICE via slack" in json.dumps(slack.card_updates()[-1])


def test_remind_reposts_the_card_in_its_thread_until_the_final_deadline_then_rejects(
    stub_with, slack
):
    run = stub_with(
        {"on_timeout": "remind", "remind_every_seconds": 2, "grace_seconds": 5}, timeout=2
    )
    outcome = run.result(timeout=40)
    assert (outcome["outcome"], outcome["channel"]) == ("reject", None)  # by timeout
    card, *reminders = slack.posted()
    assert card["blocks"][-1]["type"] == "actions" and "thread_ts" not in card
    assert 2 <= len(reminders) <= 3  # due 2, 4 and 6 s after the request; a late one is skipped
    for i, reminder in enumerate(reminders, start=1):
        assert reminder["thread_ts"] == CARD_TS
        assert f"Reminder {i}: still waiting for a decision" in json.dumps(reminder)
        assert reminder["blocks"][-1]["type"] == "actions"  # decidable from the thread
    logged = read_audit(run.project, run.run_id)
    reminded = [e for e in logged if e.event == "reminder"]
    assert [(e.decision, e.channel) for e in reminded] == [("reminded", "timeout")] * len(reminders)
    offsets = [round((e.due_at - run.request.requested_at).total_seconds()) for e in reminded]
    assert offsets[0] == 2 and set(offsets) <= {2, 4, 6}
    assert [(e.event, e.decision, e.channel) for e in logged if e.event == "decision"] == [
        ("decision", "reject", "timeout")
    ]
    update = slack.card_updates()[-1]
    assert "Rejected by timeout at" in json.dumps(update) and "Nothing will be promoted" in (
        json.dumps(update)
    )
    with pytest.raises(NoRecordedApproval, match="rejected by timeout"):
        verified_approval(run.project, run.run_id, run.candidate, run.hash)
    late = submit_decision(run.project, run.run_id, "approve", "alice", "cli", "", run.hash)
    assert late.status == "already_decided" and "rejected by timeout" in late.message


def test_escalate_lets_only_the_listed_identities_decide_and_only_after_the_deadline(
    stub_with, slack
):
    run = stub_with(
        {
            "on_timeout": "escalate",
            "grace_seconds": 60,
            "escalate_to": {"slack": ["U0CAROL"], "cli": ["carol"], "ui": []},
        },
        timeout=4,
        approvers=("cli:alice",),
    )
    project = run.project

    def submit(who: str, channel: str = "cli", decision: str = "approve"):
        return submit_decision(project, run.run_id, decision, who, channel, "", run.hash)

    def resume_as_ui(typed: str):  # unsealed: whatever it claims, it is ui:prefect-ui
        with get_client(sync_client=True) as client:
            client.resume_flow_run(
                run.run_id,
                run_input={"decision": "approve", "approver": typed, "evidence_hash": run.hash},
            )

    early = submit("carol")
    assert early.status == "refused" and "only once the request is escalated" in early.message
    assert submit("U0CAROL", "slack").status == "refused"
    assert wait_for(lambda: any(e.event == "escalation" for e in read_audit(project)), 30)

    # past the deadline: carol may decide; strangers and forged claims still may not
    (asked,) = [p for p in slack.posted() if p.get("thread_ts") == CARD_TS]
    assert "escalated to <@U0CAROL>, cli:carol" in asked["text"]
    assert "<@U0CAROL>" in json.dumps(slack.card_updates()[-1]["blocks"])
    stranger = submit("mallory")
    assert stranger.status == "refused" and "not on the approver allow-list" in stranger.message
    assert "not on the approver allow-list" in submit("carol", "slack").message  # per channel
    resume_as_ui("carol")
    assert wait_for(lambda: len([e for e in read_audit(project) if e.event == "refusal"]) == 5)
    with get_client(sync_client=True) as client:
        assert wait_for(lambda: client.read_flow_run(run.run_id).state.is_paused())
    # a request rewritten through the Prefect API widens nothing: the flow checks its own lists
    stored = recorded_decision(project, run.run_id)[0]
    forged = stored.model_copy(update={"approvers": [], "escalate_to": ["cli:mallory"]})
    write_input(UUID(run.run_id), f"{REQUEST_KEY}{run.hash}-rewritten", forged)
    assert recorded_decision(project, run.run_id)[0].escalate_to == ["cli:mallory"]
    widened = submit("mallory")
    assert widened.status == "refused" and "not on the approver allow-list" in widened.message
    assert [e.event for e in read_audit(project) if e.event != "refusal"] == ["escalation"]

    decided = submit("carol", decision="reject")
    assert decided.recorded, decided.message
    outcome = run.result()
    assert (outcome["outcome"], outcome["approver"], outcome["channel"]) == (
        "reject",
        "carol",
        "cli",
    )
    (escalated,) = [e for e in read_audit(project) if e.event == "escalation"]
    assert (escalated.decision, escalated.channel) == ("escalated", "timeout")
    assert round((escalated.due_at - run.request.requested_at).total_seconds()) == 4
