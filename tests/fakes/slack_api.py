"""A small local server speaking Slack's Web API (the calls driftloop makes), for tests.

It answers like Slack (`{"ok": true, ...}`, `ts` per message, 429 with Retry-After when told to)
and records every call so tests can assert what a person would have seen in the channel.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    method: str
    body: dict[str, Any]
    headers: dict[str, str]
    status: int | None = None  # the HTTP status it was answered with


@dataclass
class FakeSlack:
    token: str = "xoxb-test-token"
    calls: list[Call] = field(default_factory=list)
    script: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    delay: float = 0.0

    def __post_init__(self) -> None:
        self._ts = itertools.count(1)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/"

    def start(self) -> FakeSlack:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, status: int, headers: dict[str, str] | None = None, body=None) -> None:
        """Answer the next call with this status (e.g. 429 + Retry-After, or 500)."""
        self.script.append((status, headers or {}, body or {"ok": False, "error": "fail"}))

    def posted(self, method: str = "chat.postMessage") -> list[dict[str, Any]]:
        return [c.body for c in self.calls if c.method == method]

    def _respond(self, method: str, body: dict[str, Any], headers: dict[str, str]):
        call = Call(method, body, headers)
        with self._lock:
            self.calls.append(call)
            scripted = self.script.pop(0) if self.script else None
        answer = scripted or self._answer(method, body, headers)
        call.status = answer[0]
        return answer

    def _answer(self, method: str, body: dict[str, Any], headers: dict[str, str]):
        if headers.get("authorization") != f"Bearer {self.token}":
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        if method == "chat.postMessage":
            ts = f"{1700000000 + next(self._ts)}.000100"
            return (
                200,
                {},
                {
                    "ok": True,
                    "channel": body.get("channel"),
                    "ts": ts,
                    "message": {"text": body.get("text"), "ts": ts},
                },
            )
        if method == "chat.update":
            return 200, {}, {"ok": True, "channel": body.get("channel"), "ts": body.get("ts")}
        if method == "auth.test":
            return 200, {}, {"ok": True, "user_id": "UBOT", "team_id": "T1"}
        return 200, {}, {"ok": False, "error": "unknown_method"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                ctype = self.headers.get("content-type", "")
                if "json" in ctype:
                    body = json.loads(raw or b"{}")
                else:
                    from urllib.parse import parse_qsl

                    body = dict(parse_qsl(raw.decode()))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if fake.delay:
                    threading.Event().wait(fake.delay)
                status, extra, payload = fake._respond(self.path.rsplit("/", 1)[-1], body, headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler
