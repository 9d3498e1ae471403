"""A fresh copy of the project with its real stack up and the first model serving behind nginx.

The serving, roll-forward and monitor benchmarks measure the loop as a user runs it: a clone,
`driftloop data`, `driftloop train`, `driftloop up`, a bento built and put live. Slack is the
local fake Web API, stamping when each call arrives. The copy and its stack live only as long as
the `with` block; the stack is stopped by `driftloop down`, never by process name.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import ROOT
from tests.fakes.slack_api import FakeSlack
from tests.integration.test_stack import free_endpoints, up
from tests.support import BIN, copy_project, driftloop, edit_config, sh


@dataclass
class TimedSlack(FakeSlack):
    """The local Slack Web API; `arrivals` holds (wall time, method, body) of every call."""

    arrivals: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def _respond(self, method: str, body: dict[str, Any], headers: dict[str, str]):
        self.arrivals.append((time.time(), method, body))
        return super()._respond(method, body, headers)


@dataclass
class Live:
    project: Any  # config.loader.Project of the copy
    slack: TimedSlack
    bento: Any  # tasks.release.package.Bento serving now
    setup_s: dict[str, float]

    @property
    def url(self) -> str:
        serving = self.project.config.serving
        return f"http://{serving.host}:{serving.port}"


def stack_ctl(project: Any, *args: str) -> None:
    """`supervisorctl` on the copy's own supervisord (e.g. stop one program by name)."""
    conf = project.root / ".driftloop/stack/supervisord.conf"
    sh([str(BIN / "supervisorctl"), "-c", str(conf), *args], project.root)


@contextlib.contextmanager
def live_stack(tmp: Path, change: Callable[[dict], None] | None = None) -> Iterator[Live]:
    """The copy with data, a trained model, its stack and the first release serving.

    Prefect and Slack settings go into this process's environment (before Prefect is imported)
    so flows run here talk to the copy's server. The Prefect worker is stopped: nothing the
    benchmark does not start should compete for the two cores.
    """
    setup: dict[str, float] = {}
    started = time.perf_counter()
    root = copy_project(tmp)

    def configure(raw: dict) -> None:
        free_endpoints(raw)
        # the roll-forward's watch judges latency; here latency is what is measured, on a
        # shared machine: a slow second must not abort the run, and a short watch keeps it brief
        raw["serving"]["max_p95_latency_seconds"] = 30
        raw["serving"]["watch_seconds"] = 5
        if change is not None:
            change(raw)

    edit_config(root, configure)
    driftloop(root, "data")
    driftloop(root, "train")
    setup["data_and_train_s"] = time.perf_counter() - started
    slack = TimedSlack().start()
    os.environ.update({"SLACK_BOT_TOKEN": slack.token, "SLACK_API_URL": slack.url})
    try:
        mark = time.perf_counter()
        up(root, env={"SLACK_BOT_TOKEN": slack.token, "SLACK_API_URL": slack.url})
        setup["stack_up_s"] = time.perf_counter() - mark
        from config.loader import load_project
        from driftloop.console import use_prefect

        project = load_project(root / "config/driftloop.yaml")
        use_prefect(project)
        stack_ctl(project, "stop", "prefect-worker")
        from tasks.release.package import build_bento, register_model
        from tasks.release.rollout import go_live

        mark = time.perf_counter()
        bento = build_bento(project, register_model(project))
        go_live(project, bento)
        setup["first_release_s"] = time.perf_counter() - mark
        yield Live(project=project, slack=slack, bento=bento, setup_s=setup)
    finally:
        subprocess.run([str(BIN / "driftloop"), "down"], cwd=root, capture_output=True, check=False)
        slack.stop()


__all__ = ["ROOT", "Live", "TimedSlack", "live_stack", "stack_ctl"]
