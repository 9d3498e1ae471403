"""With the stack down, a command that needs it says so in one line and exits 2, in seconds.

The config copy names free, closed loopback ports for every endpoint, so nothing here reaches a
real service (nor the default ports another stack may use).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.support import copy_project, driftloop, edit_config, free_port, tool_env

RUN_ID = "3f1c2a9e-7b4d-4e8a-9c1f-2d5e6a7b8c9d"
ENDPOINTS = ("prefect", "pushgateway", "prometheus", "alertmanager", "worker", "reports")


@pytest.fixture(scope="module")
def down(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """A project copy whose endpoints and serving port are all closed; its ports by name."""
    root = copy_project(tmp_path_factory.mktemp("stack-down"))
    ports = {name: free_port() for name in (*ENDPOINTS, "serving")}

    def closed(raw: dict) -> None:
        for name in ENDPOINTS:
            raw["endpoints"][name] = f"http://127.0.0.1:{ports[name]}"
        raw["serving"]["port"] = ports["serving"]

    edit_config(root, closed)
    return root, ports


def run_timed(root: Path, *args: str):
    started = time.monotonic()
    done = driftloop(root, *args, check=False, timeout=60)
    return done, time.monotonic() - started


def assert_one_line(done, seconds: float, service: str, url: str) -> None:
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert done.returncode == 2, output
    assert len(lines) == 1, output
    assert lines[0] == f"{service} at {url} does not answer: " + (
        "start the stack with `driftloop up` and release a bento"
        if service == "serving endpoint"
        else "start the stack with `driftloop up`"
    )
    assert "Traceback" not in output
    assert "temporary server" not in output
    assert seconds < 40, f"took {seconds:.1f} s"  # no retry loop; a loaded machine starts slowly


@pytest.mark.parametrize(
    "args",
    [
        ["monitor"],
        ["retrain"],
        ["retrain", "--dry-run"],
        ["propose"],
        ["pending"],
        ["approve", RUN_ID],
        ["reject", RUN_ID, "-m", "worse on weekends"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_prefect_down(down, args):
    root, ports = down
    done, seconds = run_timed(root, *args)
    assert_one_line(done, seconds, "prefect server", f"http://127.0.0.1:{ports['prefect']}")


def test_replay_endpoint_down(down):
    root, ports = down
    done, seconds = run_timed(root, "replay")
    assert_one_line(done, seconds, "serving endpoint", f"http://127.0.0.1:{ports['serving']}")


def test_replay_url_down(down):
    root, _ = down
    url = f"http://127.0.0.1:{free_port()}"
    done, seconds = run_timed(root, "replay", "--url", url)
    assert_one_line(done, seconds, "serving endpoint", url)


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def answering():
    """A loopback server that answers 200 to any GET: a Prefect that is up, as far as a health
    check can tell."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_monitor_pushgateway_down(down, answering):
    root, ports = down
    config = root / "config" / "prefect-answers.yaml"
    raw = yaml.safe_load((root / "config" / "driftloop.yaml").read_text())
    raw["endpoints"]["prefect"] = answering
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    done, seconds = run_timed(root, "monitor", "--config", str(config))
    assert_one_line(done, seconds, "pushgateway", f"http://127.0.0.1:{ports['pushgateway']}")


def test_exported_ephemeral_mode_is_overridden(down):
    """Prefect's default profile allows a temporary server; driftloop turns it off, even when
    the environment asks for it under either name."""
    root, _ = down
    env = {
        **tool_env(),
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
    }
    code = (
        "from driftloop.console import project\n"
        "project(None)\n"
        "from prefect.settings import get_current_settings\n"
        "print(get_current_settings().server.ephemeral.enabled)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_an_exported_prefect_api_url_is_the_one_checked(down, answering, monkeypatch):
    """PREFECT_API_URL set outside driftloop wins over the config, so it is what gets probed."""
    import typer

    from config.loader import load_project
    from driftloop.preflight import require

    root, _ = down
    proj = load_project(root / "config" / "driftloop.yaml")
    monkeypatch.setenv("PREFECT_API_URL", f"{answering}/api")
    require(proj, "prefect")  # answers: no exit
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    with pytest.raises(typer.Exit) as exited:
        require(proj, "prefect")
    assert exited.value.exit_code == 2
