"""The `approval` config section as the approval code uses it: who may decide on which channel,
how long a request waits, and where a run is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from config.loader import Project
from config.schema import APPROVAL_CHANNELS, ApprovalConfig


@dataclass(frozen=True)
class ApprovalSettings:
    """The `approval` config section as the approval room reads it (defaults: the schema's)."""

    approvers: tuple[str, ...]
    channels: tuple[str, ...]
    timeout_seconds: int
    poll_seconds: float
    slack_host: str
    slack_port: int

    @classmethod
    def from_project(cls, project: Project) -> ApprovalSettings:
        section = project.config.approval
        return cls(
            approvers=allowed_identities(section),
            channels=tuple(section.channels),
            timeout_seconds=section.timeout_seconds,
            poll_seconds=section.poll_seconds,
            slack_host=section.slack_host,
            slack_port=section.slack_port,
        )


def allowed_identities(section: ApprovalConfig) -> tuple[str, ...]:
    """The allow-list as `channel:identity` entries, from the per-channel config."""
    return tuple(
        f"{channel}:{identity}"
        for channel in APPROVAL_CHANNELS
        for identity in getattr(section.approvers, channel)
    )


def run_url(project: Project, run_id: str | UUID) -> str:
    """The run's page in the Prefect UI."""
    return f"{project.config.endpoints.prefect}/runs/flow-run/{run_id}"
