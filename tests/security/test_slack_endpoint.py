"""The Slack endpoint against a hostile or careless caller.

- Identity: only the signed user id of the configured workspace (`approval.slack_team_id`)
  decides; a handle, a display name or another workspace never does.
- Slow clients: a real `driftloop slack` server cuts connections that trickle their headers or
  body within the configured timeouts, keeps at most MAX_CONNECTIONS open, and still answers
  Slack meanwhile.
- Generated hostile bodies (hypothesis): never a 5xx, each the status written down for its
  kind, and nothing decides the paused run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prefect import get_client

from driftloop import slack_app
from driftloop.slack_app import Interactions, create_app
from tasks.approval.audit import read_audit
from tests.fakes.approval_stub import project_copy
from tests.fakes.slack_interactive import SIGNING_SECRET, click, form_body, sign
from tests.support import BIN, free_port, tool_env

pytestmark = pytest.mark.timeout(300)

TEAM = "T0TEAM"
ALICE = ("U0ALICE", "alice")  # on the allow-list by user id
MALLORY = ("U0MAL", "alice")  # not on it, whatever her handle says
# the limits as documented in driftloop/slack_app.py
MAX_BODY = 64 * 1024
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
MAX_CONNECTIONS = 100


def test_the_documented_limits_are_the_ones_in_force():
    assert (slack_app.MAX_BODY, slack_app.MAX_DEPTH) == (MAX_BODY, 64)
    assert (slack_app.HEADER_TIMEOUT, slack_app.BODY_TIMEOUT) == (HEADER_TIMEOUT, BODY_TIMEOUT)
    assert slack_app.MAX_CONNECTIONS == MAX_CONNECTIONS


@pytest.fixture
def project(tmp_path):
    """The shared project fixture (the stub flows use it too), with Slack decisions on for the
    fake's workspace."""
    return project_copy(tmp_path, {"approval": {"slack_team_id": TEAM}})


def paused(run_id: str) -> bool:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state is not None and state.is_paused()


def decisions(project, run_id: str) -> list:
    return [e for e in read_audit(project, run_id) if e.event == "decision"]


def refusals(project, run_id: str) -> list:
    return [e for e in read_audit(project, run_id) if e.event == "refusal"]


