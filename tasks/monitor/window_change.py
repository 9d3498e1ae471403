"""Each window against the previous usable one, beside the comparison with the reference.

Drift against the training data says the world moved since the model learnt it; a window that
differs from the one just before says something broke or changed suddenly (an upstream release,
a unit change, a feed stuck on one value). The comparison uses the same engine, per-column
methods and thresholds as the one with the reference (`drift_stats.drift_table` with the same
`ColumnJob`s), so the two verdicts read the same way.

Every usable window's profile is saved under the state dir, keyed by its monitor run id; only
the newest `PROFILES_KEPT` stay (a profile holds the window's sorted values, so it is not small).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from tasks.monitor.drift_stats import ColumnJob, DriftStat, FrameProfile, Kind, drift_table
from tasks.monitor.history import history_dir, recent_windows
from tasks.monitor.outcome import window_text
from tasks.monitor.results import CheckResult, ColumnDrift, WindowChange

PROFILES_KEPT = 3
log = logging.getLogger("driftloop.monitor")


@dataclass(frozen=True)
class PreviousWindow:
    """The newest usable window whose profile is saved: what this window is compared with."""

    run_id: str
    window: str  # e.g. "2011-05-01 00:00 to 2011-06-01 00:00 UTC"
    profile: FrameProfile


def profiles_dir(project: Project) -> Path:
    return history_dir(project) / "window-profiles"


def profile_path(project: Project, run_id: str) -> Path:
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise ValueError(f"monitor run id {run_id!r} cannot name a profile file")
    return profiles_dir(project) / f"{run_id}.pkl"


def save_window_profile(
    project: Project, run_id: str, profile: FrameProfile, keep: int = PROFILES_KEPT
) -> Path:
    """Save this run's window profile, then drop all but the newest `keep`."""
    profile.key = run_id
    path = profile.save(profile_path(project, run_id))
    others = [p for p in profiles_dir(project).glob("*.pkl") if p != path]
    others.sort(key=lambda p: p.stat().st_mtime_ns)
    newest = others[-1].stat().st_mtime_ns if others else 0
    if path.stat().st_mtime_ns <= newest:  # a coarse clock: this one is still the newest
        os.utime(path, ns=(newest + 1, newest + 1))
    for old in others[: max(len(others) - keep + 1, 0)]:
        old.unlink(missing_ok=True)
    return path


def previous_window(project: Project) -> PreviousWindow | None:
    """The newest usable monitor run of this model whose profile is saved and still fits the
    configured features; an unreadable profile is skipped with a log line."""
    numeric, categorical = project.features
    for row in reversed(recent_windows(project, 10_000)):
        if not row.get("usable"):
            continue
        path = profiles_dir(project) / f"{row['run_id']}.pkl"
        if not path.is_file():
            continue
        try:
            profile = FrameProfile.load(path, key=row["run_id"])
        except Exception as exc:  # truncated, corrupt or of an older code: not a reason to fail
            log.warning("window profile %s unreadable, skipped: %s", path.name, exc)
            continue
        if profile is None or not profile.covers(numeric, categorical):
            log.warning("window profile %s is of another format or features, skipped", path.name)
            continue
        start, end = (datetime.fromisoformat(row[k]) for k in ("window_start", "window_end"))
        return PreviousWindow(row["run_id"], window_text(start, end), profile)
    return None


def compare_windows(
    previous: FrameProfile | None,
    current: FrameProfile,
    jobs: list[ColumnJob],
    *,
    change_share: float,
    min_values: int,
    workers: int = 2,
    previous_run: tuple[str, str] | None = None,
) -> WindowChange:
    """`current` against `previous` column by column; `sudden_change` when the share of changed
    columns reaches `change_share`. `previous_run` is (run id, window text) for the record."""
    run_id, window = previous_run or (None, None)
    named = {"previous_run_id": run_id, "previous_window": window}
    if previous is None:
        return WindowChange(
            verdict="no_previous",
            message="no earlier usable window saved: nothing to compare with yet",
            change_share_threshold=change_share,
            **named,
        )
    stats = drift_table(previous, current, jobs, min_values=min_values, workers=workers)
    columns = [column_result(j.column, j.kind, stats[j.column], previous, current) for j in jobs]
    tested = [c for c in columns if c.status == "tested"]
    changed = sum(c.drifted for c in tested)
    share = changed / len(tested) if tested else 0.0
    since = f" since {window}" if window else ""
    if not tested:
        verdict = "insufficient_data"
        message = f"no column has {min_values} usable values in both windows; change not tested"
    elif share >= change_share:
        names = ", ".join(c.column for c in tested if c.drifted)
        verdict = "sudden_change"
        message = (
            f"sudden change{since}: {changed} of {len(tested)} columns changed ({share:.0%}; "
            f"threshold {change_share:.0%}): {names}"
        )
    else:
        verdict = "no_change"
        message = (
            f"no sudden change{since}: {changed} of {len(tested)} columns changed ({share:.0%}; "
            f"threshold {change_share:.0%})"
        )
    return WindowChange(
        verdict=verdict,
        message=message,
        columns=columns,
        changed_columns=changed,
        tested_columns=len(tested),
        change_share=share,
        change_share_threshold=change_share,
        **named,
    )


def column_result(
    column: str, kind: Kind, stat: DriftStat | None, before: FrameProfile, after: FrameProfile
) -> ColumnDrift:
    """One column's drift as the results record it, against the reference or the last window."""
    if stat is None:
        return ColumnDrift.untested(column, kind, before.side(column).n, after.side(column).n)
    return ColumnDrift(
        column=column,
        kind=kind,
        method=stat.method,
        score=stat.score,
        threshold=stat.threshold,
        drifted=stat.drifted,
        score_is_p_value=stat.is_p_value,
        reference_values=stat.reference_rows,
        current_values=stat.current_rows,
    )


@task(cache_policy=NO_CACHE)
def find_previous_window(project: Project) -> PreviousWindow | None:
    """The window this run is compared with; called before this run's record is saved."""
    return previous_window(project)


@task(cache_policy=NO_CACHE)
def save_profile(project: Project, run_id: str, result: CheckResult) -> Path | None:
    """Keep this run's window profile for the next run's comparison (usable windows only)."""
    profile = result.current_profile
    if profile is None or not result.usable:
        return None
    return save_window_profile(project, run_id, profile)
