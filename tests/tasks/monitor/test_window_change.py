"""Each window against the previous usable one: the verdicts, and the saved profiles it reads."""

from __future__ import annotations

import logging
import os
import pickle
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from config.loader import Project, load_project
from tasks.monitor.checks import run_checks
from tasks.monitor.drift_stats import FrameProfile, build_profile
from tasks.monitor.history import MonitorRecord, save_record
from tasks.monitor.window_change import (
    PROFILES_KEPT,
    previous_window,
    profiles_dir,
    save_profile,
    save_window_profile,
)

ROOT = Path(__file__).resolve().parents[3]
SHIFTED = ["atemp", "hum", "temp", "weathersit", "windspeed"]  # 5 of the 11 features


@pytest.fixture(scope="module")
def bikes() -> pd.DataFrame:
    return pd.read_csv(ROOT / "data/bikeshare/bikeshare_hourly_2011.csv")


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(ROOT / "config/driftloop.yaml")


@pytest.fixture(scope="module")
def reference(bikes) -> pd.DataFrame:
    return bikes.query("mnth in ['Jan', 'Feb', 'March']").reset_index(drop=True)


@pytest.fixture(scope="module")
def february(bikes) -> pd.DataFrame:
    return bikes.query("mnth == 'Feb'").reset_index(drop=True)  # 649 rows


def shifted(frame: pd.DataFrame) -> pd.DataFrame:
    """Warmer, drier, windier, and the clear and misty hours swapped: 5 columns move."""
    out = frame.copy()
    out["temp"] += 0.3
    out["atemp"] += 0.3
    out["hum"] = (out["hum"] - 0.3).clip(lower=0)
    out["windspeed"] += 0.3
    swap = {"clear": "cloudy/misty", "cloudy/misty": "clear"}
    out["weathersit"] = out["weathersit"].map(lambda w: swap.get(w, w))
    return out


def profile_of(frame: pd.DataFrame, project: Project) -> FrameProfile:
    numeric, categorical = project.features
    return build_profile(frame, numeric, categorical, sort=True)


def at(root: Path, project: Project) -> Project:
    return Project(config=project.config, path=project.path, root=root)


# ---------------------------------------------------------------- the comparison


def test_two_identical_windows_change_nothing(project, reference, february):
    result = run_checks(
        reference,
        february,
        project,
        previous=profile_of(february, project),
        previous_run=("run-1", "2011-02-01 00:00 to 2011-03-01 00:00 UTC"),
    )
    change = result.change
    assert change.verdict == "no_change"
    assert (change.changed_columns, change.tested_columns) == (0, 11)
    assert change.change_share == 0.0
    assert change.change_share_threshold == 0.3  # monitor.drift_share: change_share is unset
    assert change.previous_run_id == "run-1"
    assert "since 2011-02-01 00:00 to 2011-03-01 00:00 UTC" in change.message


def test_a_step_in_five_columns_is_a_sudden_change_naming_them(project, reference, february):
    result = run_checks(
        reference, shifted(february), project, previous=profile_of(february, project)
    )
    change = result.change
    assert change.verdict == "sudden_change"
    assert sorted(c.column for c in change.columns if c.drifted) == SHIFTED
    assert (change.changed_columns, change.tested_columns) == (5, 11)
    assert change.change_share == pytest.approx(5 / 11)
    assert "5 of 11 columns changed" in change.message
    assert change.message.endswith("temp, atemp, hum, windspeed, weathersit")  # config order
    # the same methods as against the reference would pick for a 649-row side
    methods = {c.column: c.method for c in change.columns}
    assert methods["temp"] == "ks" and methods["weathersit"] == "chisquare"


def test_change_share_sets_the_threshold(project, reference, february):
    raised = Project(
        config=project.config.model_copy(
            update={"monitor": project.config.monitor.model_copy(update={"change_share": 0.6})}
        ),
        path=project.path,
        root=project.root,
    )
    change = run_checks(
        reference, shifted(february), raised, previous=profile_of(february, project)
    ).change
    assert change.verdict == "no_change"  # 5 of 11 is below 0.6
    assert change.changed_columns == 5
    assert change.change_share_threshold == 0.6


def test_the_first_window_has_no_previous_and_keeps_its_profile(project, reference, february):
    result = run_checks(reference, february, project)
    assert result.change.verdict == "no_previous"
    assert result.change.columns == [] and result.change.previous_run_id is None
    assert result.current_profile is not None and result.current_profile.rows == 649
    assert "current_profile" not in result.model_dump_json()
    persisted = pickle.loads(pickle.dumps(result))  # as Prefect persists a task's result
    assert persisted.current_profile is None and persisted.change.verdict == "no_previous"
    assert result.current_profile is not None  # the run's own copy keeps it


