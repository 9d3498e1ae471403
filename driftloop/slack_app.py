"""`driftloop slack`: Slack's Approve/Reject buttons become one decision on the paused run.

Two transports share one handler (`Interactions`):
- HTTP: Slack POSTs to `/slack/actions`. The signature is checked over the raw body within
  Slack's 5-minute window (anything unverifiable is a 401, never a 500), and the request is
  acknowledged at once; the decision is made in a background task, well inside Slack's 3 s.
- Socket Mode (`--socket-mode`, SLACK_APP_TOKEN): the app dials out to Slack over a WebSocket,
  acknowledges each envelope first, then hands the payload to the same handler.

Repeated clicks (same message, action and action_ts) are handled once. The clicker must be on
the request's approver allow-list; a refusal is answered with an ephemeral message and audited
(by `tasks.approval`), and the card is replaced with the outcome via chat.update.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

import typer
from slack_sdk.signature import Clock, SignatureVerifier
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from config.secrets import secrets
from driftloop.console import ConfigOption, console, err_console, project, use_prefect

if TYPE_CHECKING:
    from config.loader import Project

log = logging.getLogger("driftloop.slack")

DECISIONS = {"driftloop_approve": "approve", "driftloop_reject": "reject"}
MAX_BODY = 256 * 1024  # Slack's interaction payloads are a few KB
TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII digits only: int() would also take " 12" or "١٢"
SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
DEDUPE_SECONDS = 600.0  # longer than Slack's 5-minute replay window

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


def parse_payload(raw: bytes) -> dict[str, Any] | None:
    """The JSON in the form field `payload=`, or None when the body is not that."""
    try:
        form = parse_qs(raw.decode("utf-8"), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError):
        return None
    return payload if isinstance(payload, dict) else None


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

    async def _handle(self, payload: dict[str, Any], action: dict[str, Any]) -> None:
        from tasks.approval import asubmit_decision

        try:
            user = payload.get("user") or {}
            names = [str(n) for n in (user.get("username"), user.get("name"), user.get("id")) if n]
            run_id, _, hash_ = str(action.get("value", "")).partition(":")
            submit = self.submit or asubmit_decision
            result = await submit(
                self.project,
                run_id,
                DECISIONS[action["action_id"]],
                names[0] if names else "unknown",
                "slack",
                "",
                hash_ or None,
                aliases=names,
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
        from tasks.approval import approval_card
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


def create_app(
    proj: Project,
    interactions: Interactions | None = None,
    signing_secret: str | None = None,
    clock: Clock | None = None,
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
        if not length.isdigit() or int(length) > MAX_BODY:
            return JSONResponse({"error": "body too large"}, status_code=413)
        raw = b""
        async for chunk in request.stream():  # bounded even without a content-length
            raw += chunk
            if len(raw) > MAX_BODY:
                return JSONResponse({"error": "body too large"}, status_code=413)
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

    app = Starlette(
        routes=[
            Route("/slack/actions", actions, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.interactions = handler
    return app


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
    from tasks.approval import ApprovalSettings

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
    import uvicorn

    settings = ApprovalSettings.from_project(proj)
    bind_port = port or settings.slack_port
    console.print(
        f"Slack interactivity at http://{settings.slack_host}:{bind_port}/slack/actions "
        "(point the app's Request URL here through your HTTPS proxy; Ctrl-C stops)"
    )
    uvicorn.run(create_app(proj), host=settings.slack_host, port=bind_port, log_level="info")


async def _serve_socket_mode(proj: Project) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_socket_mode(proj, stop)
