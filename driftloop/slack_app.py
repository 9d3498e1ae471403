"""`driftloop slack`: Slack's Approve/Reject buttons become one decision on the paused run.

Two transports share one handler (`Interactions`):
- HTTP: Slack POSTs to `/slack/actions`. The signature is checked over the raw body within
  Slack's 5-minute window (anything unverifiable is a 401, never a 500), and the request is
  acknowledged at once; the decision is made in a background task, well inside Slack's 3 s.
- Socket Mode (`--socket-mode`, SLACK_APP_TOKEN): the app dials out to Slack over a WebSocket,
  acknowledges each envelope first, then hands the payload to the same handler.

Repeated clicks (same message, action and action_ts) are handled once. The clicker is the
signed payload's user id (never a handle or display name), and only users of the workspace
`approval.slack_team_id` may decide; the user id must be on the request's allow-list. A refusal
is answered with an ephemeral message and audited, and the card is replaced with the outcome
via chat.update.

The HTTP transport holds against a hostile or careless caller (see `serve_http`): a request's
headers must arrive within HEADER_TIMEOUT and its body within BODY_TIMEOUT, at most
MAX_CONNECTIONS are open at once (when full, the connection idle longest without a request in
progress is closed first), a body is at most MAX_BODY bytes, and a payload nested deeper than
MAX_DEPTH is a 400. A client that disconnects mid-body is one log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

import h11
import typer
from slack_sdk.signature import Clock, SignatureVerifier
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from config.secrets import secrets
from driftloop.console import ConfigOption, console, err_console, project, use_prefect

if TYPE_CHECKING:
    from config.loader import Project

log = logging.getLogger("driftloop.slack")

DECISIONS = {"driftloop_approve": "approve", "driftloop_reject": "reject"}
TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII digits only: int() would also take " 12" or "١٢"
SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
LENGTH = re.compile(r"[0-9]{1,12}")
SLACK_ID = re.compile(r"[A-Z0-9]{2,40}")  # U..., W..., T..., E...: upper-case letters and digits
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')  # linear: the two branches never overlap
BRACKETS = re.compile(r"[\[\]{}]")
DEDUPE_SECONDS = 600.0  # longer than Slack's 5-minute replay window

# Limits of the HTTP transport. Slack sends one small request per click (a few KB, headers and
# body at once), so these only ever cut a client that is not Slack or not well.
MAX_BODY = 64 * 1024  # bytes; a body over this is a 413
MAX_DEPTH = 64  # nesting of the payload's JSON; Slack's block_actions payloads stay near 10
MAX_FIELDS = 16  # form fields; Slack sends one (`payload`)
MAX_VALUE = 2000  # characters in a button's value, Slack's own limit
HEADER_TIMEOUT = 10.0  # seconds from a request's first byte (or the connection) to its last header
BODY_TIMEOUT = 10.0  # seconds to read the body once the headers are in; then a 408
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection stays open (uvicorn's timer)
MAX_CONNECTIONS = 100  # open at once; past it the longest-idle one is closed, or the new one
MAX_HEADER_BYTES = 16 * 1024  # request line and headers (h11's incomplete-event bound): 400 past it
BACKLOG = 128  # the listening socket's queue of connections not yet accepted
SHUTDOWN_TIMEOUT = 15  # seconds uvicorn waits for requests in progress on Ctrl-C / SIGTERM

Submit = Callable[..., Awaitable[Any]]


def verify(verifier: SignatureVerifier, raw: bytes, headers) -> bool:
    """Slack's signature over the raw body, in the 5-minute window; False for anything odd."""
    ts = headers.get("x-slack-request-timestamp")
    sig = headers.get("x-slack-signature")
    if not ts or not sig or not TIMESTAMP.fullmatch(ts) or not SIGNATURE.fullmatch(sig):
        return False
    try:
        return verifier.is_valid(raw, ts, sig)
    except Exception:  # e.g. a body that is not UTF-8
        return False


