"""The Slack interactivity transports: signature checks, acknowledgement, dedupe, identity
(user id and team id), refusals and Socket Mode envelopes. The decision itself is a small
hand-written fake here; the real one (a paused Prefect run) is exercised in
tests/integration/test_approval_flow.py and tests/security/test_slack_endpoint.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from datetime import UTC, datetime

import httpx
import pytest
from slack_sdk.signature import Clock, SignatureVerifier

from driftloop.slack_app import Interactions, create_app, run_socket_mode, verify
from tasks.approval.audit import read_audit
from tasks.approval.records import Decision, SubmitResult
from tests.fakes.approval_stub import project_copy
from tests.fakes.slack_interactive import (
    APP_TOKEN,
    SIGNING_SECRET,
    SocketModeServer,
    click,
    form_body,
    sign,
)

pytestmark = pytest.mark.timeout(120)

# Slack's published example (https://api.slack.com/authentication/verifying-requests-from-slack)
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TIMESTAMP = 1531420618
DOC_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id="
    "G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-"
    "collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F3977008"
    "85554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c44"
    "7fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
RUN = "6bf6cbe7-058a-4214-b1c9-78dcc479f43e"
VALUE = f"{RUN}:0123456789abcdef"
TEAM = "T0TEAM"  # the fake's clicks come from this workspace unless told otherwise


@pytest.fixture
def project(tmp_path):
    """The shared project fixture, with Slack decisions on for the fake's workspace."""
    return project_copy(tmp_path, {"approval": {"slack_team_id": TEAM}})


class FrozenClock(Clock):
    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


class FakeSubmit:
    """Stands in for `asubmit_decision`: records calls, answers as told, optionally slowly."""

    def __init__(self, status: str = "recorded", delay: float = 0.0) -> None:
        self.calls: list[tuple] = []
        self.status = status
        self.delay = delay

    async def __call__(
        self, project, run_id, decision, approver, channel, comment="", evidence_hash=None, **kw
    ):
        hash_ = evidence_hash
        self.calls.append((run_id, decision, approver, channel, hash_, kw))
        await asyncio.sleep(self.delay)
        if self.status == "recorded":
            done = Decision(
                outcome=decision,
                approver=approver,
                channel=channel,
                decided_at=datetime.now(UTC),
                evidence_hash=hash_,
            )
            return SubmitResult(status="recorded", message=done.describe(), run_id=run_id)
        return SubmitResult(
            status="refused",
            message=f"{approver} is not on the approver allow-list (alice)",
            run_id=run_id,
        )


def raw(headers: dict) -> dict:
    """Header values as UTF-8 bytes, so non-ASCII forgeries reach the app as sent."""
    return {k: v.encode() if isinstance(v, str) else v for k, v in headers.items()}


