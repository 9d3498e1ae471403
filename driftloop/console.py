"""Shared pieces of the front door: the --config option, loading, and error rendering."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from config.loader import ENV_VAR, ConfigError, Project, load_project
from tasks.commands import CommandError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # errors stay one greppable line

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=ENV_VAR,
        help="Path to driftloop.yaml (default: config/driftloop.yaml).",
        show_default=False,
    ),
]


def key_values(rows: Iterable[tuple[str, str]], sep: str = ":") -> Table:
    """'key: value' lines, values aligned: they read at 80 columns where a bordered table of
    long ids squeezes every cell; a value folds only when it is longer than the line."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key + sep, Text(value))  # Text: brackets in a value are not markup
    return grid


@contextmanager
def failures() -> Iterator[None]:
    """Turn known failures into one clear message: exit 2 for config, 1 for a failed step."""
    try:
        yield
    except ConfigError as exc:
        err_console.print(f"[bold red]config error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except CommandError as exc:
        err_console.print(f"[bold red]failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


def project(config: Path | None) -> Project:
    """The loaded config; also points Prefect at the stack's server before anything imports it."""
    with failures():
        proj = load_project(config)
    use_prefect(proj)
    return proj


def use_prefect(proj: Project) -> None:
    """Point this process at the stack's Prefect server (unless PREFECT_API_URL is set).

    Must run before Prefect is imported: its settings are read at import. Ephemeral mode is
    off even against an exported setting: a driftloop command never starts a server of its own.
    """
    import os

    from tasks.stack.secrets import prefect_env

    env = prefect_env(proj)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    os.environ[EPHEMERAL] = env[EPHEMERAL]


EPHEMERAL = "PREFECT_SERVER_EPHEMERAL_ENABLED"