def post_in_process(app, body: bytes, headers: dict) -> int:
    """One POST through ASGI; waits for the click's background work before returning."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slack.test") as client:
            answer = await client.post("/slack/actions", content=body, headers=headers)
        await app.state.interactions.drain(30)
        return answer.status_code

    return asyncio.run(go())


def wait_for(predicate, timeout: float = 30) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- identity, against a real run


def test_another_workspace_and_an_allowed_handle_are_refused_and_the_user_id_decides(
    stub, slack, project
):
    run = stub(approvers=("slack:U0ALICE",))
    app = create_app(project, Interactions(project), signing_secret=SIGNING_SECRET)
    elsewhere = form_body(
        click(run.button_value, user=ALICE, team="T0EVIL", response_url=slack.response_url())
    )
    handle = form_body(click(run.button_value, user=MALLORY, response_url=slack.response_url()))
    assert post_in_process(app, elsewhere, sign(elsewhere)) == 200
    assert post_in_process(app, handle, sign(handle)) == 200
    assert paused(run.run_id) and decisions(project, run.run_id) == []
    assert [(e.approver, e.channel) for e in refusals(project, run.run_id)] == [
        ("U0ALICE", "slack"),
        ("U0MAL", "slack"),
    ]
    told = [r["text"] for r in slack.responses]
    assert (
        told[0] == ":no_entry: Not recorded: U0ALICE is a user of another Slack workspace (T0EVIL)"
    )
    assert "slack:U0MAL is not on the approver allow-list" in told[1]

    alice = form_body(click(run.button_value, user=ALICE, response_url=slack.response_url()))
    assert post_in_process(app, alice, sign(alice)) == 200
    outcome = run.result()
    assert (outcome["outcome"], outcome["approver"], outcome["channel"]) == (
        "approve",
        "U0ALICE",
        "slack",
    )
    (decided,) = decisions(project, run.run_id)
    assert (decided.decision, decided.approver, decided.channel) == ("approve", "U0ALICE", "slack")


# ---------------------------------------------------------------- generated hostile bodies

SLACK_ID = re.compile(r"[A-Z0-9]{2,40}")
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
NOT_AN_ID = st.one_of(
    JSON.filter(lambda v: v is not None and not isinstance(v, str)),
    st.text(max_size=45).filter(lambda t: not SLACK_ID.fullmatch(t)),
)
TRUTHY_NOT_OBJECT = JSON.filter(lambda v: bool(v) and not isinstance(v, dict))
TRUTHY_NOT_STRING = JSON.filter(lambda v: bool(v) and not isinstance(v, str))


@dataclass
class Case:
    kind: str
    body: bytes
    signed: dict  # headers
    expected: frozenset[int]


@st.composite
def near_valid_click(draw, run_id: str, evidence: str, response_url: str) -> dict:
    """A click on the paused run's card with at least one defect that must keep it from
    deciding: another workspace, a user not on the allow-list (with an allowed handle), stale,
    missing or foreign evidence, another run."""
    defect = draw(
        st.sampled_from(
            ["other team", "not allowed", "stale hash", "no hash", "other run", "not a run"]
        )
    )
    user, team, value = ALICE, TEAM, f"{run_id}:{evidence}"
    if defect == "other team":
        team = draw(st.sampled_from(["T0EVIL", "E0ORG", "T0TEAMX"]))
    elif defect == "not allowed":
        user = (draw(st.sampled_from(["U0MAL", "W0ALICE", "U0ALICE0"])), "alice")
    elif defect == "stale hash":
        value = f"{run_id}:{draw(st.text('0123456789abcdef', min_size=1, max_size=64))}"
        if value.endswith(f":{evidence}"):
            value += "0"
    elif defect == "no hash":
        value = run_id
    elif defect == "other run":
        value = f"{draw(st.uuids())}:{evidence}"
    else:
        value = f"{draw(st.text(max_size=30))}:{evidence}"
    action = draw(st.sampled_from(["approve", "reject"]))
    stamp = f"{draw(st.integers(1_600_000_000, 1_900_000_000))}.{draw(st.integers(0, 999999))}"
    payload = click(value, action, user=user, action_ts=stamp, response_url=response_url, team=team)
    payload["trigger_id"] = stamp  # drawn, like everything else: no clock or uuid in the body
    return payload


def wrong_type(field: str):
    """(a strategy for the field's value, the statuses that value may get when signed)."""
    exact_400 = frozenset({400})
    return {
        "user": (JSON.filter(lambda v: not isinstance(v, dict)), exact_400),
        "user.id": (NOT_AN_ID, exact_400),
        "user.team_id": (NOT_AN_ID, exact_400),
        "team": (TRUTHY_NOT_OBJECT, exact_400),  # read when the user names no team
        "actions": (JSON, frozenset({200, 400})),  # not a list of our buttons: ignored or 400
        "actions.0": (JSON, frozenset({200})),  # not an object: no button of ours
        "actions.0.action_id": (JSON, frozenset({200, 400})),  # unhashable: 400
        "actions.0.value": (TRUTHY_NOT_STRING, exact_400),
        "container": (TRUTHY_NOT_OBJECT, exact_400),
        "channel": (TRUTHY_NOT_OBJECT, exact_400),
        "message": (TRUTHY_NOT_OBJECT, exact_400),
        "response_url": (TRUTHY_NOT_STRING, exact_400),
        "type": (JSON.filter(lambda v: v != "block_actions"), frozenset({200})),
    }[field]


def put(payload: dict, field: str, value) -> None:
    *path, last = field.split(".")
    target = payload
    for part in path:
        target = target[int(part)] if part.isdigit() else target[part]
    if field == "team":
        payload["user"].pop("team_id")
    target[int(last) if last.isdigit() else last] = value


def deep(depth: int, kind: str) -> str:
    """JSON text `depth` arrays (or objects) deep, written out: json.dumps would recurse."""
    opening, closing = ("[", "]") if kind == "list" else ('{"a": ', "}")
    return opening * depth + "1" + closing * depth


def _form(value) -> bytes:
    return urlencode({"payload": json.dumps(value)}).encode()


def _form_text(text: str) -> bytes:
    return urlencode({"payload": text}).encode()


@st.composite
def hostile_body(draw, run_id: str, evidence: str, response_url: str) -> tuple[str, bytes, set]:
    """(kind, body, statuses when it is correctly signed)."""
    kind = draw(
        st.sampled_from(
            [
                "bytes",
                "form",
                "payload text",
                "json",
                "deep",
                "deep in a click",
                "huge string",
                "wrong type",
                "near-valid click",
            ]
        )
    )
    clicked = near_valid_click(run_id, evidence, response_url)
    if kind == "bytes":
        body = draw(st.binary(max_size=2048))
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return kind, body, {401}  # Slack signs UTF-8; other bytes cannot be verified
        return kind, body, {400}
    if kind == "form":
        fields = draw(
            st.dictionaries(
                st.text(min_size=1, max_size=10).filter(lambda k: k != "payload"),
                st.text(max_size=50),
                max_size=5,
            )
        )
        return kind, urlencode(fields).encode(), {400}
    if kind == "payload text":
        text = draw(st.text(max_size=200))
        return kind, urlencode({"payload": text}).encode(), {200, 400}
    if kind == "json":
        value = draw(JSON)
        expected = {200} if isinstance(value, dict) else {400}  # an object: not our button
        return kind, form_body(value) if isinstance(value, dict) else _form(value), expected
    if kind == "deep":
        depth = draw(st.integers(65, 9000))
        shape = draw(st.sampled_from(["list", "dict"]))
        return kind, _form_text(deep(depth, shape)), {400}
    if kind == "deep in a click":
        payload = draw(clicked)
        depth = draw(st.integers(1, 3000))
        payload["state"] = "DEEP"
        text = json.dumps(payload).replace('"DEEP"', deep(depth, "list"))
        return kind, _form_text(text), {200} if depth + 1 <= 64 else {400}
    if kind == "huge string":
        payload = draw(clicked)
        char = draw(st.sampled_from(["x", "é", "%", "\u2028", '"', "\\", "[", "\x00"]))
        payload["message"]["text"] = char * draw(st.integers(0, 70_000))
        body = form_body(payload)
        return kind, body, {200}
    if kind == "wrong type":
        payload = draw(clicked)
        field = draw(st.sampled_from(sorted(FIELDS)))
        values, expected = wrong_type(field)
        put(payload, field, draw(values))
        return f"{kind} {field}", form_body(payload), set(expected)
    return kind, form_body(draw(clicked)), {200}


FIELDS = {
    "user",
    "user.id",
    "user.team_id",
    "team",
    "actions",
    "actions.0",
    "actions.0.action_id",
    "actions.0.value",
    "container",
    "channel",
    "message",
    "response_url",
    "type",
}


@st.composite
def signed_case(draw, run_id: str, evidence: str, response_url: str) -> Case:
    kind, body, expected = draw(hostile_body(run_id, evidence, response_url))
    how = draw(
        st.sampled_from(
            ["signed", "signed", "signed", "unsigned", "random", "other secret", "stale", "flip"]
        )
    )
    now = int(time.time())
    headers = sign(body)
    if how == "unsigned":
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    elif how == "random":
        headers["X-Slack-Signature"] = "v0=" + draw(st.binary(min_size=32, max_size=32)).hex()
    elif how == "other secret":
        other = draw(st.text(min_size=1, max_size=40).filter(lambda t: t != SIGNING_SECRET))
        headers = sign(body, secret=other)
    elif how == "stale":
        # past Slack's five minutes with a minute to spare: a stamp in the future comes closer
        # while the case waits to be sent, and a slow machine once brought one back inside
        skew = draw(st.integers(360, 10**7)) * draw(st.sampled_from([1, -1]))
        headers = sign(body, timestamp=now - skew)
    elif how == "flip":
        flipped = bytearray(body or b"x")
        at = draw(st.integers(0, 2**32)) % len(flipped)
        flipped[at] ^= 1 << draw(st.integers(0, 7))
        body = bytes(flipped)
    if len(body) > MAX_BODY:
        expected = {413}  # read before anything else
    elif how != "signed":
        expected = {401}
    return Case(f"{how} {kind}", body, headers, frozenset(expected))


HYPOTHESIS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
}


