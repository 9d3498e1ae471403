"""Run a DVC stage's main with driftloop's error contract: config problems exit 2, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from config.loader import ConfigError, Project, load_project


def run_stage(main: Callable[[Project], None]) -> None:
    try:
        project = load_project()
        main(project)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
