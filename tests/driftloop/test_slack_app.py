"""The Slack interactivity transports: signature checks, acknowledgement, dedupe, refusals and
Socket Mode envelopes. The decision itself is a small hand-written fake here; the real one (a
paused Prefect run) is exercised in tests/integration/test_approval_flow.py."""

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
from tasks.approval import Decision, SubmitResult
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

    async def __call__(self, project, run_id, decision, approver, channel, comment, hash_, **kw):
        self.calls.append((run_id, decision, approver, channel, hash_, kw.get("aliases")))
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
    run_id, decision, approver, channel, hash_, aliases = submit.calls[0]
    assert (run_id, decision, approver, channel) == (RUN, "approve", "alice", "slack")
    assert hash_ == "0123456789abcdef" and "U0ALICE" in aliases


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
    from tasks.stack import prefect_env

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