def test_generated_hostile_bodies_never_5xx_and_never_decide(stub, slack, project):
    run = stub(approvers=("slack:U0ALICE",))
    app = create_app(project, Interactions(project), signing_secret=SIGNING_SECRET)
    answered: list[tuple[str, int]] = []
    wrong: list[tuple[str, int, frozenset]] = []

    @settings(max_examples=1100, **HYPOTHESIS)
    @given(signed_case(run.run_id, run.hash, slack.response_url()))
    def send(case: Case):
        status = post_in_process(app, case.body, case.signed)
        answered.append((case.kind, status))
        if status not in case.expected:
            wrong.append((case.kind, status, case.expected))

    send()
    assert len(answered) >= 1000
    assert [s for _, s in answered if s >= 500] == []
    assert sorted(set(wrong)) == []
    kinds = {k.split(" ", 1)[1] for k, _ in answered}
    assert {"bytes", "json", "deep", "huge string", "near-valid click"} <= kinds
    assert paused(run.run_id), "hostile input resumed the run"
    assert decisions(project, run.run_id) == []
    assert refusals(project, run.run_id), "no generated click reached the decision path"

    # the same endpoint still decides for the right person
    alice = form_body(click(run.button_value, user=ALICE, response_url=slack.response_url()))
    assert post_in_process(app, alice, sign(alice)) == 200
    assert run.result()["approver"] == "U0ALICE"
    assert [e.approver for e in decisions(project, run.run_id)] == ["U0ALICE"]


