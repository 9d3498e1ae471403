"""Drift check calibration with the product's defaults (`monitor.drift_share`, `monitor.min_rows`):
false alarms on the reference against itself, power on a known shift, and no guess below the
smallest reliable window. The choice of defaults is explained in docs/decisions.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from config.loader import Project, load_project
from config.schema import DriftloopConfig
from tasks.monitor.checks import run_checks

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 200
COLUMNS = [f"x{i}" for i in range(10)]


def ten_numeric_columns() -> Project:
    """Ten numeric features and every monitor setting at its product default."""
    raw = {
        "data": {
            "path": "d.csv",
            "target": "y",
            "task": "regression",
            "numeric": COLUMNS,
            "categorical": [],
        },
        "train": {"estimator": "sklearn.linear_model.LinearRegression"},
    }
    return Project(DriftloopConfig.model_validate(raw), Path("config/driftloop.yaml"), Path("."))


def skewed_pool(rng: np.random.Generator, rows: int = 20_000) -> pd.DataFrame:
    """Gamma columns of different shapes: skew is where Wasserstein is noisiest."""
    return pd.DataFrame({c: rng.gamma(2 + i, 1, rows) for i, c in enumerate(COLUMNS)})


def false_alarm_rate(pool: pd.DataFrame, project: Project, ref_rows: int, rows: int, rng) -> float:
    """Share of random disjoint splits of one frame that are called dataset drift."""
    alarms = 0
    for _ in range(TRIALS):
        order = rng.permutation(len(pool))
        reference = pool.iloc[order[:ref_rows]]
        current = pool.iloc[order[ref_rows : ref_rows + rows]]
        alarms += run_checks(reference, current, project).dataset_drift
    return alarms / TRIALS


def test_the_defaults_are_the_calibrated_ones():
    monitor = load_project(ROOT / "config/driftloop.yaml").config.monitor
    assert (monitor.drift_share, monitor.min_rows) == (0.3, 500)
    assert (ten_numeric_columns().config.monitor.drift_share, monitor.min_rows) == (0.3, 500)


@pytest.mark.parametrize("rows", [5000, 500], ids=["5000-rows", "min_rows"])
def test_false_dataset_drift_on_splits_of_the_reference_is_at_most_5_percent(rows):
    project = ten_numeric_columns()
    assert rows >= project.config.monitor.min_rows
    rng = np.random.default_rng(5)
    rate = false_alarm_rate(skewed_pool(rng), project, 5000, rows, rng)
    assert rate <= 0.05, f"{rate:.1%} false dataset drift at {rows} rows"


def test_false_dataset_drift_on_the_bundled_data_at_a_month_is_at_most_5_percent():
    project = load_project(ROOT / "config/driftloop.yaml")
    frame = pd.read_csv(ROOT / "data/bikeshare/bikeshare_hourly_2011.csv")
    winter = frame.query(project.config.data.source.query).reset_index(drop=True)
    rng = np.random.default_rng(9)
    rate = false_alarm_rate(winter, project, len(winter) // 2, 744, rng)
    assert rate <= 0.05, f"{rate:.1%} false dataset drift on bike-sharing splits"


def test_half_sd_shift_in_3_of_10_columns_is_detected_in_95_percent_of_trials():
    project = ten_numeric_columns()
    rng = np.random.default_rng(6)
    found = 0
    for _ in range(TRIALS):
        reference = pd.DataFrame({c: rng.normal(0, 1, 5000) for c in COLUMNS})
        current = pd.DataFrame({c: rng.normal(0, 1, 5000) for c in COLUMNS})
        current[COLUMNS[:3]] += 0.5
        result = run_checks(reference, current, project)
        flagged = {c.column for c in result.columns if c.drifted}
        found += result.dataset_drift and flagged == set(COLUMNS[:3])
    assert found / TRIALS >= 0.95, f"detected in {found} of {TRIALS}"


def test_below_the_smallest_reliable_window_the_verdict_is_insufficient_data():
    project = ten_numeric_columns()
    min_rows = project.config.monitor.min_rows
    rng = np.random.default_rng(7)
    reference = pd.DataFrame({c: rng.normal(0, 1, 5000) for c in COLUMNS})
    shifted = pd.DataFrame({c: rng.normal(3, 1, min_rows - 1) for c in COLUMNS})  # obvious drift
    result = run_checks(reference, shifted, project)
    assert (result.verdict, result.dataset_drift) == ("insufficient_data", False)
    assert result.columns == []
    assert f"at least {min_rows}" in result.message

    # a window big enough, but one column with too few values: that column is not guessed
    window = pd.DataFrame({c: rng.normal(0, 1, 2 * min_rows) for c in COLUMNS})
    window.loc[window.index[min_rows - 1 :], "x0"] = np.nan
    column = {c.column: c for c in run_checks(reference, window, project).columns}["x0"]
    assert (column.status, column.score, column.drifted) == ("insufficient_data", None, False)
