"""Slack's side of interactivity, for tests: signed clicks, response_url, and Socket Mode.

`FakeSlackApp` is the Web API fake plus chat.postEphemeral, `apps.connections.open` (handing out
the URL of a local WebSocket server) and response_url endpoints. `SocketModeServer` speaks
Slack's Socket Mode envelope format: hello on connect, `{envelope_id, payload, type,
accepts_response_payload}` out, and it records the client's `{envelope_id}` acknowledgements.
Requests are signed by hand exactly as Slack documents it, independently of slack-sdk.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tests.fakes.slack_api import Call, FakeSlack

SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
APP_TOKEN = "xapp-1-test-app-token"


def sign(body: bytes, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict:
    """The headers Slack sends: v0=HMAC-SHA256(secret, 'v0:{ts}:{raw body}')."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def form_body(payload: dict[str, Any]) -> bytes:
    """How Slack posts an interaction: form-encoded `payload=<json>`."""
    return urlencode({"payload": json.dumps(payload)}).encode()


def click(
    value: str,
    action: str = "approve",
    user: tuple[str, str] = ("U0ALICE", "alice"),
    channel: str = "C0APPROVE",
    message_ts: str = "1700000001.000100",
    action_ts: str | None = None,
    response_url: str | None = None,
    team: str = "T0TEAM",
) -> dict[str, Any]:
    """A `block_actions` payload for one of the card's buttons, shaped as Slack sends it, from a
    user (`(id, handle)`) of the workspace `team`."""
    return {
        "type": "block_actions",
        "team": {"id": team, "domain": "example"},
        "user": {"id": user[0], "username": user[1], "name": user[1], "team_id": team},
        "api_app_id": "A0APP",
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}",
        "channel": {"id": channel, "name": "driftloop"},
        "message": {"type": "message", "ts": message_ts, "text": "Approval needed"},
        "response_url": response_url or "https://hooks.slack.invalid/actions/T0/1/x",
        "actions": [
            {
                "type": "button",
                "action_id": f"driftloop_{action}",
                "block_id": "driftloop_approval",
                "text": {"type": "plain_text", "text": action.title()},
                "value": value,
                "style": "primary" if action == "approve" else "danger",
                "action_ts": action_ts or f"{time.time():.6f}",
            }
        ],
    }


@dataclass
class FakeSlackApp(FakeSlack):
    """The Web API fake plus the interactive parts of Slack."""

    responses: list[dict[str, Any]] = field(default_factory=list)
    socket_url: str | None = None
    fail_response_url: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._response_ids = itertools.count(1)

    def response_url(self) -> str:
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/response/resp-{next(self._response_ids)}"

    def ephemerals(self) -> list[dict[str, Any]]:
        """Everything told privately to a clicker (response_url or chat.postEphemeral)."""
        return list(self.responses) + self.posted("chat.postEphemeral")

    def card_updates(self) -> list[dict[str, Any]]:
        return self.posted("chat.update")

    def _respond(self, method: str, body: dict[str, Any], headers: dict[str, str]):
        if method.startswith("resp-"):
            with self._lock:
                self.calls.append(Call(method, body, headers))
                if self.fail_response_url:
                    return 404, {}, {"ok": False, "error": "expired_url"}
                self.responses.append(body)
            return 200, {}, {"ok": True}
        if method == "apps.connections.open":
            with self._lock:
                self.calls.append(Call(method, body, headers))
            token = headers.get("authorization", "").removeprefix("Bearer ") or body.get("token")
            if token != APP_TOKEN or self.socket_url is None:
                return 200, {}, {"ok": False, "error": "invalid_auth"}
            return 200, {}, {"ok": True, "url": self.socket_url}
        if method == "chat.postEphemeral":
            with self._lock:
                self.calls.append(Call(method, body, headers))
            if headers.get("authorization") != f"Bearer {self.token}":
                return 200, {}, {"ok": False, "error": "invalid_auth"}
            return 200, {}, {"ok": True, "message_ts": f"{time.time():.6f}"}
        return super()._respond(method, body, headers)


class SocketModeServer:
    """A local WebSocket server speaking Slack's Socket Mode envelopes (own thread and loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.acks: dict[str, dict[str, Any]] = {}
        self.connections: list[Any] = []
        self.connected = threading.Event()
        self._acked = threading.Condition()
        self._server = None
        self.url = ""

    def start(self) -> SocketModeServer:
        from websockets.asyncio.server import serve

        self.thread.start()

        async def open_server():
            return await serve(self._session, "127.0.0.1", 0)

        self._server = asyncio.run_coroutine_threadsafe(open_server(), self.loop).result(10)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/link/?ticket=test"
        return self

    async def _session(self, ws) -> None:
        self.connections.append(ws)
        hello = {
            "type": "hello",
            "num_connections": 1,
            "debug_info": {"host": "fake", "approximate_connection_time": 18060},
            "connection_info": {"app_id": "A0APP"},
        }
        await ws.send(json.dumps(hello))
        self.connected.set()
        async for message in ws:
            data = json.loads(message)
            if "envelope_id" in data:
                with self._acked:
                    self.acks[data["envelope_id"]] = data
                    self._acked.notify_all()

    def send_interactive(self, payload: dict[str, Any]) -> str:
        """Deliver one interaction to every connected client; returns its envelope id."""
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": "interactive",
            "accepts_response_payload": False,
        }

        async def send():
            for ws in self.connections:
                await ws.send(json.dumps(envelope))

        asyncio.run_coroutine_threadsafe(send(), self.loop).result(10)
        return envelope_id

    def wait_ack(self, envelope_id: str, timeout: float = 5) -> dict[str, Any] | None:
        with self._acked:
            self._acked.wait_for(lambda: envelope_id in self.acks, timeout=timeout)
            return self.acks.get(envelope_id)

    def stop(self) -> None:
        async def close():
            self._server.close()
            await self._server.wait_closed()

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
