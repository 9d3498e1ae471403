"""The `approval` config section as the approval code uses it: who may decide on which channel,
how long a request waits, what its deadline does, and where a run is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from config.loader import Project
from config.schema import APPROVAL_CHANNELS, ApprovalConfig, Approvers
from tasks.approval.records import OnTimeout


@dataclass(frozen=True)
class ApprovalSettings:
    """The `approval` config section as the approval room reads it (defaults: the schema's)."""

    approvers: tuple[str, ...]
    channels: tuple[str, ...]
    timeout_seconds: int
    poll_seconds: float
    on_timeout: OnTimeout
    remind_every_seconds: int
    grace_seconds: int
    escalate_to: tuple[str, ...]
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
            on_timeout=section.on_timeout,
            remind_every_seconds=section.remind_every_seconds,
            grace_seconds=section.grace_seconds,
            escalate_to=identities(section.escalate_to),
            slack_host=section.slack_host,
            slack_port=section.slack_port,
        )


def allowed_identities(section: ApprovalConfig) -> tuple[str, ...]:
    """The allow-list as `channel:identity` entries, from the per-channel config."""
    return identities(section.approvers)


def identities(per_channel: Approvers) -> tuple[str, ...]:
    """Per-channel identities as `channel:identity` entries."""
    return tuple(
        f"{channel}:{identity}"
        for channel in APPROVAL_CHANNELS
        for identity in getattr(per_channel, channel)
    )


def run_url(project: Project, run_id: str | UUID) -> str:
    """The run's page in the Prefect UI."""
    return f"{project.config.endpoints.prefect}/runs/flow-run/{run_id}"
