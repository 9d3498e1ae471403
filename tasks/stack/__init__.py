"""The local stack under supervisord: Prefect server and worker, Pushgateway, Prometheus,
Alertmanager and nginx, each on the port config names, each with a health check and a log.

supervisord does the supervising; this module only renders its config, checks what would make
a start fail (missing binary, busy port, invalid config) and waits for health with a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from config.loader import Project
from tasks.commands import CommandError, bin_path, tool_env


class StackError(CommandError):
    """A service could not start; the message names it, the reason and its log."""


@dataclass(frozen=True)
class Service:
    name: str
    url: str  # what a person opens
    health: str  # answers 200 when the service is ready
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    binary: str = ""
    apt_package: str = ""

    @property
    def port(self) -> int:
        return int(urlsplit(self.health).port)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    state: str
    pid: int | None
    uptime: str
    healthy: bool


def stack_dir(project: Project) -> Path:
    return project.state_dir / "stack"


def reports_dir(project: Project) -> Path:
    return project.state_dir / "reports"


def log_dir(project: Project) -> Path:
    return project.state_dir / "logs"


AUTH_ENV = "PREFECT_API_AUTH_STRING"


def prefect_auth_file(project: Project) -> Path:
    return project.state_dir / "prefect-auth"


def prefect_auth(project: Project) -> str:
    """The Prefect server's auth string: PREFECT_API_AUTH_STRING from the environment, else one
    generated once into `.driftloop/prefect-auth` (mode 0600), `driftloop:<random>`."""
    import os
    import secrets

    if os.environ.get(AUTH_ENV):
        return os.environ[AUTH_ENV]
    path = prefect_auth_file(project)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: processes racing to create it agree on the first one's string
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(f"driftloop:{secrets.token_urlsafe(24)}")
    return path.read_text().strip()


def prefect_server_env(project: Project) -> dict[str, str]:
    """The server's own protection: the auth string, CSRF tokens, CORS for its own UI only."""
    return {
        "PREFECT_SERVER_API_AUTH_STRING": prefect_auth(project),
        "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": project.config.endpoints.prefect,
    }


def prefect_env(project: Project) -> dict[str, str]:
    """Prefect settings for every process of the loop: this server, SQLite under .driftloop/,
    and the server's auth string (every client sends it)."""
    return {
        "PREFECT_HOME": str(project.state_dir / "prefect"),
        "PREFECT_API_URL": project.config.endpoints.prefect + "/api",
        AUTH_ENV: prefect_auth(project),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # no temporary server of Prefect's own (its default profile allows one; older name
        # PREFECT_SERVER_ALLOW_EPHEMERAL_MODE): a client without this server fails at once
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "driftloop",  # notices logged without Slack show in runs
        "PREFECT_UI_API_URL": project.config.endpoints.prefect + "/api",
        "DO_NOT_TRACK": "1",
    }