def post_all(app, requests: list[tuple[bytes, dict]], after: float = 0.0):
    """Send requests to the ASGI app concurrently; returns the responses, then lets tasks run."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slack.test") as client:
            answers = await asyncio.gather(
                *(client.post("/slack/actions", content=b, headers=raw(h)) for b, h in requests)
            )
        await asyncio.sleep(after)
        await app.state.interactions.drain(10)
        return answers

    return asyncio.run(go())


def test_slack_known_answer_vector():
    verifier = SignatureVerifier(DOC_SECRET, clock=FrozenClock(DOC_TIMESTAMP))
    headers = {"x-slack-request-timestamp": str(DOC_TIMESTAMP), "x-slack-signature": DOC_SIGNATURE}
    assert verify(verifier, DOC_BODY.encode(), headers)
    mac = hmac.new(DOC_SECRET.encode(), f"v0:{DOC_TIMESTAMP}:{DOC_BODY}".encode(), hashlib.sha256)
    assert "v0=" + mac.hexdigest() == DOC_SIGNATURE  # our own signing helper agrees with Slack
    assert sign(DOC_BODY.encode(), DOC_SECRET, DOC_TIMESTAMP)["X-Slack-Signature"] == DOC_SIGNATURE


def test_known_answer_passes_the_endpoint_and_a_slash_command_body_is_not_an_interaction(
    project,
):
    app = create_app(
        project,
        Interactions(project, submit=FakeSubmit()),
        signing_secret=DOC_SECRET,
        clock=FrozenClock(DOC_TIMESTAMP),
    )
    headers = {
        "X-Slack-Request-Timestamp": str(DOC_TIMESTAMP),
        "X-Slack-Signature": DOC_SIGNATURE,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    (answer,) = post_all(app, [(DOC_BODY.encode(), headers)])
    assert answer.status_code == 400  # verified, then refused as "not an interaction payload"


def forgeries(body: bytes, now: int, rng: random.Random) -> list[tuple[str, bytes, dict]]:
    """A corpus of requests Slack did not send (or sent too long ago)."""
    good = sign(body, timestamp=now)
    ts, sig = good["X-Slack-Request-Timestamp"], good["X-Slack-Signature"]
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}

    def h(t, s):
        out = dict(ctype)
        if t is not None:
            out["X-Slack-Request-Timestamp"] = t
        if s is not None:
            out["X-Slack-Signature"] = s
        return out

    cases = []
    for _ in range(450):
        cases.append(("random signature", body, h(ts, f"v0={rng.randbytes(32).hex()}")))
    for _ in range(450):
        flipped = bytearray(body)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        cases.append(("1-bit body flip", bytes(flipped), h(ts, sig)))
    for _ in range(100):
        other = sign(body, secret=rng.randbytes(16).hex(), timestamp=now)
        cases.append(("wrong secret", body, h(ts, other["X-Slack-Signature"])))
    reencoded = form_body(json.loads(json.dumps(click(VALUE), indent=1)))
    cases += [
        ("v1 prefix", body, h(ts, "v1=" + sig[3:])),
        ("upper-case hex", body, h(ts, "v0=" + sig[3:].upper())),
        ("no headers", body, h(None, None)),
        ("no timestamp", body, h(None, sig)),
        ("no signature", body, h(ts, None)),
        ("empty headers", body, h("", "")),
        ("non-numeric timestamp", body, h("yesterday", sig)),
        ("float timestamp", body, h(f"{now}.5", sig)),
        ("negative timestamp", body, h(f"-{now}", sig)),
        ("spaced timestamp", body, h(f" {now}", sig)),
        ("arabic-indic digits", body, h("١٥٣١٤٢٠٦١٨", sig)),
        ("huge timestamp", body, h("9" * 40, sig)),
        ("non-ascii signature", body, h(ts, "v0=" + "é" * 64)),
        ("truncated signature", body, h(ts, sig[:-1])),
        ("re-serialised body", reencoded, h(ts, sig)),
        ("invalid utf-8 body", b"\xff\xfe" + body, h(ts, sig)),
        ("empty body", b"", h(ts, sig)),
    ]
    for skew in (301, -301, 600, -600, 86400):
        stale = sign(body, timestamp=now - skew)
        cases.append(
            (
                f"timestamp {skew:+d} s",
                body,
                h(stale["X-Slack-Request-Timestamp"], stale["X-Slack-Signature"]),
            )
        )
    return cases


def test_forged_tampered_stale_and_malformed_requests_get_401_never_500(project):
    now = int(time.time())
    submit = FakeSubmit()
    app = create_app(
        project,
        Interactions(project, submit=submit),
        signing_secret=SIGNING_SECRET,
        clock=FrozenClock(now),  # +-301 s stays +-301 s however long the corpus takes
    )
    body = form_body(click(VALUE))
    cases = forgeries(body, now, random.Random(7))
    assert len(cases) >= 1000
    answers = post_all(app, [(b, h) for _, b, h in cases])
    wrong = [(name, a.status_code) for (name, _, _), a in zip(cases, answers, strict=True)]
    assert [w for w in wrong if w[1] != 401] == []
    assert submit.calls == []


def test_the_five_minute_window_is_exact(project):
    now = int(time.time())
    body = form_body({"type": "view_closed"})  # verified but not one of our buttons
    app = create_app(
        project,
        Interactions(project, submit=FakeSubmit()),
        signing_secret=SIGNING_SECRET,
        clock=FrozenClock(now),
    )
    skews = [-301, -300, 300, 301]
    answers = post_all(app, [(body, sign(body, timestamp=now + s)) for s in skews])
    assert [a.status_code for a in answers] == [401, 200, 200, 401]


def test_signed_but_malformed_payloads_get_400(project):
    app = create_app(
        project, Interactions(project, submit=FakeSubmit()), signing_secret=SIGNING_SECRET
    )
    odd_shape = {
        "type": "block_actions",
        "actions": [{"action_id": "driftloop_approve"}],
        "container": "not-an-object",
    }
    bodies = [
        b"payload=not-json",
        b"payload=%5B1%2C2%5D",
        b"text=hello",
        b"payload=",
        form_body(odd_shape),
    ]
    answers = post_all(app, [(b, sign(b)) for b in bodies])
    assert [a.status_code for a in answers] == [400] * len(bodies)


def test_acknowledges_at_once_and_decides_after(project):
    submit = FakeSubmit(delay=3)  # a slow resume must not delay the acknowledgement
    app = create_app(project, Interactions(project, submit=submit), signing_secret=SIGNING_SECRET)
    body = form_body(click(VALUE))

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slack.test") as client:
            began = time.monotonic()
            answer = await client.post("/slack/actions", content=body, headers=sign(body))
            acked = time.monotonic() - began
        assert submit.calls == [] or len(submit.calls) == 1
        await app.state.interactions.drain(10)
        return answer, acked

    answer, acked = asyncio.run(go())
    assert answer.status_code == 200 and acked < 1.0
    assert len(submit.calls) == 1
    run_id, decision, approver, channel, hash_, extra = submit.calls[0]
    assert (run_id, decision, approver, channel) == (RUN, "approve", "U0ALICE", "slack")
    assert hash_ == "0123456789abcdef" and extra == {}  # the user id alone: no aliases


def test_the_same_click_ten_times_concurrently_is_handled_once(project):
    submit = FakeSubmit(delay=0.2)
    app = create_app(project, Interactions(project, submit=submit), signing_secret=SIGNING_SECRET)
    body = form_body(click(VALUE, action_ts="1700000000.123456"))
    headers = sign(body)
    answers = post_all(app, [(body, headers)] * 10)
    assert [a.status_code for a in answers] == [200] * 10
    assert len(submit.calls) == 1
    other = form_body(click(VALUE, action="reject", action_ts="1700000000.133456"))
    post_all(app, [(other, sign(other))])
    assert [c[1] for c in submit.calls] == ["approve", "reject"]  # a different click counts


def test_a_refused_click_is_told_privately_then_by_chat_post_ephemeral(project, slack):
    app = create_app(
        project,
        Interactions(project, submit=FakeSubmit(status="refused")),
        signing_secret=SIGNING_SECRET,
    )
    first = form_body(click(VALUE, user=("U0MAL", "mallory"), response_url=slack.response_url()))
    post_all(app, [(first, sign(first))])
    (told,) = slack.responses
    assert told["response_type"] == "ephemeral" and told["replace_original"] is False
    assert "not on the approver allow-list" in told["text"]

    slack.fail_response_url = True  # a response_url past its 30 minutes / 5 uses
    second = form_body(click(VALUE, user=("U0MAL", "mallory"), response_url=slack.response_url()))
    post_all(app, [(second, sign(second))])
    (private,) = slack.posted("chat.postEphemeral")
    assert private["user"] == "U0MAL" and "allow-list" in private["text"]
    assert slack.card_updates() == []  # a refusal never touches the card


def test_socket_mode_acknowledges_each_envelope_and_handles_the_click(project, slack, monkeypatch):
    server = SocketModeServer().start()
    slack.socket_url = server.url
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    submit = FakeSubmit()

    async def go():
        stop, ready = asyncio.Event(), asyncio.Event()
        handler = Interactions(project, submit=submit)
        serving = asyncio.create_task(run_socket_mode(project, stop, handler, ready))
        await asyncio.wait_for(ready.wait(), 10)
        payload = click(VALUE, action_ts="1700000000.5")
        first = await asyncio.to_thread(server.send_interactive, payload)
        again = await asyncio.to_thread(server.send_interactive, payload)  # a redelivery
        acks = [await asyncio.to_thread(server.wait_ack, e, 5) for e in (first, again)]
        await handler.drain(10)
        stop.set()
        await asyncio.wait_for(serving, 10)
        return first, again, acks

    try:
        first, again, acks = asyncio.run(go())
    finally:
        server.stop()
    assert [a and a["envelope_id"] for a in acks] == [first, again]  # each envelope acked
    assert len(submit.calls) == 1  # the redelivered envelope is not a second decision
    assert [c.method for c in slack.calls][:1] == ["apps.connections.open"]


def test_the_command_refuses_to_start_without_the_secret_its_transport_needs(project, monkeypatch):
    import os

    import typer
    from typer.testing import CliRunner

    from driftloop.slack_app import slack
    from tasks.stack.secrets import prefect_env

    for key in [*prefect_env(project), "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"]:
        monkeypatch.setenv(key, os.environ.get(key, "-"))  # restored after the test
        if key.startswith("SLACK"):
            monkeypatch.delenv(key)
    app = typer.Typer()
    app.command("slack")(slack)
    app.callback()(lambda: None)
    runner = CliRunner()
    http = runner.invoke(app, ["slack", "--config", str(project.path)])
    assert http.exit_code == 2 and "SLACK_SIGNING_SECRET" in http.output
    socket = runner.invoke(app, ["slack", "--socket-mode", "--config", str(project.path)])
    assert socket.exit_code == 2 and "SLACK_APP_TOKEN" in socket.output


def test_the_approver_is_the_signed_user_id_never_a_handle_or_display_name(project):
    submit = FakeSubmit()
    app = create_app(project, Interactions(project, submit=submit), signing_secret=SIGNING_SECRET)
    handle = form_body(click(VALUE, user=("U0MAL", "alice"), action_ts="1700000000.1"))
    no_team_on_user = click(VALUE, action_ts="1700000000.2")
    del no_team_on_user["user"]["team_id"]  # then the payload's team.id is the workspace
    bodies = [handle, form_body(no_team_on_user)]
    answers = post_all(app, [(b, sign(b)) for b in bodies])
    assert [a.status_code for a in answers] == [200, 200]
    assert sorted(c[2] for c in submit.calls) == ["U0ALICE", "U0MAL"]  # never "alice"
    assert {c[3] for c in submit.calls} == {"slack"}


def test_a_click_from_another_workspace_is_refused_audited_and_told(project, slack):
    submit = FakeSubmit()
    app = create_app(project, Interactions(project, submit=submit), signing_secret=SIGNING_SECRET)
    other = click(VALUE, team="T0EVIL", response_url=slack.response_url())  # alice's id and handle
    mixed = click(VALUE, action_ts="1700000000.3", response_url=slack.response_url())
    mixed["user"]["team_id"] = "T0EVIL"  # the user's own team wins over the payload's team
    answers = post_all(app, [(form_body(p), sign(form_body(p))) for p in (other, mixed)])
    assert [a.status_code for a in answers] == [200, 200]  # acknowledged, then refused
    assert submit.calls == []
    expected = ":no_entry: Not recorded: U0ALICE is a user of another Slack workspace (T0EVIL)"
    assert [r["text"] for r in slack.responses] == [expected, expected]
    refusals = read_audit(project, RUN)
    assert [(e.event, e.decision, e.approver, e.channel) for e in refusals] == [
        ("refusal", "approve", "U0ALICE", "slack")
    ] * 2
    assert {e.evidence_hash for e in refusals} == {"0123456789abcdef"}
    assert all("another Slack workspace" in e.reason for e in refusals)
    assert slack.card_updates() == []


def test_without_approval_slack_team_id_no_slack_click_decides(tmp_path, slack):
    unset = project_copy(tmp_path, {"approval": {"slack_team_id": ""}})  # the repo's default
    assert unset.config.approval.slack_team_id == ""
    submit = FakeSubmit()
    app = create_app(unset, Interactions(unset, submit=submit), signing_secret=SIGNING_SECRET)
    body = form_body(click(VALUE, response_url=slack.response_url()))
    (answer,) = post_all(app, [(body, sign(body))])
    assert answer.status_code == 200 and submit.calls == []
    (told,) = slack.responses
    assert told["text"].startswith(":no_entry: Not recorded: Slack decisions are off: set ")
    assert "approval.slack_team_id" in told["text"]
    (refused,) = read_audit(unset, RUN)
    assert (refused.event, refused.approver) == ("refusal", "U0ALICE")
    assert "approval.slack_team_id" in refused.reason


def nested(depth: int):
    """A JSON value `depth` arrays deep."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_malformed_identities_shapes_and_deep_nesting_get_400_and_64_levels_pass(project):
    submit = FakeSubmit()
    app = create_app(project, Interactions(project, submit=submit), signing_secret=SIGNING_SECRET)

    def changed(change, n):
        payload = click(VALUE, action_ts=f"1700000001.{n}")
        change(payload)
        return form_body(payload)

    changes = [
        lambda p: p.update(user="alice"),
        lambda p: p["user"].update(id="alice"),  # a handle where the id belongs
        lambda p: p["user"].update(id=42),
        lambda p: p["user"].update(id="U0ALICE\n"),
        lambda p: p["user"].update(team_id=["T0TEAM"]),
        lambda p: (p["user"].pop("team_id"), p.update(team="T0TEAM")),
        lambda p: p["actions"][0].update(value=7),
        lambda p: p["actions"][0].update(value="x" * 2001),
        lambda p: p.update(container=["message"]),
        lambda p: p.update(response_url=5),
        lambda p: p.update(state=nested(64)),  # 65 levels with the payload itself
    ]
    bad = [changed(c, i) for i, c in enumerate(changes)]
    bad += [
        b"payload=" + b"%5B" * 10_000 + b"%5D" * 10_000,  # past the parser's recursion limit
        b"payload=" + b"%7B%22a%22%3A" * 65 + b"1" + b"%7D" * 65,  # {"a":{"a":...}} 65 deep
        b"payload=%7B%7D&" * 20,  # more form fields than Slack ever sends
    ]
    fine = changed(lambda p: p.update(state=nested(63)), 99)  # 64 levels: a payload
    string = changed(lambda p: p.update(state="[" * 1000), 98)  # brackets in a string
    answers = post_all(app, [(b, sign(b)) for b in [*bad, fine, string]])
    assert [a.status_code for a in answers] == [400] * len(bad) + [200, 200]
    assert len(submit.calls) == 2


