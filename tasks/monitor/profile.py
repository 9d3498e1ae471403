"""The reference's drift profile: built once per data rev, saved and reloaded by `reference`,
so a monitor run only reduces the current window (the type is `drift_stats.FrameProfile`)."""

from __future__ import annotations

import pandas as pd

from config.loader import Project
from tasks.monitor.drift_stats import FrameProfile
from tasks.monitor.settings import CheckSettings
from tasks.monitor.validate import WindowVerdict, inspect_window


def reference_profile(
    reference: pd.DataFrame,
    project: Project,
    *,
    key: str | None = None,
    settings: CheckSettings | None = None,
) -> FrameProfile | WindowVerdict:
    """The reference's profile (sorted, ready to save), or the verdict saying why it is unusable.

    Build it once per data rev (`key`) and pass it to `run_checks`; `FrameProfile.save`/`load`.
    """
    s = settings or CheckSettings.from_project(project)
    verdict, profile = inspect_window(
        reference, project, role="reference", min_rows=s.min_rows, workers=s.workers
    )
    if profile is None:
        return verdict
    profile.key = key
    return profile.prepare(s.workers)
