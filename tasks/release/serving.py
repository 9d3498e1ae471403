"""Running a bento: a `bentoml serve` process per slot, each with its own BENTOML_HOME.

Two servers sharing one BENTOML_HOME wipe each other's Prometheus directory at start-up, so each
slot gets a home of its own whose `bentos` and `models` link to the shared store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from config.loader import Project
from model.capture import CAPTURE_DIR_ENV, TOKEN_ENV
from model.store import ENDPOINT_ENV, credential_env, is_url
from tasks.capture import server_settings
from tasks.commands import CommandError, bin_path, tool_env
from tasks.release.package import bentoml_home
from tasks.stack.nginx import write_shadow, write_upstream
from tasks.stack.paths import log_dir, stack_dir
from tasks.stack.services import healthy
from tasks.stack.supervisor import program_section, program_states, supervisor_pid, supervisorctl


@dataclass
class Server:
    bento: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def slot_home(project: Project, port: int) -> Path:
    home = project.state_dir / "slots" / str(port)
    home.mkdir(parents=True, exist_ok=True)
    shared = bentoml_home(project)
    for part in ("bentos", "models"):
        (shared / part).mkdir(parents=True, exist_ok=True)
        link = home / part
        if not link.is_symlink():
            link.symlink_to(shared / part, target_is_directory=True)
    return home


def capture_env(project: Project) -> dict[str, str]:
    """A slot's capture settings (`server_settings`), the endpoint falling back to this
    environment's, and the endpoints' bearer token when DRIFTLOOP_CAPTURE_TOKEN is set here
    (secrets only ever from the environment). A store on S3 also gets this environment's AWS
    credentials: supervisord starts its programs without secrets, so a slot has only those its
    own section names."""
    settings = server_settings(project)
    settings[ENDPOINT_ENV] = settings[ENDPOINT_ENV] or os.environ.get(ENDPOINT_ENV, "")
    on_s3 = is_url(project.config.capture.path)
    return {**settings, **token_env(), **(credential_env() if on_s3 else {})}


def token_env() -> dict[str, str]:
    token = os.environ.get(TOKEN_ENV, "").strip()
    return {TOKEN_ENV: token} if token else {}


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_env(project: Project) -> dict[str, str]:
    """Math-library threads per server: more threads than cores only queue (config)."""
    threads = str(project.config.serving.threads)
    return {name: threads for name in THREAD_VARIABLES}


def start_server(project: Project, bento: str, port: int, capture: bool = True) -> Server:
    """Start `bentoml serve` for one bento on one loopback port; returns once it is ready.

    Without `capture` its traffic is never recorded: a development server must not feed the
    monitor's windows."""
    home = slot_home(project, port)
    log = project.state_dir / "logs" / f"bento-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = tool_env(
        {
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            **thread_env(project),
            **(capture_env(project) if capture else {CAPTURE_DIR_ENV: "", **token_env()}),
        }
    )
    with log.open("wb") as out:  # one log per start: old failures must not count
        process = subprocess.Popen(
            [bin_path("bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
            cwd=project.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(bento=bento, port=port, process=process, log=log)
    try:
        wait_ready(server, project.config.serving.ready_timeout_seconds)
    except CommandError:
        stop_server(server)
        raise
    return server


def wait_ready(server: Server, timeout: float) -> None:
    """Poll /readyz until 200, the process dies, or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise CommandError(
                f"bento {server.bento} exited with code {server.process.returncode} before it "
                f"was ready; see {server.log}"
            )
        if _startup_failed(server.log):
            raise CommandError(
                f"bento {server.bento} failed to start (its service raised); see {server.log}"
            )
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise CommandError(
        f"bento {server.bento} on port {server.port} not ready after {timeout:.0f} s; "
        f"see {server.log}"
    )


def _startup_failed(log: Path, since: int = 0) -> bool:
    """BentoML's supervisor restarts a worker whose service raised; its log says so."""
    try:
        return b"Application startup failed" in log.read_bytes()[since:][-20000:]
    except FileNotFoundError:
        return False


def stop_server(server: Server, grace: float = 10) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after `grace` seconds."""
    if server.process.poll() is not None:
        return
    os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(5)


# ---------------------------------------------------------------- slots under the stack


SLOTS = ("blue", "green")


def slot_port(project: Project, slot: str) -> int:
    return project.config.serving.slot_ports[SLOTS.index(slot)]


def slot_url(project: Project, slot: str) -> str:
    return f"http://127.0.0.1:{slot_port(project, slot)}"


def start_slot(
    project: Project, slot: str, bento: str, extra_env: dict[str, str] | None = None
) -> None:
    """Run `bento` in `slot` as a supervisord program of the stack; returns once /readyz is 200.

    On failure the slot is stopped again and the error names the bento, the slot and its log.
    """

    if supervisor_pid(project) is None:
        raise CommandError("the stack is not running; start it with `driftloop up`")
    port = slot_port(project, slot)
    wait_port_free(port, PORT_FREE_SECONDS)  # an old server's workers must not answer for it
    home = slot_home(project, port)
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        **thread_env(project),
        **capture_env(project),
        **(extra_env or {}),
    }
    command = [bin_path("bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)]
    conf = stack_dir(project) / "slots" / f"{slot}.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.touch(mode=0o600)  # it may carry the capture token
    conf.chmod(0o600)
    conf.write_text("\n".join(program_section(project, f"bento-{slot}", command, env)) + "\n")
    log = log_dir(project) / f"bento-{slot}.log"
    offset = log.stat().st_size if log.exists() else 0  # the log is shared across starts
    supervisorctl(project, "update", check=True)  # adds the program and starts it
    deadline = time.monotonic() + project.config.serving.ready_timeout_seconds
    while time.monotonic() < deadline:
        if healthy(f"{slot_url(project, slot)}/readyz"):
            return
        state = program_states(project).get(f"bento-{slot}", ("UNKNOWN",))[0]
        if state == "FATAL" or _startup_failed(log, offset):
            stop_slot(project, slot)
            raise CommandError(f"bento {bento} failed to start in slot {slot}; see {log}")
        time.sleep(0.25)
    stop_slot(project, slot)
    raise CommandError(
        f"bento {bento} in slot {slot} not ready after "
        f"{project.config.serving.ready_timeout_seconds:.0f} s; see {log}"
    )


PORT_FREE_SECONDS = 20.0


def wait_port_free(port: int, seconds: float) -> None:
    """Until nothing listens on 127.0.0.1:`port`; a stopped server's workers may linger."""
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        if time.monotonic() >= deadline:
            raise CommandError(
                f"port {port} is still in use {seconds:.0f} s after its slot stopped; "
                f"find the process with `ss -ltnp 'sport = :{port}'` and stop it"
            )
        time.sleep(0.2)


def stop_slot(project: Project, slot: str) -> None:
    """Remove the slot's program: supervisord stops it (and its workers) and forgets it."""

    conf = stack_dir(project) / "slots" / f"{slot}.conf"
    if conf.exists():
        conf.unlink()
        if supervisor_pid(project) is not None:
            supervisorctl(project, "update", check=True)


def switch_traffic(project: Project, slot: str) -> None:
    """Point nginx at `slot`: new upstream file, `nginx -t`, then a graceful reload (HUP)."""

    reload_nginx(project, write_upstream(project, slot_port(project, slot)))


def switch_shadow(project: Project, port: int | None, secret: str = "") -> None:
    """Mirror live requests to the slot on `port` (None: stop mirroring), checked and reloaded."""
    reload_nginx(project, write_shadow(project, port, secret))


def reload_nginx(project: Project, path: Path) -> None:
    """`nginx -t` on the changed file, then a graceful reload (HUP)."""
    nginx_dir = stack_dir(project) / "nginx"
    test = subprocess.run(
        ["nginx", "-t", "-q", "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    if test.returncode != 0:
        raise CommandError(f"nginx rejected {path}: {test.stderr.strip()}")
    supervisorctl(project, "signal", "HUP", "nginx", check=True)