# ---------------------------------------------------------------- a real `driftloop slack`


@dataclass
class Served:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def server(project, slack, prefect_server, tmp_path):
    """`driftloop slack` on a free loopback port, as a separate process; stopped by its pid."""
    port = free_port()
    env = {
        **tool_env(),
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": slack.token,
        "SLACK_API_URL": slack.url,
        "PREFECT_API_URL": f"{prefect_server}/api",
        "PREFECT_HOME": os.environ["PREFECT_HOME"],
    }
    log = tmp_path / "slack-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "driftloop"), "slack", "--port", str(port), "--config", str(project.path)],
            cwd=project.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(f"http://127.0.0.1:{port}", port, process, log)

    def healthy() -> bool:
        assert process.poll() is None, served.output()[-3000:]
        try:
            return httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(healthy, 60), served.output()[-3000:]
    yield served
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


async def trickle(port: int, head: bytes, budget: float) -> tuple[float, bytes]:
    """Send `head`, then one byte a second until the server closes; (seconds open, answer).

    The bytes go out half a second off the whole seconds, so none lands just as a deadline
    closes the socket (a byte arriving at a closed socket is answered with a reset, which would
    discard the server's answer before it is read)."""
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()

    async def drip():
        with contextlib.suppress(ConnectionError, RuntimeError):
            await asyncio.sleep(0.5)
            while True:
                await asyncio.sleep(1)
                writer.write(b"a")
                await writer.drain()

    dripping = asyncio.create_task(drip())
    try:
        answer = await asyncio.wait_for(reader.read(), budget)  # until the server closes
    except ConnectionError:
        answer = b"<reset>"
    except TimeoutError:
        answer = b"<still open>"
    finally:
        dripping.cancel()
        writer.close()
    return time.monotonic() - opened, answer


