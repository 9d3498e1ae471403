"""The environment of the stack's programs, and the secrets in it: Prefect's auth string, what
supervisord itself starts with (no secret), what the worker gets, and the files that hold one."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from config.loader import Project
from tasks.commands import tool_env
from tasks.stack.errors import StackError
from tasks.stack.paths import prefect_auth_file, stack_dir
from tasks.stack.values import env_pair

AUTH_ENV = "PREFECT_API_AUTH_STRING"


def prefect_auth(project: Project) -> str:
    """The Prefect server's auth string: PREFECT_API_AUTH_STRING from the environment, else one
    generated once into `.driftloop/prefect-auth` (mode 0600), `driftloop:<random>`."""
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
        env_pair(key, value)
    except StackError:
        return False
    return True


def write_private(path: Path, text: str) -> None:
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
    write_private(path, url)
    return path