def test_body_size_and_content_length_bounds(project):
    submit = FakeSubmit()
    app = create_app(project, Interactions(project, submit=submit), signing_secret=SIGNING_SECRET)
    payload = click(VALUE, action_ts="1700000002.1")
    payload["message"]["text"] = ""
    payload["message"]["text"] = "x" * (64 * 1024 - len(form_body(payload)))
    at_limit = form_body(payload)
    assert len(at_limit) == 64 * 1024
    payload["message"]["text"] += "x"
    over = form_body(payload)
    requests = [(at_limit, sign(at_limit)), (over, sign(over))]
    for length in ("9" * 5000, "²", "-1", "1e3", " 12", "65537"):
        requests.append((b"x", {**sign(b"x"), "Content-Length": length}))
    answers = post_all(app, requests)
    assert [a.status_code for a in answers] == [200] + [413] * 7
    assert len(submit.calls) == 1  # the one at the limit


def asgi_post(app, chunks, hang: bool = False):
    """POST /slack/actions straight through ASGI: the body `chunks`, then a disconnect (or no
    more messages at all when `hang`). Returns the status sent, headers and seconds taken."""
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/slack/actions",
        "raw_path": b"/slack/actions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-length", b"1000"), (b"host", b"slack.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3100),
    }
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        if hang:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def go():
        began = time.monotonic()
        await app(scope, receive, send)
        return time.monotonic() - began

    took = asyncio.run(go())
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start.get("headers", [])), took


