"""The `approval` config section as the approval code uses it: who may decide on which channel,
how long a request waits, and where a run is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from config.loader import Project


@dataclass(frozen=True)
class ApprovalSettings:
    """The `approval` config section, with defaults until the section exists."""

    approvers: tuple[str, ...] = ()
    channels: tuple[str, ...] = ("slack", "cli", "ui")
    timeout_seconds: int = 24 * 3600
    poll_seconds: float = 2.0
    slack_host: str = "127.0.0.1"
    slack_port: int = 3100

    @classmethod
    def from_project(cls, project: Project) -> ApprovalSettings:
        section = getattr(project.config, "approval", None)
        if section is None:
            return cls()
        return cls(
            approvers=allowed_identities(section),
            channels=tuple(getattr(section, "channels", cls.channels)),
            timeout_seconds=int(getattr(section, "timeout_seconds", cls.timeout_seconds)),
            poll_seconds=float(getattr(section, "poll_seconds", cls.poll_seconds)),
            slack_host=str(getattr(section, "slack_host", cls.slack_host)),
            slack_port=int(getattr(section, "slack_port", cls.slack_port)),
        )


def allowed_identities(section: Any) -> tuple[str, ...]:
    """The allow-list as `channel:identity` entries, from the per-channel config."""
    approvers = getattr(section, "approvers", None)
    if approvers is None:
        return ()
    return tuple(
        f"{channel}:{identity}"
        for channel in ("slack", "cli", "ui")
        for identity in getattr(approvers, channel, [])
    )


def run_url(project: Project, run_id: str | UUID) -> str:
    """The run's page in the Prefect UI."""
    return f"{project.config.endpoints.prefect}/runs/flow-run/{run_id}"
