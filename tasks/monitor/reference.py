"""The monitor's reference: the serving model's training data at its data rev (through DVC)
and its drift profile, built once per data rev and cached beside the stack's state."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from tasks.data import read_data_rev
from tasks.monitor.drift_stats import FrameProfile
from tasks.monitor.profile import reference_profile


@dataclass(frozen=True)
class Reference:
    data_rev: str
    frame: pd.DataFrame
    profile: FrameProfile | None  # computed once per data rev; None for an unusable reference


def reference_for(project: Project, data_rev: str, git_commit: str | None) -> Reference:
    """The serving model's training data at its data rev, with its drift profile (cached)."""
    frame = read_data_rev(project, data_rev, git_commit)
    cache = project.state_dir / "profiles" / f"{data_rev}.pkl"
    profile = FrameProfile.load(cache, key=data_rev) if cache.is_file() else None
    numeric, categorical = project.features
    if profile is None or not profile.covers(numeric, categorical):
        built = reference_profile(frame, project, key=data_rev)
        if isinstance(built, FrameProfile):
            cache.parent.mkdir(parents=True, exist_ok=True)
            built.save(cache)
            profile = built
        else:
            profile = None  # unusable reference: run_checks reports it by name
    return Reference(data_rev=data_rev, frame=frame, profile=profile)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_reference(project: Project, data_rev: str, git_commit: str | None) -> Reference:
    """The monitor's reference, pulled through DVC at the serving model's data rev."""
    return reference_for(project, data_rev, git_commit)
