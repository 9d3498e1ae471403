"""Run a DVC stage's main with driftloop's error contract: config problems exit 2, no traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from config.loader import ConfigError, Project, load_project


def run_stage(main: Callable[[Project], None]) -> None:
    """Run `main`; once it has written its outputs, leave without interpreter teardown.

    Arrow's thread pools can abort the process while Python tears down ("terminate called
    without an active exception", exit -6), after the outputs are complete; DVC would then
    fail the stage. Every output is closed by the time `main` returns, so nothing is lost.
    """
    try:
        project = load_project()
        main(project)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
