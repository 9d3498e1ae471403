"""The approval audit log and its metric: every decision, refusal, reminder and escalation, one
JSON line each.

`.driftloop/audit/approvals.jsonl` is the record; `driftloop_approvals_total{decision,channel}`
is recounted from it on every push, so a Pushgateway that is down loses nothing. What the
deadline did is counted under channel `timeout`: `reject` (closed with no decision), `reminded`
and `escalated`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections import Counter as Tally
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from config.loader import Project
from tasks.approval.records import AuditEntry, utc_now
from tasks.metrics import PublishError, push

log = logging.getLogger("driftloop.approval")

APPROVAL_JOB = "driftloop_approvals"


def audit_path(project: Project) -> Path:
    return project.state_dir / "audit" / "approvals.jsonl"


def append_audit(project: Project, entry: AuditEntry) -> None:
    """Append one line (locked, flushed to disk), then recount and push the metric."""
    path = audit_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = entry.model_dump_json() + "\n"
    with path.open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
            with contextlib.suppress(OSError):
                os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    publish_approval_metrics(project)


def read_audit(project: Project, run_id: str | None = None) -> list[AuditEntry]:
    """The log's entries (of one run when `run_id` is given), oldest first."""
    path = audit_path(project)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            entry = AuditEntry.model_validate_json(line)
        except ValueError:
            log.warning("skipping an unreadable audit line in %s", path)
            continue
        if run_id is None or entry.run_id == run_id:
            entries.append(entry)
    return entries


def approval_counts(project: Project) -> dict[tuple[str, str], int]:
    """(decision, channel) -> count, from the audit log; refusals count as decision 'refused',
    reminders and escalations as 'reminded' and 'escalated' on channel 'timeout'."""
    tally: Tally[tuple[str, str]] = Tally()
    for entry in read_audit(project):
        if entry.event == "refusal":
            tally[("refused", entry.channel or "none")] += 1
        else:
            tally[(entry.decision, entry.channel or "none")] += 1
    return dict(tally)


def approvals_registry(project: Project) -> CollectorRegistry:
    registry = CollectorRegistry()
    total = Counter(
        "driftloop_approvals",
        "Approval decisions, refusals, reminders and escalations, by decision and channel",
        ("decision", "channel"),
        registry=registry,
    )
    for (decision, channel), count in approval_counts(project).items():
        total.labels(decision, channel).inc(count)
    return registry


def publish_approval_metrics(project: Project) -> bool:
    """Push the recount; a Pushgateway that is down is logged, the next push catches up."""
    try:
        push(project, APPROVAL_JOB, approvals_registry(project), replace=True)
    except PublishError as exc:
        log.warning("approval metrics not pushed (kept in the audit log): %s", exc)
        return False
    return True


def record_refusal(
    project: Project,
    run_id: str,
    decision: str,
    approver: str | None,
    channel: str | None,
    evidence_hash: str | None,
    reason: str,
    comment: str = "",
) -> None:
    """Log and audit a submission that could not decide."""
    log.warning(
        "refused %s by %s via %s for run %s: %s", decision, approver, channel, run_id, reason
    )
    append_audit(
        project,
        AuditEntry(
            at=utc_now(),
            event="refusal",
            decision=decision,
            approver=approver,
            channel=channel,
            run_id=run_id,
            evidence_hash=evidence_hash,
            comment=comment,
            reason=reason,
        ),
    )


async def arecord_refusal(*args: Any) -> None:
    """`record_refusal` off the event loop: its push must not stall a Slack acknowledgement."""
    await asyncio.to_thread(record_refusal, *args)