def test_slow_clients_are_cut_in_time_while_a_signed_click_is_answered(server, slack):
    header_head = b"POST /slack/actions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    body_head = (
        b"POST /slack/actions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\npayload="
    )
    budget = HEADER_TIMEOUT + 15  # a connection still open by then counts as not cut

    async def go():
        bodies = [asyncio.create_task(trickle(server.port, body_head, budget)) for _ in range(20)]
        await asyncio.sleep(0.5)  # these are requests in progress: never closed to make room
        headers = []
        for _ in range(200):
            headers.append(asyncio.create_task(trickle(server.port, header_head, budget)))
            await asyncio.sleep(0.005)
        await asyncio.sleep(1)
        payload = click("not-a-run:0123456789abcdef", response_url=slack.response_url())
        body = form_body(payload)
        async with httpx.AsyncClient(timeout=5) as client:
            began = time.monotonic()
            answer = await client.post(
                f"{server.url}/slack/actions", content=body, headers=sign(body)
            )
            acked = time.monotonic() - began
        # a client that leaves mid-body: one log line, no traceback
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(body_head.replace(b"500", b"1000") + b"%7B%22type")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        return (
            answer.status_code,
            acked,
            await asyncio.gather(*bodies),
            await asyncio.gather(*headers),
        )

    status, acked, bodies, headers = asyncio.run(go())
    assert status == 200 and acked < 2.0  # Slack's click, while 220 slow clients hold on
    assert wait_for(lambda: slack.responses, 10)
    assert slack.responses[0]["text"] == ":no_entry: Not recorded: 'not-a-run' is not a run id"

    assert all(a.startswith(b"HTTP/1.1 408 ") for _, a in bodies), [a[:40] for _, a in bodies]
    assert all(BODY_TIMEOUT - 0.5 <= took <= BODY_TIMEOUT + 3 for took, _ in bodies), bodies
    # A drip byte that reaches the socket just as the server closes it makes the kernel answer
    # with a reset, which discards the 408 or 503 before the client reads it: such a connection
    # is told apart by when it was closed.
    late = HEADER_TIMEOUT - 0.5
    timed_out = [
        t for t, a in headers if a.startswith(b"HTTP/1.1 408 ") or (a == b"<reset>" and t >= late)
    ]
    # closed to make room: told 503 (or just closed, had its first bytes not arrived yet)
    made_room = [
        t
        for t, a in headers
        if a.startswith(b"HTTP/1.1 503 ") or a == b"" or (a == b"<reset>" and t < late)
    ]
    assert len(timed_out) + len(made_room) == 200, {a for _, a in headers}
    # the cap holds 100: 20 bodies in progress and at most the last 80 header tricklers
    assert 60 <= len(timed_out) <= MAX_CONNECTIONS - 20
    assert all(HEADER_TIMEOUT - 0.5 <= took <= HEADER_TIMEOUT + 3 for took in timed_out)
    assert all(took < HEADER_TIMEOUT for took in made_room)

    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert wait_for(lambda: "closed connections in the last 10 s" in server.output(), 15)
    log = server.output()
    assert log.count("disconnected before its body was read") == 1
    assert "Traceback" not in log and "Exception in ASGI application" not in log


def test_generated_hostile_bodies_against_the_real_server(server, stub, slack, project):
    run = stub(approvers=("slack:U0ALICE",))
    wrong: list[tuple[str, int]] = []
    sent: list[int] = []

    with httpx.Client(base_url=server.url, timeout=10) as client:

        @settings(max_examples=80, **HYPOTHESIS)
        @given(signed_case(run.run_id, run.hash, slack.response_url()))
        def send(case: Case):
            answer = client.post("/slack/actions", content=case.body, headers=case.signed)
            sent.append(answer.status_code)
            if answer.status_code not in case.expected:
                wrong.append((case.kind, answer.status_code))

        send()
    assert len(sent) >= 80 and [s for s in sent if s >= 500] == []
    assert wrong == []
    time.sleep(3)  # the refused clicks' background work
    assert paused(run.run_id) and decisions(project, run.run_id) == []

    alice = form_body(click(run.button_value, user=ALICE, response_url=slack.response_url()))
    assert (
        httpx.post(f"{server.url}/slack/actions", content=alice, headers=sign(alice)).status_code
        == 200
    )
    assert run.result()["approver"] == "U0ALICE"
    assert "Traceback" not in server.output()