def json_depth(text: str) -> int:
    """How deeply `text` nests arrays and objects, without parsing it (exact for valid JSON)."""
    depth = deepest = 0
    for bracket in BRACKETS.findall(JSON_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_payload(raw: bytes) -> dict[str, Any] | None:
    """The JSON in the form field `payload=`, or None when the body is not that (or it nests
    deeper than MAX_DEPTH)."""
    try:
        form = parse_qs(raw.decode("utf-8"), strict_parsing=True, max_num_fields=MAX_FIELDS)
        text = form["payload"][0]
        if json_depth(text) > MAX_DEPTH:
            return None
        payload = json.loads(text)
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def slack_identity(payload: dict[str, Any]) -> tuple[str, str]:
    """(user id, team id) of the signed payload's clicker; ValueError when they are malformed.

    The team is `user.team_id`, else `team.id`; "" when the payload names none. Handles and
    display names are never read: anyone can pick them, in any workspace.
    """
    user = payload.get("user")
    if not isinstance(user, dict):
        raise ValueError("the payload has no user object")
    user_id = user.get("id")
    if not isinstance(user_id, str) or not SLACK_ID.fullmatch(user_id):
        raise ValueError("the payload's user id is malformed")
    team = user.get("team_id")
    if team is None:
        org = payload.get("team")
        if org is not None and not isinstance(org, dict):
            raise ValueError("the payload's team is not an object")
        team = (org or {}).get("id")
    if team is not None and (not isinstance(team, str) or not SLACK_ID.fullmatch(team)):
        raise ValueError("the payload's team id is malformed")
    return user_id, team or ""


def check_shape(payload: dict[str, Any], action: dict[str, Any]) -> None:
    """ValueError unless the parts of a click we read later have the types Slack sends."""
    slack_identity(payload)
    value = action.get("value", "")
    if not isinstance(value, str) or len(value) > MAX_VALUE:
        raise ValueError("the button's value is not a short string")
    for key in ("container", "message", "channel"):
        if not isinstance(payload.get(key) or {}, dict):
            raise ValueError(f"the payload's {key} is not an object")
    if not isinstance(payload.get("response_url") or "", str):
        raise ValueError("the payload's response_url is not a string")


def dedupe_key(payload: dict[str, Any], action: dict[str, Any]) -> str:
    container = payload.get("container") or {}
    message = payload.get("message") or {}
    ts = container.get("message_ts") or message.get("ts") or ""
    click = action.get("action_ts") or payload.get("trigger_id") or ""
    return f"{ts}|{action.get('action_id')}|{click}"


class Interactions:
    """Verified payloads -> decisions. `accept` returns at once; the work runs in a task."""

    def __init__(
        self,
        proj: Project,
        submit: Submit | None = None,
        dedupe_seconds: float = DEDUPE_SECONDS,
    ) -> None:
        self.project = proj
        self.submit = submit
        self.dedupe_seconds = dedupe_seconds
        self.seen: dict[str, float] = {}
        self.tasks: set[asyncio.Task] = set()

    def accept(self, payload: dict[str, Any]) -> str:
        """'scheduled', 'duplicate' or 'ignored' (not one of our buttons)."""
        if payload.get("type") != "block_actions":
            return "ignored"
        actions = [a for a in payload.get("actions") or [] if isinstance(a, dict)]
        action = next((a for a in actions if a.get("action_id") in DECISIONS), None)
        if action is None:
            return "ignored"
        check_shape(payload, action)
        now = time.monotonic()
        self.seen = {k: until for k, until in self.seen.items() if until > now}
        key = dedupe_key(payload, action)
        if key in self.seen:  # no await between this check and the insert: one wins
            return "duplicate"
        self.seen[key] = now + self.dedupe_seconds
        task = asyncio.get_running_loop().create_task(self._handle(payload, action))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return "scheduled"

    def safe_accept(self, payload: dict[str, Any]) -> str:
        """`accept`, or 'malformed' for a payload not shaped like Slack's (logged, not raised)."""
        try:
            return self.accept(payload)
        except (AttributeError, TypeError, ValueError) as exc:
            log.warning("malformed Slack payload: %s", exc)
            return "malformed"

    async def drain(self, timeout: float = 30) -> None:
        """Let clicks in progress finish (on shutdown)."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)

    def team_refusal(self, user_id: str, team: str) -> str | None:
        """Why a user of `team` may not decide, or None when it is the configured workspace."""
        section = getattr(self.project.config, "approval", None)
        expected = str(getattr(section, "slack_team_id", "") or "")
        if not expected:
            return (
                "Slack decisions are off: set approval.slack_team_id to the team id (T...) of "
                "the workspace whose users may decide"
            )
        if team != expected:
            return f"{user_id} is a user of another Slack workspace ({team or 'none named'})"
        return None

    async def _handle(self, payload: dict[str, Any], action: dict[str, Any]) -> None:
        from tasks.approval.audit import arecord_refusal
        from tasks.approval.submit import asubmit_decision

        try:
            user_id, team = slack_identity(payload)
            run_id, _, hash_ = str(action.get("value", "")).partition(":")
            decision = DECISIONS[action["action_id"]]
            refusal = self.team_refusal(user_id, team)
            if refusal is not None:
                await arecord_refusal(
                    self.project, run_id, decision, user_id, "slack", hash_ or None, refusal
                )
                await self._tell(payload, f":no_entry: Not recorded: {refusal}")
                return
            submit = self.submit or asubmit_decision
            result = await submit(
                self.project,
                run_id,
                decision,
                approver=user_id,
                channel="slack",
                comment="",
                evidence_hash=hash_ or None,
            )
            if result.decision is not None and result.request is not None:
                await self._update_card(payload, result)
            if not result.recorded:
                await self._tell(payload, f":no_entry: Not recorded: {result.message}")
        except Exception:
            log.exception("handling a Slack click failed")
            await self._tell(
                payload, ":warning: driftloop could not process this click; see its log"
            )

    async def _update_card(self, payload: dict[str, Any], result) -> None:
        from tasks.approval.card import approval_card
        from tasks.notify import update_notice

        container = payload.get("container") or {}
        channel = (payload.get("channel") or {}).get("id") or result.request.card_channel
        ts = container.get("message_ts") or (payload.get("message") or {}).get("ts")
        ts = ts or result.request.card_ts
        if not channel or not ts:
            return
        card = approval_card(result.request, result.decision)
        await asyncio.to_thread(update_notice, self.project, channel, ts, card)

    async def _tell(self, payload: dict[str, Any], text: str) -> None:
        """An ephemeral reply to the clicker: response_url first, chat.postEphemeral after."""
        import httpx

        url = payload.get("response_url")
        if url:
            body = {"response_type": "ephemeral", "replace_original": False, "text": text}
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    answer = await client.post(url, json=body)
                if answer.status_code < 300:
                    return
                log.warning("response_url answered %s", answer.status_code)
            except httpx.HTTPError as exc:
                log.warning("response_url failed: %s", exc)
        await asyncio.to_thread(self._post_ephemeral, payload, text)

    def _post_ephemeral(self, payload: dict[str, Any], text: str) -> None:
        from slack_sdk.errors import SlackClientError

        from tasks.notify import slack_client

        client = slack_client(self.project)
        channel = (payload.get("channel") or {}).get("id")
        user = (payload.get("user") or {}).get("id")
        if client is None or not channel or not user:
            log.warning("could not tell %s: %s", user, text)
            return
        try:
            client.chat_postEphemeral(channel=channel, user=user, text=text)
        except (SlackClientError, OSError) as exc:
            log.warning("chat.postEphemeral failed (%s); the message was: %s", exc, text)


CLOSE = {"connection": "close"}  # the rest of an unread body is not a next request


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request) -> bytes:
    """The body, bounded by MAX_BODY even without (or despite) a content-length."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise BodyTooLarge
    return bytes(raw)


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "a client"


def create_app(
    proj: Project,
    interactions: Interactions | None = None,
    signing_secret: str | None = None,
    clock: Clock | None = None,
    body_timeout: float = BODY_TIMEOUT,
) -> Starlette:
    """The HTTP transport: POST /slack/actions (Slack's Request URL) and GET /healthz."""
    if signing_secret is None:
        secret = secrets().slack_signing_secret
        if secret is None:
            raise ValueError("SLACK_SIGNING_SECRET is not set: Slack's requests cannot be verified")
        signing_secret = secret.get_secret_value()
    verifier = SignatureVerifier(signing_secret, clock=clock or Clock())
    handler = interactions or Interactions(proj)

    async def actions(request: Request) -> Response:
        length = request.headers.get("content-length", "0")
        if not LENGTH.fullmatch(length) or int(length) > MAX_BODY:
            return JSONResponse({"error": "body too large"}, status_code=413, headers=CLOSE)
        try:
            raw = await asyncio.wait_for(read_body(request), body_timeout)
        except BodyTooLarge:
            return JSONResponse({"error": "body too large"}, status_code=413, headers=CLOSE)
        except TimeoutError:
            log.warning("%s: body not read within %g s; closed", _peer(request), body_timeout)
            return JSONResponse({"error": "body too slow"}, status_code=408, headers=CLOSE)
        except ClientDisconnect:
            log.warning("%s: disconnected before its body was read", _peer(request))
            return Response(status_code=400)  # nobody is listening any more
        if not verify(verifier, raw, request.headers):
            return JSONResponse({"error": "invalid request"}, status_code=401)
        payload = parse_payload(raw)
        if payload is None or handler.safe_accept(payload) == "malformed":
            return JSONResponse({"error": "malformed payload"}, status_code=400)
        return Response(status_code=200)  # the acknowledgement; the work goes on in a task

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await handler.drain()
        _cuts.flush()

    app = Starlette(
        routes=[
            Route("/slack/actions", actions, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.interactions = handler
    return app


class _CutLog:
    """Connections the guard closed, logged as one summary line per 10 s, not one per client."""

    every = 10.0

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def note(self, loop: asyncio.AbstractEventLoop, why: str) -> None:
        if not self.counts:
            loop.call_later(self.every, self.flush)
        self.counts[why] += 1

    def flush(self) -> None:
        if self.counts:
            parts = ", ".join(f"{n} {why}" for why, n in self.counts.most_common())
            log.warning("closed connections in the last %g s: %s", self.every, parts)
        self.counts.clear()


_cuts = _CutLog()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the two limits uvicorn does not have.

    - A deadline for a request's headers: uvicorn's keep-alive timer only runs between requests,
      and h11 waits for the end of the headers as long as bytes keep coming, so a client that
      trickles a header line would hold its connection forever. The deadline starts when the
      connection opens (or at the first byte of the next request on a kept-alive connection);
      when it passes the client gets a 408 and the connection is closed.
    - A cap on open connections: past MAX_CONNECTIONS the connection that has waited longest
      without a request in progress (a slow header, an idle keep-alive) is closed to make room;
      when every connection is busy with a request, the new one gets a 503 and is closed.
    Slack sends its headers and body at once, so neither limit touches it.
    """

    header_timeout = HEADER_TIMEOUT
    max_connections = MAX_CONNECTIONS
    deadline: asyncio.TimerHandle | None = None
    waiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.max_connections:
            victim = min(
                (c for c in self.connections if isinstance(c, GuardedH11Protocol) and c.idle()),
                key=lambda c: (c is self, c.waiting_since),  # this one only if nothing else
                default=None,
            )
            if victim is None or victim is self:
                self.cut(b"503 Service Unavailable", "over the connection cap")
            else:
                victim.cut(b"503 Service Unavailable", "idle, closed for a new connection")

    def data_received(self, data: bytes) -> None:
        if self.deadline is None and self.idle():
            self._arm()  # the first byte of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in (or it failed)
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def idle(self) -> bool:
        """No request in progress: waiting for (the rest of) a request's headers."""
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def cut(self, status: bytes, why: str) -> None:
        self._disarm()
        self.connections.discard(self)  # at once: the cap counts it gone
        if self.transport is not None and not self.transport.is_closing():
            if self.conn.trailing_data[0]:  # it has sent part of a request: tell it why
                self.transport.write(
                    b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
            self.transport.close()
        _cuts.note(self.loop, why)

    def _arm(self) -> None:
        self._disarm()
        self.waiting_since = self.loop.time()
        self.deadline = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _header_timeout(self) -> None:
        self.deadline = None
        if self.idle():
            why = f"headers not complete within {self.header_timeout:g} s"
            self.cut(b"408 Request Timeout", why)


def uvicorn_config(app: Starlette, host: str, port: int, **overrides: Any):
    """uvicorn's settings for the HTTP transport: the guarded protocol and every bound above."""
    import uvicorn

    settings: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": GuardedH11Protocol,
        "ws": "none",  # no WebSocket routes: an upgrade is an ordinary (refused) request
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT,
        # the connection cap is the guard's; one above it, uvicorn's 503 bounds only requests
        # in progress (a connection the guard closed may still have its task finishing)
        "limit_concurrency": MAX_CONNECTIONS + 1,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "backlog": BACKLOG,
        "timeout_graceful_shutdown": SHUTDOWN_TIMEOUT,
        "server_header": False,
        "log_level": "info",
        **overrides,
    }
    return uvicorn.Config(app, **settings)


def serve_http(app: Starlette, host: str, port: int) -> None:
    """Serve the HTTP transport until Ctrl-C / SIGTERM."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host, port)).run()


async def run_socket_mode(
    proj: Project,
    stop: asyncio.Event,
    interactions: Interactions | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """The Socket Mode transport: connect with SLACK_APP_TOKEN and serve until `stop` is set."""
    from slack_sdk.socket_mode.request import SocketModeRequest
    from slack_sdk.socket_mode.response import SocketModeResponse
    from slack_sdk.socket_mode.websockets import SocketModeClient
    from slack_sdk.web.async_client import AsyncWebClient

    found = secrets()
    if found.slack_app_token is None:
        raise ValueError("SLACK_APP_TOKEN is not set: Socket Mode needs an app-level token")
    bot = found.slack_bot_token.get_secret_value() if found.slack_bot_token else None
    handler = interactions or Interactions(proj)
    client = SocketModeClient(
        app_token=found.slack_app_token.get_secret_value(),
        web_client=AsyncWebClient(token=bot, base_url=found.slack_api_url),
        logger=log,
    )

    async def on_request(client: SocketModeClient, req: SocketModeRequest) -> None:
        # acknowledge first: Slack redelivers an envelope that is not acked in 3 s
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        if req.type == "interactive" and isinstance(req.payload, dict):
            handler.safe_accept(req.payload)

    client.socket_mode_request_listeners.append(on_request)
    await client.connect()
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await client.close()
        await handler.drain()


def slack(
    port: Annotated[
        int | None,
        typer.Option(help="HTTP port for Slack's Request URL (default: approval.slack_port)."),
    ] = None,
    socket_mode: Annotated[
        bool,
        typer.Option(
            "--socket-mode",
            help="Connect out to Slack with SLACK_APP_TOKEN instead (no public URL needed).",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Serve the Approve/Reject buttons: verify, acknowledge, decide the run, update the card."""
    proj = project(config)
    use_prefect(proj)
    # this process runs no flow: its log lines stay here instead of warning that they cannot
    # go to a flow run's log
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    from tasks.approval.settings import ApprovalSettings

    found = secrets()
    if found.slack_bot_token is None:
        err_console.print("[yellow]SLACK_BOT_TOKEN is not set: cards will not be updated[/]")
    if socket_mode:
        if found.slack_app_token is None:
            err_console.print("[bold red]error:[/] Socket Mode needs SLACK_APP_TOKEN (xapp-...)")
            raise typer.Exit(2)
        console.print("Slack Socket Mode: connecting (Ctrl-C stops)")
        asyncio.run(_serve_socket_mode(proj))
        return
    if found.slack_signing_secret is None:
        err_console.print(
            "[bold red]error:[/] set SLACK_SIGNING_SECRET (the app's Basic Information page), "
            "or use --socket-mode with SLACK_APP_TOKEN"
        )
        raise typer.Exit(2)
    settings = ApprovalSettings.from_project(proj)
    bind_port = port or settings.slack_port
    console.print(
        f"Slack interactivity at http://{settings.slack_host}:{bind_port}/slack/actions "
        "(point the app's Request URL here through your HTTPS proxy; Ctrl-C stops)"
    )
    serve_http(create_app(proj), settings.slack_host, bind_port)


async def _serve_socket_mode(proj: Project) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_socket_mode(proj, stop)
