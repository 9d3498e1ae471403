"""Bad data in the window: every mutation gets a named verdict (never a traceback), and that
verdict reaches the metrics and the Slack notice.

The core classes (empty, a single row, missing/renamed/retyped column, all-NaN, inf, 30%
unseen categories) are proved in tests/tasks/monitor/test_monitor_outputs.py and, per verdict, in
tests/tasks/monitor/test_validate.py and test_checks.py. This file runs the full list of schema and
value mutations, on both sides (current and reference), through the same path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

from config.loader import load_project
from tasks.capture import Window
from tasks.metrics import monitor_registry
from tasks.monitor.checks import run_checks
from tasks.monitor.outcome import monitor_metrics
from tasks.notify import as_text, monitor_notice
from tests.tasks.monitor.test_monitor_outputs import CASES, current

ROOT = Path(__file__).resolve().parents[2]
Mutation = Callable[[pd.DataFrame], pd.DataFrame]


def _set(column: str, value) -> Mutation:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(**{column: value})

    return change


def _unseen(share: float) -> Mutation:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[: int(len(frame) * share), "weathersit"] = "volcanic ash"
        return frame

    return change


# mutation -> the verdict it must be named by (among the window's findings)
MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "two_columns_missing": (lambda f: f.drop(columns=["hum", "temp"]), "schema_mismatch"),
    "categorical_missing": (lambda f: f.drop(columns=["season"]), "schema_mismatch"),
    "all_columns_renamed": (lambda f: f.rename(columns=str.upper), "schema_mismatch"),
    "category_renamed": (lambda f: f.rename(columns={"mnth": "month"}), "schema_mismatch"),
    "only_unknown_columns": (lambda f: pd.DataFrame({"x": range(len(f))}), "schema_mismatch"),
    "numeric_as_text": (_set("hum", "high"), "wrong_dtype"),
    "numeric_as_dates": (_set("windspeed", pd.Timestamp("2011-05-01")), "wrong_dtype"),
    "every_feature_nan": (lambda f: f.assign(**{c: np.nan for c in f.columns}), "all_nan"),
    "categorical_all_none": (_set("season", None), "all_nan"),
    "half_nan": (
        lambda f: f.assign(temp=f["temp"].where(f.index % 2 == 0)),
        "nan_values",
    ),
    "minus_inf": (lambda f: f.assign(atemp=-np.inf), "all_nan"),  # no finite value left
    "some_inf": (lambda f: f.assign(hum=f["hum"].where(f.index > 20, np.inf)), "inf_values"),
    "unseen_5_percent": (_unseen(0.05), "unseen_categories"),
    "unseen_all": (_set("weathersit", "volcanic ash"), "unseen_categories"),
    "below_min_rows": (lambda f: f.iloc[:499], "insufficient_data"),
    "two_rows": (lambda f: f.iloc[:2], "insufficient_data"),
    "header_only": (lambda f: f.iloc[:0], "empty"),
    "no_columns": (lambda f: pd.DataFrame(index=f.index), "empty"),
}
# the training data (reference) blocks on these; it is never judged for NaN shares or novelty
# Where the published verdict is a more severe finding than the mutation's own: half of `temp`
# NaN leaves 372 of 744 values, under monitor.min_rows (500), so the column is not testable.
PUBLISHED = {"half_nan": "insufficient_data"}
BLOCKING = {"schema_mismatch", "all_nan", "empty", "insufficient_data"}
# changes that must not block the window, only be tolerated or reported
HARMLESS: dict[str, Mutation] = {
    "extra_column": lambda f: f.assign(surprise=1.0),
    "columns_reordered": lambda f: f[list(reversed(f.columns))],
    "integers_as_floats": lambda f: f.assign(hr=f["hr"].astype(float)),
}


@pytest.fixture(scope="module")
def project():
    return load_project(ROOT / "config/driftloop.yaml")


@pytest.fixture(scope="module")
def reference(project):
    frame = pd.read_csv(ROOT / "data/bikeshare/bikeshare_hourly_2011.csv")
    return frame.query(project.config.data.source.query).reset_index(drop=True)


def published(project, result, frame: pd.DataFrame) -> tuple[str, str]:
    """What Prometheus and Slack get for this result."""
    window = Window(start=None, end=None, frame=frame, label_coverage=0.0)
    exposition = generate_latest(
        monitor_registry(project, monitor_metrics(result, window, 0.1))
    ).decode()
    text = as_text(monitor_notice(project, result, "May", "bikeshare:v1", {}))
    return exposition, text


def test_every_mutation_class_is_covered():
    assert len(MUTATIONS) + len(HARMLESS) + len(CASES) >= 28


CASES_BY_SIDE = [("current", n) for n in MUTATIONS] + [
    ("reference", n) for n, (_, verdict) in MUTATIONS.items() if verdict in BLOCKING
]


@pytest.mark.parametrize(("side", "name"), CASES_BY_SIDE)
def test_a_mutation_is_a_named_verdict_in_metrics_and_notice(project, reference, side, name):
    change, verdict = MUTATIONS[name]
    good = current(reference, 744)
    if side == "current":
        result, frame = run_checks(reference, change(good), project), change(good)
        checked = result.validation
    else:
        result, frame = run_checks(change(reference), good, project), good
        checked = result.reference_validation
    assert checked is not None and verdict in checked.verdicts, checked
    exposition, text = published(project, result, frame)
    published_as = PUBLISHED.get(name, verdict) if side == "current" else verdict
    assert f'driftloop_window_verdict{{verdict="{published_as}"}} 1.0' in exposition
    assert published_as in text
    if not result.usable:
        assert result.bad_input == side and not result.dataset_drift
        assert not re.search(r"^driftloop_(drift_share|dataset_drift)\b", exposition, re.M)


@pytest.mark.parametrize("name", list(HARMLESS))
def test_harmless_changes_keep_the_window_usable(project, reference, name):
    result = run_checks(reference, HARMLESS[name](current(reference, 744)), project)
    assert result.usable and result.verdict in ("drift", "no_drift"), result.message
    published(project, result, current(reference, 744))
