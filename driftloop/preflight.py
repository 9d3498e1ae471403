"""Before a command talks to the stack: is the service it needs answering?

Without this, a down stack shows as tracebacks, a silent wait of minutes, or a run URL on a
server that is gone. One short health probe per service turns that into one line and exit 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import typer

from config.loader import Project
from driftloop.console import err_console

ALIASES = {"prefect": "prefect-server"}  # the names commands use -> the stack's program names


@dataclass(frozen=True)
class Target:
    label: str  # what the message calls it
    url: str  # what a person would open
    health: str  # answers 200 when it is ready
    hint: str = "start the stack with `driftloop up`"


def require(project: Project, *names: str, url: str | None = None) -> None:
    """Exit 2 with one line naming the first of `names` that does not answer.

    A name is a stack service ("prefect", "pushgateway", "nginx", ...) or "serving": the
    endpoint clients call, `url` when given, else serving.host:serving.port.
    """
    from tasks.stack.services import healthy

    for name in names:
        target = target_for(project, name, url)
        if not healthy(target.health):
            err_console.print(
                f"{target.label} at {target.url} does not answer: {target.hint}",
                highlight=False,
                markup=False,
            )
            raise typer.Exit(2)


def target_for(project: Project, name: str, url: str | None = None) -> Target:
    """Where `name` is and how to probe it: the stack's own health checks, not a second copy."""
    if name == "serving":
        return serving_target(project, url)
    from tasks.stack.services import services

    svc = {s.name: s for s in services(project)}[ALIASES.get(name, name)]
    target = Target(svc.name.replace("-", " "), svc.url, svc.health)
    return prefect_override(target) if svc.name == "prefect-server" else target


def prefect_override(target: Target) -> Target:
    """A PREFECT_API_URL set outside driftloop wins over the config (use_prefect keeps it), so
    probe the server this process's clients will really call."""
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api or api == target.url + "/api":
        return target
    return Target(target.label, api.removesuffix("/api"), api + "/health")


def serving_target(project: Project, url: str | None) -> Target:
    """The endpoint is ready when its bento answers /readyz (through nginx or directly)."""
    serving = project.config.serving
    base = (url or f"http://{serving.host}:{serving.port}").rstrip("/")
    hint = "start the stack with `driftloop up` and release a bento"
    return Target("serving endpoint", base, base + "/readyz", hint)
