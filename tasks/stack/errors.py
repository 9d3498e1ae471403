"""The one error the local stack raises, so callers and the CLI can tell it from others."""

from __future__ import annotations

from tasks.commands import CommandError


class StackError(CommandError):
    """A service could not start; the message names it, the reason and its log."""