def test_a_client_that_disconnects_mid_body_is_one_log_line(project, caplog):
    submit = FakeSubmit()
    app = create_app(project, Interactions(project, submit=submit), signing_secret=SIGNING_SECRET)
    with caplog.at_level("DEBUG"):
        status, _, _ = asgi_post(app, [b"payload=%7B", b"%22type"])
    assert status == 400  # sent to nobody
    (line,) = [r for r in caplog.records if r.name == "driftloop.slack"]
    assert line.getMessage() == "127.0.0.1:50000: disconnected before its body was read"
    assert [r for r in caplog.records if r.exc_info] == []  # no traceback anywhere
    assert submit.calls == []


def test_a_body_that_never_ends_gets_408_at_the_body_deadline(project, caplog):
    app = create_app(
        project,
        Interactions(project, submit=FakeSubmit()),
        signing_secret=SIGNING_SECRET,
        body_timeout=0.5,
    )
    with caplog.at_level("WARNING"):
        status, headers, took = asgi_post(app, [b"payload="], hang=True)
    assert status == 408 and headers[b"connection"] == b"close"
    assert 0.5 <= took < 2.0
    (line,) = [r for r in caplog.records if r.name == "driftloop.slack"]
    assert line.getMessage() == "127.0.0.1:50000: body not read within 0.5 s; closed"
    assert [r for r in caplog.records if r.exc_info] == []