def test_a_previous_window_too_small_to_test_is_insufficient_data(project, reference, february):
    tiny = profile_of(february.head(100), project)  # below monitor.min_rows 500
    change = run_checks(reference, february, project, previous=tiny).change
    assert change.verdict == "insufficient_data"
    assert change.tested_columns == 0
    assert all(c.status == "insufficient_data" for c in change.columns)


def test_bad_input_has_no_change(project, reference, february):
    result = run_checks(
        reference, february.iloc[0:0], project, previous=profile_of(february, project)
    )
    assert result.bad_input == "current"
    assert result.change is None and result.current_profile is None


# ---------------------------------------------------------------- the saved profiles


def record(project: Project, run_id: str, month: int, usable: bool = True, model=None):
    start = datetime(2011, month, 1, tzinfo=UTC)
    end = datetime(2011, month + 1, 1, tzinfo=UTC)
    save_record.fn(
        project,
        MonitorRecord(
            run_id=run_id,
            model=model or project.config.project.name,
            window_start=start.isoformat(),
            window_end=end.isoformat(),
            serving_bento="bikeshare:v1",
            data_rev="rev1",
            verdict="no_drift" if usable else "empty",
            rows=649,
            label_coverage=0.0,
            dataset_drift=False,
            quality_breached=False,
            usable=usable,
            finished_at=end.isoformat(),
            result={},
        ),
    )


def test_previous_is_the_newest_usable_window_with_a_profile(tmp_path, project, february):
    here = at(tmp_path, project)
    assert previous_window(here) is None  # no history yet
    saved = profile_of(february, project)
    for run_id, month in (("r1", 2), ("r2", 3)):
        record(here, run_id, month)
        save_window_profile(here, run_id, saved)
    record(here, "r3", 4, usable=False)  # bad input: nothing to compare with
    record(here, "r4", 5)  # usable, but its profile was never saved
    record(here, "other", 6, model="another-model")
    save_window_profile(here, "other", saved)

    found = previous_window(here)
    assert found.run_id == "r2"
    assert found.window == "2011-03-01 00:00 to 2011-04-01 00:00 UTC"
    assert found.profile.rows == 649 and found.profile.key == "r2"


def test_an_unreadable_profile_is_skipped_with_a_log_line(tmp_path, project, february, caplog):
    here = at(tmp_path, project)
    for run_id, month in (("r1", 2), ("r2", 3)):
        record(here, run_id, month)
        save_window_profile(here, run_id, profile_of(february, project))
    path = profiles_dir(here) / "r2.pkl"
    path.write_bytes(path.read_bytes()[:100])  # truncated mid-write

    with caplog.at_level(logging.WARNING, logger="driftloop.monitor"):
        found = previous_window(here)
    assert found.run_id == "r1"
    assert "r2.pkl unreadable" in caplog.text


def test_only_the_newest_profiles_are_kept(tmp_path, project, february):
    here = at(tmp_path, project)
    profile = profile_of(february.head(50), project)
    for i in range(5):
        save_window_profile(here, f"r{i}", profile)
    assert PROFILES_KEPT == 3
    assert sorted(p.name for p in profiles_dir(here).glob("*.pkl")) == [
        "r2.pkl",
        "r3.pkl",
        "r4.pkl",
    ]
    # a kept profile stamped ahead of the clock does not make the one just saved look older
    future = (profiles_dir(here) / "r4.pkl").stat().st_mtime_ns + 10**12
    os.utime(profiles_dir(here) / "r4.pkl", ns=(future, future))
    save_window_profile(here, "r5", profile)
    assert sorted(p.name for p in profiles_dir(here).glob("*.pkl")) == [
        "r3.pkl",
        "r4.pkl",
        "r5.pkl",
    ]


def test_a_run_saves_its_profile_for_the_next_and_a_bad_one_does_not(
    tmp_path, project, reference, february
):
    here = at(tmp_path, project)
    first = run_checks(reference, february, here)
    record(here, "r1", 2)
    assert save_profile.fn(here, "r1", first) == profiles_dir(here) / "r1.pkl"
    bad = run_checks(reference, february.iloc[0:0], here)
    record(here, "r2", 3, usable=False)
    assert save_profile.fn(here, "r2", bad) is None

    found = previous_window(here)
    second = run_checks(
        reference,
        shifted(february),
        here,
        previous=found.profile,
        previous_run=(found.run_id, found.window),
    )
    assert second.change.verdict == "sudden_change"
    assert second.change.previous_window == "2011-02-01 00:00 to 2011-03-01 00:00 UTC"
