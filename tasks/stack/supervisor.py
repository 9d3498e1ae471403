"""supervisord for the local stack: its config (one [program] per service, the serving slots
included from `slots/`), `supervisorctl`, and the state of its programs."""

from __future__ import annotations

import os
import re
import subprocess

from config.loader import Project
from tasks.commands import bin_path, tool_env
from tasks.stack.errors import StackError
from tasks.stack.paths import log_dir, stack_dir, template
from tasks.stack.services import services
from tasks.stack.values import conf_value, env_pair, quote


def supervisord_conf(project: Project) -> str:
    """supervisord.conf: its socket, log and pid file, then one program per service.

    `[include]` takes the serving slots, which come and go as releases roll
    (tasks/release/serving.py); its path is relative to this file, as a path with a space
    would split in two."""
    stack = stack_dir(project)
    v = conf_value
    socket = v(str(stack / "supervisor.sock"), "unix_http_server.file")
    values = {
        "socket": socket,
        "logfile": v(str(log_dir(project) / "supervisord.log"), "supervisord.logfile"),
        "pidfile": v(str(stack / "supervisord.pid"), "supervisord.pidfile"),
        "childlogdir": v(str(log_dir(project)), "supervisord.childlogdir"),
        "directory": v(str(project.root), "supervisord.directory"),
    }
    lines: list[str] = []
    for priority, svc in enumerate(services(project), start=1):
        lines += program_section(project, svc.name, svc.command, svc.env, priority)
    return template("supervisord.conf.tmpl").substitute(values, programs="\n".join(lines))


def program_section(
    project: Project, name: str, command: list[str], env: dict[str, str], priority: int = 100
) -> list[str]:
    """One supervisord [program]: restarted if it dies, stopped with its children, logged.

    Every value comes from config, paths or the environment, and supervisord.conf is an ini
    file: a newline in a value would start a line of its own, `[program:...]` a section that
    runs anything. Such a value (a control character, or ` ;`/` #`, which start a comment) is
    refused with the setting it is in; `%` is doubled (supervisord expands `%(...)s`)."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise StackError(f"supervisord: program name {name!r} is not a plain name")
    env = {"PATH": tool_env()["PATH"], "HOME": os.environ.get("HOME", "/root"), **env}
    where = f"supervisord [program:{name}]"
    log = conf_value(str(log_dir(project) / (name + ".log")), f"{where} stdout_logfile")
    text = template("program.conf.tmpl").substitute(
        name=name,
        command=" ".join(quote(conf_value(part, f"{where} command")) for part in command),
        priority=priority,
        stdout_logfile=log,
        environment=",".join(env_pair(k, v, where) for k, v in env.items()),
    )
    # split at newlines only (no value holds one): str.splitlines would also split at U+2028
    return text.removesuffix("\n").split("\n")


def supervisorctl(project: Project, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    conf = stack_dir(project) / "supervisord.conf"
    done = subprocess.run(
        [bin_path("supervisorctl"), "-c", str(conf), *args],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
    )
    if check and done.returncode not in (0, 3):  # 3: some program not running (status)
        raise StackError(f"supervisorctl {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done


def supervisor_pid(project: Project) -> int | None:
    """The pid of our supervisord if it is alive; None otherwise."""
    pidfile = stack_dir(project) / "supervisord.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def program_states(project: Project) -> dict[str, tuple[str, int | None, str]]:
    """name -> (state, pid, uptime) from `supervisorctl status`."""
    if supervisor_pid(project) is None:
        return {}
    out = supervisorctl(project, "status").stdout
    states = {}
    for line in out.splitlines():
        match = re.match(r"(\S+)\s+([A-Z]+)\s*(.*)", line)
        if not match:
            continue
        name, state, rest = match.groups()
        pid = re.search(r"pid (\d+)", rest)
        uptime = re.search(r"uptime (\S+)", rest)
        states[name] = (
            state,
            int(pid.group(1)) if pid else None,
            uptime.group(1) if uptime else "",
        )
    return states