def services(project: Project) -> list[Service]:
    ep = project.config.endpoints
    stack, state = stack_dir(project), project.state_dir
    prefect_url = urlsplit(ep.prefect)
    worker_url = urlsplit(ep.worker)
    nginx_url = f"http://{project.config.serving.host}:{project.config.serving.port}"
    return [
        Service(
            "prefect-server",
            ep.prefect,
            ep.prefect + "/api/health",
            [
                bin_path("prefect"),
                "server",
                "start",
                "--host",
                prefect_url.hostname,
                "--port",
                str(prefect_url.port),
                "--analytics-off",
            ],
            env={**prefect_env(project), **prefect_server_env(project)},
            binary=bin_path("prefect"),
        ),
        Service(
            "prefect-worker",
            f"{ep.prefect}/work-pools/work-pool/{project.config.stack.work_pool}",
            ep.worker + "/health",
            [
                bin_path("prefect"),
                "worker",
                "start",
                "--pool",
                project.config.stack.work_pool,
                "--type",
                "process",
                "--name",
                f"{project.config.project.name}-local",
                "--with-healthcheck",
            ],
            env={
                **prefect_env(project),
                "PREFECT_WORKER_QUERY_SECONDS": str(project.config.stack.worker_poll_seconds),
                "PREFECT_WORKER_WEBSERVER_HOST": worker_url.hostname,
                "PREFECT_WORKER_WEBSERVER_PORT": str(worker_url.port),
                "DRIFTLOOP_ROOT": str(project.root),
                "DRIFTLOOP_CONFIG": str(project.path),
                "BENTOML_HOME": str(project.state_dir / "bentoml"),
                "BENTOML_DO_NOT_TRACK": "true",
                **worker_secrets(),
            },
            binary=bin_path("prefect"),
        ),
        Service(
            "pushgateway",
            ep.pushgateway,
            ep.pushgateway + "/-/ready",
            [
                "prometheus-pushgateway",
                f"--web.listen-address={_hostport(ep.pushgateway)}",
                f"--persistence.file={state / 'pushgateway' / 'metrics.db'}",
                "--persistence.interval=30s",
            ],
            binary="prometheus-pushgateway",
            apt_package="prometheus-pushgateway",
        ),
        Service(
            "prometheus",
            ep.prometheus,
            ep.prometheus + "/-/ready",
            [
                "prometheus",
                f"--config.file={stack / 'prometheus.yml'}",
                f"--storage.tsdb.path={state / 'prometheus'}",
                f"--web.listen-address={_hostport(ep.prometheus)}",
                f"--web.external-url={ep.prometheus}",
                "--web.enable-lifecycle",
            ],
            binary="prometheus",
            apt_package="prometheus",
        ),
        Service(
            "alertmanager",
            ep.alertmanager,
            ep.alertmanager + "/-/ready",
            [
                "prometheus-alertmanager",
                f"--config.file={stack / 'alertmanager.yml'}",
                f"--storage.path={state / 'alertmanager'}",
                f"--web.listen-address={_hostport(ep.alertmanager)}",
                f"--web.external-url={ep.alertmanager}",
                "--cluster.listen-address=",
            ],
            binary="prometheus-alertmanager",
            apt_package="prometheus-alertmanager",
        ),
        Service(
            "nginx",
            nginx_url,
            nginx_url + "/nginx-health",
            [
                "nginx",
                "-p",
                str(stack / "nginx"),
                "-c",
                str(stack / "nginx" / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            binary="nginx",
            apt_package="nginx",
        ),
    ]


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


# ---------------------------------------------------------------- secrets in the environment

# Names of variables that carry a secret: Slack's tokens, the Prefect auth string, the decision
# key, and anything named like a credential (a DVC remote's keys, the capture token, ...).
SECRET_ENV = re.compile(
    r"^SLACK_|^DRIFTLOOP_DECISION_KEY$|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH_STRING"
    r"|API_KEY|ACCESS_KEY|PRIVATE_KEY",
    re.IGNORECASE,
)


def is_secret(name: str) -> bool:
    return bool(SECRET_ENV.search(name))


def supervisor_env() -> dict[str, str]:
    """The environment supervisord starts with: the caller's, less every secret.

    supervisord hands its own environment to every program it starts, and a program's
    `environment=` only adds to it; so secrets exported for `driftloop up` would reach nginx,
    Prometheus, the Pushgateway, Alertmanager and the bento servers, none of which needs one.
    supervisord therefore starts without them, and each program gets the secrets it needs
    explicitly in its own section: the Prefect server its auth string, the worker (whose flows
    post to Slack, seal decisions, start slots and pull data) those of `worker_secrets`. They are
    then written in supervisord.conf, which is why that file is 0600."""
    return {k: v for k, v in tool_env().items() if not is_secret(k)}


def worker_secrets() -> dict[str, str]:
    """The secrets of this environment that the worker's flows may use, for its program section.

    A value that cannot stand on one line of supervisord.conf (a newline in it, say a PEM key)
    is left out: export a path to a file holding it instead."""
    return {
        k: v
        for k, v in os.environ.items()
        if is_secret(k) and k != AUTH_ENV and _env_safe(k, v)  # AUTH_ENV: from prefect_env
    }


def _env_safe(key: str, value: str) -> bool:
    try:
        _env_pair(key, value)
    except StackError:
        return False
    return True


# ---------------------------------------------------------------- rendering


def render(project: Project) -> Path:
    """Write every config the stack runs with under .driftloop/stack; returns supervisord.conf."""
    from tasks.render import write_runtime

    stack = stack_dir(project)
    for what, path in (
        ("the project's path", project.root),
        ("the state directory", project.state_dir),
        ("the config file's path", project.path),
    ):
        _one_line(str(path), what)
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
    _write_private(conf, supervisord_conf(project))  # it holds the programs' secrets
    return conf


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` as mode 0600, whatever mode an older file had."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # O_CREAT's mode applies to new files only
        out.write(text)


def slack_webhook_file(project: Project) -> Path | None:
    """Alertmanager reads the webhook from a 0600 file written from the environment, never git."""
    url = os.environ.get("SLACK_WEBHOOK_URL", "").strip()
    path = stack_dir(project) / "secrets" / "slack_webhook_url"
    if not url:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, url)
    return path


# What a report page may do in the browser. Evidently's report is one file whose script, styles
# and font are inline: it needs inline script and style, data: fonts and images, and nothing from
# the network. `sandbox` without allow-same-origin gives the page an opaque origin: a script that
# runs anyway reads no cookie and cannot call another origin (the Prefect API) as the user;
# connect-src 'none' keeps it from sending anything out.
REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; connect-src 'none'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
NGINX_USER = ("nobody", ("nogroup", "nobody"))  # exist on Debian and most distributions


def nginx_user(project: Project) -> tuple[str | None, str]:
    """The `user` directive for nginx's workers, and a note for the rendered file.

    Only a master running as root can switch users; as root, the workers drop to `nobody`.
    They must reach the reports and nginx's temp directories: if a directory above them lets
    no other user through (a checkout under a 0700 home or temp directory), they stay root,
    and the note says which directory to open (`chmod o+x`) or to move the project out of."""
    import grp
    import pwd

    if os.geteuid() != 0:
        return None, ""
    name, groups = NGINX_USER
    try:
        uid = pwd.getpwnam(name).pw_uid
        group = next(g for g in groups if _group_exists(grp, g))
    except (KeyError, StopIteration):
        return "root", f"workers run as root: no user {name!r} on this machine"
    gid = grp.getgrnam(group).gr_gid
    nginx = stack_dir(project) / "nginx"
    for path in (reports_dir(project), nginx / "temp"):
        blocked = _blocked(path, uid, gid)
        if blocked is not None:
            note = (
                f"workers run as root: {name} cannot pass {blocked} on the way to {path}; "
                f"`chmod o+x {blocked}`, or a project elsewhere, lets them drop to {name}"
            )
            logging.getLogger("driftloop").warning("nginx: %s", note)
            return "root", note
    return f"{name} {group}", f"workers run as {name}"


def _group_exists(grp, name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _blocked(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory from / down to `path` that the user cannot search (None: all can)."""
    import stat

    for directory in [*reversed(path.parents), path]:
        mode = directory.stat()
        if mode.st_uid == uid:
            bit = stat.S_IXUSR
        elif mode.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            return directory
    return None


def _nginx_path(path: Path) -> str:
    """A path as a quoted nginx string; refused if it holds what nginx would read otherwise."""
    value = _one_line(str(path), "a path in nginx.conf")
    if re.search(r'["\\$]', value):
        raise StackError(f'nginx: the path {value!r} holds ", \\ or $; move the project')
    return f'"{value}"'


def render_nginx(project: Project) -> None:
    """nginx in front of the serving slots; the upstream lives in its own file for swaps.

    The reports server sends only files (no listing, no symlinks) with headers that keep a
    report's page from running anything but the report (REPORT_CSP)."""
    nginx = stack_dir(project) / "nginx"
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (nginx / "temp" / temp).mkdir(parents=True, exist_ok=True)
    upstream = nginx / "upstream.conf"
    if not upstream.exists():  # a later swap rewrites it; `up` must not undo a swap
        write_upstream(project, project.config.serving.slot_ports[0])
    serving = project.config.serving
    user, note = nginx_user(project)
    q = _nginx_path
    (nginx / "nginx.conf").write_text(
        f"""# rendered by driftloop from config/driftloop.yaml (serving.*); do not edit
# {note or "workers run as the user who ran `driftloop up`"}
{f"user {user};" if user else ""}
worker_processes 1;
pid {q(nginx / "nginx.pid")};
error_log {q(log_dir(project) / "nginx-error.log")} warn;
events {{ worker_connections 1024; }}
http {{
    server_tokens off;
    access_log {q(log_dir(project) / "nginx-access.log")};
    client_body_temp_path {q(nginx / "temp/client_body")};
    proxy_temp_path {q(nginx / "temp/proxy")};
    fastcgi_temp_path {q(nginx / "temp/fastcgi")};
    uwsgi_temp_path {q(nginx / "temp/uwsgi")};
    scgi_temp_path {q(nginx / "temp/scgi")};
    include {q(upstream)};
    server {{  # Evidently HTML reports, linked from Slack notices and Prefect artifacts
        listen {_hostport(project.config.endpoints.reports)};
        root {q(reports_dir(project))};
        autoindex off;
        disable_symlinks on from=$document_root;
        add_header Content-Security-Policy "{REPORT_CSP}" always;
        add_header X-Content-Type-Options nosniff always;
        add_header Referrer-Policy no-referrer always;
        add_header X-Frame-Options DENY always;
        location = /nginx-health {{ access_log off; return 200 "ok\\n"; }}
        location / {{ limit_except GET {{ deny all; }} }}
    }}
    server {{
        listen {serving.host}:{serving.port};
        location = /nginx-health {{ access_log off; return 200 "ok\\n"; }}
        location / {{
            proxy_pass http://bento_active;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Request-ID $request_id;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""
    )


def upstream_port(project: Project) -> int | None:
    """The slot port nginx sends clients to now (None before the first `up`)."""
    path = stack_dir(project) / "nginx" / "upstream.conf"
    match = re.search(r"server 127\.0\.0\.1:(\d+);", path.read_text()) if path.exists() else None
    return int(match.group(1)) if match else None


def write_upstream(project: Project, port: int) -> Path:
    path = stack_dir(project) / "nginx" / "upstream.conf"
    tmp = path.with_suffix(".new")
    tmp.write_text(f"upstream bento_active {{ server 127.0.0.1:{port}; keepalive 32; }}\n")
    tmp.replace(path)  # atomic: nginx never reads half a file
    return path


def supervisord_conf(project: Project) -> str:
    stack = stack_dir(project)
    v = _conf_value
    lines = [
        "; rendered by driftloop from config/driftloop.yaml; do not edit",
        "[unix_http_server]",
        f"file={v(str(stack / 'supervisor.sock'), 'unix_http_server.file')}",
        "chmod=0700",
        "[supervisord]",
        f"logfile={v(str(log_dir(project) / 'supervisord.log'), 'supervisord.logfile')}",
        f"pidfile={v(str(stack / 'supervisord.pid'), 'supervisord.pidfile')}",
        f"childlogdir={v(str(log_dir(project)), 'supervisord.childlogdir')}",
        f"directory={v(str(project.root), 'supervisord.directory')}",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]",
        f"serverurl=unix://{v(str(stack / 'supervisor.sock'), 'supervisorctl.serverurl')}",
        "[include]",  # the serving slots come and go as releases roll (tasks/release/serving.py)
        "files=slots/*.conf",  # relative to this file: a path with a space splits in two
    ]
    for priority, svc in enumerate(services(project), start=1):
        lines += program_section(project, svc.name, svc.command, svc.env, priority)
    return "\n".join(lines) + "\n"


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
    log = _conf_value(str(log_dir(project) / (name + ".log")), f"{where} stdout_logfile")
    return [
        f"[program:{name}]",
        "command=" + " ".join(_quote(_conf_value(part, f"{where} command")) for part in command),
        f"priority={priority}",
        "autostart=true",
        "autorestart=true",
        "startsecs=2",
        "startretries=5",
        "stopasgroup=true",
        "killasgroup=true",
        "stopwaitsecs=15",
        "redirect_stderr=true",
        f"stdout_logfile={log}",
        "stdout_logfile_maxbytes=10MB",
        "stdout_logfile_backups=2",
        "environment=" + ",".join(_env_pair(k, v, where) for k, v in env.items()),
    ]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _one_line(value: str, what: str) -> str:
    """`value` if it holds no control character (newline, carriage return, tab, ...)."""
    if _CONTROL.search(value):
        raise StackError(
            f"{what}: {value!r} holds a control character (a newline, say); each setting of the "
            "stack's config files is one line: fix the value in the config, path or environment"
        )
    return value


def _conf_value(value: str, what: str) -> str:
    """A value for one line of supervisord.conf: one line, no comment, `%` as `%%`."""
    _one_line(value, what)
    if re.search(r"\s[;#]", value):
        raise StackError(
            f"{what}: {value!r} holds a space before ; or #, which starts a comment in "
            "supervisord.conf; fix the value in the config, path or environment"
        )
    return value.replace("%", "%%")


def _quote(part: str) -> str:
    """One argument of `command=`, which supervisord splits as a POSIX shell would."""
    if re.fullmatch(r"[\w@%+=:,./-]+", part):
        return part
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _env_pair(key: str, value: str, where: str = "supervisord environment") -> str:
    """`KEY="value"` for `environment=`. supervisord's parser keeps a quoted value as it is, with
    no escapes, and strips quotes at its ends: a value with both quote kinds, or one that starts
    or ends with a quote, cannot be written and is refused."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise StackError(f"{where}: {key!r} is not a variable name")
    value = _conf_value(value, f"{where} environment {key}")
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        raise StackError(f"{where}: the value of {key} starts or ends with a quote")
    quote = '"' if '"' not in value else "'"
    if quote in value:
        raise StackError(f"{where}: the value of {key} holds both kinds of quote")
    return f"{key}={quote}{value}{quote}"


# ---------------------------------------------------------------- preflight


def check_binaries(project: Project) -> None:
    for svc in services(project):
        if not (shutil.which(svc.binary) or Path(svc.binary).exists()):
            package = svc.apt_package or "the Python dependencies"
            raise StackError(
                f"{svc.name}: binary `{svc.binary}` not found; run `make setup` "
                f"(installs {package})"
            )


def check_ports(project: Project, running: set[str]) -> None:
    """Every port a stopped service needs must be free (ours that already run are fine)."""
    for svc in services(project):
        if svc.name in running:
            continue
        host = urlsplit(svc.health).hostname
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, svc.port))
            except OSError:
                raise StackError(
                    f"{svc.name}: port {svc.port} on {host} is in use by another process; "
                    f"stop it or change that port in {project.path.name}"
                ) from None


def check_configs(project: Project) -> None:
    """promtool, amtool and nginx -t on the rendered files: a bad file never starts."""
    stack = stack_dir(project)
    checks = [
        (
            "prometheus",
            ["promtool", "check", "config", str(stack / "prometheus.yml")],
            stack / "prometheus.yml",
        ),
        (
            "alertmanager",
            ["amtool", "check-config", str(stack / "alertmanager.yml")],
            stack / "alertmanager.yml",
        ),
        (
            "nginx",
            [
                "nginx",
                "-t",
                "-q",
                "-p",
                str(stack / "nginx"),
                "-c",
                str(stack / "nginx" / "nginx.conf"),
            ],
            stack / "nginx" / "nginx.conf",
        ),
    ]
    for name, args, path in checks:
        done = subprocess.run(args, capture_output=True, text=True, env=tool_env())
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise StackError(f"{name}: config invalid ({path}):\n  " + "\n  ".join(detail))


# ---------------------------------------------------------------- control


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


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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
    import yaml

    from tasks.render import prefect_yaml

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
