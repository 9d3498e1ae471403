"""Test helpers: fresh copies of the project, as a clone would be, and tools run in them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool_env() -> dict[str, str]:
    """This venv first on PATH; no Prefect settings leaked from a test fixture, so a project
    copy talks to the Prefect server its own config names."""
    from tasks.commands import tool_env as env

    return {k: v for k, v in env().items() if not k.startswith("PREFECT_")}


def sh(args: list[str], cwd: Path, check: bool = True, timeout: float = 600):
    """Run a command in `cwd` with this venv first on PATH; returns the CompletedProcess."""
    done = subprocess.run(
        args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


SHADOW_SECONDS = 5


def copy_project(dest: Path) -> Path:
    """What a fresh clone holds: tracked (and new, not ignored) files, a new git repo, no state.

    Its config names free loopback ports (private_ports), so nothing a test starts, calls or
    pushes to in the copy reaches a stack running on the default ports. Its shadow stage lasts
    SHADOW_SECONDS instead of a minute: every roll-forward of the suite runs it, and a test of
    the stage itself sets its own."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    config = dest / "config" / "driftloop.yaml"
    raw = yaml.safe_load(config.read_text())
    private_ports(raw)
    raw.setdefault("shadow", {})["seconds"] = SHADOW_SECONDS
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], dest)
    sh(["git", "config", "user.email", "tests@driftloop.local"], dest)
    sh(["git", "config", "user.name", "driftloop tests"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "commit", "-qm", "fresh clone"], dest)
    (dest / ".driftloop" / "dvc-remote").mkdir(parents=True)
    return dest


def edit_config(root: Path, change: Callable[[dict], None], commit: bool = True) -> None:
    """Change config/driftloop.yaml in a project copy (the only file a user edits)."""
    path = root / "config" / "driftloop.yaml"
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    if commit:
        sh(["git", "commit", "-qam", "config change"], root)


def private_ports(raw: dict) -> None:
    """Every endpoint, the serving and slot ports and the Slack app's port moved to free
    loopback ports: a user's own stack holds the defaults (4200, 9091, 9090, 9093, 3000-3002,
    ...)."""
    for name in raw["endpoints"]:
        raw["endpoints"][name] = f"http://127.0.0.1:{free_port()}"
    raw["serving"]["port"] = free_port()
    raw["serving"]["slot_ports"] = [free_port(), free_port()]
    raw["approval"]["slack_port"] = free_port()


def driftloop(root: Path, *args: str, check: bool = True, timeout: float = 600):
    return sh([str(BIN / "driftloop"), *args], root, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_auth(root: Path) -> tuple[str, str]:
    """The basic-auth pair of a project copy's Prefect server (`driftloop up` generated it)."""
    user, _, password = (root / ".driftloop" / "prefect-auth").read_text().strip().partition(":")
    return user, password


def prefect_post(url: str, path: str, body: dict, auth: tuple[str, str] | None) -> httpx.Response:
    """POST to a Prefect API as its own clients do: basic auth, then a CSRF token for a client
    id (the server refuses state-changing requests without one)."""
    client_id = "driftloop-tests"
    token = httpx.get(f"{url}/api/csrf-token", params={"client": client_id}, auth=auth, timeout=10)
    headers = {}
    if token.status_code == 200:
        headers = {"Prefect-Csrf-Token": token.json()["token"], "Prefect-Csrf-Client": client_id}
    return httpx.post(f"{url}{path}", json=body, auth=auth, headers=headers, timeout=30)


def stop_group(process: subprocess.Popen, grace: float = 10) -> None:
    """End a server this test started in its own session: SIGTERM to its process group, SIGKILL
    after `grace` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def wait_answering(url: str, process: subprocess.Popen, timeout: float, what: str) -> None:
    """Until GET `url` answers 200; fail naming `what` if `process` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None, f"{what} exited at start"
        assert time.monotonic() < deadline, f"{what} not ready within {timeout:.0f} s"
        time.sleep(0.2)
