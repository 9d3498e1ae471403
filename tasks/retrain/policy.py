"""The retrain policy: a pure decision over recent windows, cooldown and open requests, and the
task that feeds it this model's monitor history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from config.schema import PolicyConfig
from tasks.monitor.history import last_trigger, recent_windows
from tasks.retrain.trigger import open_retrain


@dataclass(frozen=True)
class WindowOutcome:
    """What one monitor window said, as far as the policy cares."""

    dataset_drift: bool
    quality_breached: bool
    usable: bool = True  # bad data is reported, never a reason to retrain
    estimated_breached: bool = False  # the estimate past the limit beyond its band


@dataclass(frozen=True)
class Trigger:
    fire: bool
    reason: str


def is_bad(policy: PolicyConfig, window: WindowOutcome) -> bool:
    return window.usable and (
        ("dataset_drift" in policy.triggers and window.dataset_drift)
        or ("quality" in policy.triggers and window.quality_breached)
        or ("estimated_quality" in policy.triggers and window.estimated_breached)
    )


def decide(
    policy: PolicyConfig,
    history: list[WindowOutcome],
    now: datetime,
    last_trigger_at: datetime | None = None,
    open_request: str | None = None,
) -> Trigger:
    """Fire when the newest `consecutive_windows` usable windows are all bad, unless a retrain is
    already open (running or awaiting approval) or the cooldown has not passed.

    Windows with unusable data (empty, broken schema) neither confirm nor break a streak: they
    are reported on their own and skipped here.
    """
    n = policy.consecutive_windows
    recent = [w for w in history if w.usable][-n:]
    bad = sum(is_bad(policy, w) for w in recent)
    if len(recent) < n or bad < n:
        return Trigger(False, f"{bad} of the last {n} windows bad; {n} in a row trigger")
    if open_request:
        return Trigger(False, f"a retrain is already open ({open_request}); not starting another")
    cooldown = timedelta(seconds=policy.cooldown_seconds)
    if last_trigger_at is not None and now - last_trigger_at < cooldown:
        left = cooldown - (now - last_trigger_at)
        return Trigger(
            False,
            f"cooling down: last retrain {last_trigger_at:%Y-%m-%d %H:%M} UTC, "
            f"{int(left.total_seconds())} s to go",
        )
    reasons = sorted({r for w in recent for r in _reasons(policy, w)})
    return Trigger(True, f"{n} bad windows in a row ({', '.join(reasons)})")


def _reasons(policy: PolicyConfig, window: WindowOutcome) -> list[str]:
    """What made a window bad, among the triggers the policy listens to."""
    named = (
        ("dataset_drift", "dataset drift", window.dataset_drift),
        ("quality", "quality", window.quality_breached),
        ("estimated_quality", "estimated quality", window.estimated_breached),
    )
    return [text for trigger, text, hit in named if hit and trigger in policy.triggers]


@task(cache_policy=NO_CACHE)
def decide_retrain(project: Project) -> Trigger:
    """The policy over this model's saved windows, its last trigger and any open retrain."""
    policy = project.config.policy
    history = [
        WindowOutcome(
            r["dataset_drift"],
            r["quality_breached"],
            r["usable"],
            r.get("estimated_breached", False),
        )
        for r in recent_windows(project, 10 * policy.consecutive_windows)
    ]
    return decide(
        policy,
        history,
        datetime.now(UTC),
        last_trigger_at=last_trigger(project),
        open_request=open_retrain(project),
    )
