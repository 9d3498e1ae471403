"""The local stack's life: render its configs, start it under supervisord and wait for every
service's health with a deadline, reload, stop, report status.

supervisord does the supervising; this module only writes its config, runs the checks that
would make a start fail, and waits.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from config.loader import Project
from tasks.commands import bin_path, tool_env
from tasks.render.prefect_yaml import prefect_yaml
from tasks.render.runtime import write_runtime
from tasks.stack.errors import StackError
from tasks.stack.nginx import render_nginx
from tasks.stack.paths import log_dir, reports_dir, stack_dir
from tasks.stack.preflight import check_binaries, check_configs, check_ports
from tasks.stack.secrets import prefect_env, slack_webhook_file, supervisor_env, write_private
from tasks.stack.services import Service, ServiceStatus, healthy, services
from tasks.stack.supervisor import program_states, supervisor_pid, supervisorctl, supervisord_conf
from tasks.stack.values import one_line


def render(project: Project) -> Path:
    """Write every config the stack runs with under .driftloop/stack; returns supervisord.conf."""
    stack = stack_dir(project)
    for what, path in (
        ("the project's path", project.root),
        ("the state directory", project.state_dir),
        ("the config file's path", project.path),
    ):
        one_line(str(path), what)
    for sub in ("nginx", "secrets", "slots"):
        (stack / sub).mkdir(parents=True, exist_ok=True)
    (stack / "secrets").chmod(0o700)
    log_dir(project).mkdir(parents=True, exist_ok=True)
    for sub in ("prometheus", "alertmanager", "pushgateway", "prefect", "reports"):
        (project.state_dir / sub).mkdir(parents=True, exist_ok=True)
    reports_dir(project).chmod(0o755)  # nginx's unprivileged worker reads the reports
    write_runtime(project, stack, slack_webhook_file(project))
    render_nginx(project)
    conf = stack / "supervisord.conf"
    write_private(conf, supervisord_conf(project))  # it holds the programs' secrets
    return conf


def up(project: Project, progress: Callable[[str], None] = lambda _: None) -> list[ServiceStatus]:
    """Start (or complete) the stack and wait until every service answers its health check."""
    check_binaries(project)
    already = supervisor_pid(project) is not None
    running = {n for n, (s, _, _) in program_states(project).items() if s == "RUNNING"}
    check_ports(project, running)
    conf = render(project)
    check_configs(project)
    try:
        if already:
            progress("supervisord already running: applying config")
            supervisorctl(project, "update", check=True)
            supervisorctl(project, "start", "all")
            reload_configs(project)
        else:
            progress("starting supervisord")
            subprocess.run(
                [bin_path("supervisord"), "-c", str(conf)],
                check=True,
                env=supervisor_env(),  # no secrets: its programs inherit this (see there)
                capture_output=True,
                text=True,
            )
        for svc in services(project):
            progress(f"waiting for {svc.name} ({svc.health})")
            wait_healthy(project, svc)
            if svc.name == "prefect-server":
                ensure_work_pool(project)
        progress("registering the Prefect deployments")
        register_deployments(project)
    except (StackError, subprocess.CalledProcessError) as exc:
        if not already:
            down(project)  # nothing half-started is left running
        if isinstance(exc, subprocess.CalledProcessError):
            raise StackError(f"supervisord failed to start: {exc.stderr or exc.stdout}") from None
        raise
    return status(project)


def reload_configs(project: Project) -> None:
    """Running Prometheus/Alertmanager/nginx pick up re-rendered files without a restart."""
    ep = project.config.endpoints
    for url in (ep.prometheus + "/-/reload", ep.alertmanager + "/-/reload"):
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(url, timeout=10)
    supervisorctl(project, "signal", "HUP", "nginx")


def wait_healthy(project: Project, svc: Service) -> None:
    deadline = time.monotonic() + project.config.stack.ready_timeout_seconds
    log = log_dir(project) / f"{svc.name}.log"
    while time.monotonic() < deadline:
        if healthy(svc.health):
            return
        state = program_states(project).get(svc.name, ("UNKNOWN", None, ""))[0]
        if state == "FATAL":  # supervisord gave up after its retries
            raise StackError(f"{svc.name}: exited and will not restart; see {log}:\n{_tail(log)}")
        time.sleep(0.5)
    raise StackError(
        f"{svc.name}: not healthy at {svc.health} after "
        f"{project.config.stack.ready_timeout_seconds:.0f} s; see {log}:\n{_tail(log)}"
    )


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "  (no log yet)"
    return "\n".join("  " + line for line in text[-lines:])


def ensure_work_pool(project: Project) -> None:
    """The process work pool the worker polls and deployments target; created if missing."""
    pool = project.config.stack.work_pool
    env = tool_env(prefect_env(project))
    prefect = bin_path("prefect")
    inspect = subprocess.run(
        [prefect, "work-pool", "inspect", pool], capture_output=True, text=True, env=env
    )
    if inspect.returncode == 0:
        return
    created = subprocess.run(
        [prefect, "--no-prompt", "work-pool", "create", pool, "--type", "process"],
        capture_output=True,
        text=True,
        env=env,
    )
    if created.returncode != 0 and "already exists" not in created.stdout + created.stderr:
        raise StackError(f"prefect-worker: cannot create work pool {pool!r}: {created.stdout}")


def register_deployments(project: Project) -> None:
    """`prefect deploy --all` from a prefect.yaml rendered from config into the stack dir."""
    spec = prefect_yaml(project)
    if not spec["deployments"]:
        return
    path = stack_dir(project) / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = tool_env({**prefect_env(project), "DRIFTLOOP_ROOT": str(project.root)})
    done = subprocess.run(
        [bin_path("prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(path)],
        cwd=project.root,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
        raise StackError(f"prefect-server: registering deployments from {path} failed:\n{tail}")


def down(project: Project, timeout: float = 60) -> bool:
    """Stop supervisord and everything it started; True if something was running."""
    pid = supervisor_pid(project)
    if pid is None:
        return False
    supervisorctl(project, "shutdown")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    raise StackError(f"supervisord (pid {pid}) did not stop within {timeout:.0f} s")


def status(project: Project) -> list[ServiceStatus]:
    states = program_states(project)
    rows = []
    for svc in services(project):
        state, pid, uptime = states.get(svc.name, ("STOPPED", None, ""))
        rows.append(
            ServiceStatus(
                name=svc.name,
                url=svc.url,
                state=state,
                pid=pid,
                uptime=uptime,
                healthy=state == "RUNNING" and healthy(svc.health),
            )
        )
    return rows
