"""The checks give Evidently's verdicts and scores, name bad input, and measure model quality."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from config.loader import ConfigError, Project
from config.schema import DriftloopConfig
from tasks.monitor.checks import run_checks
from tasks.monitor.drift_stats import (
    DEFAULT_THRESHOLDS,
    CategoricalSide,
    FrameProfile,
    NumericSide,
    column_drift,
)
from tasks.monitor.evidently_engine import preset_drift
from tasks.monitor.profile import reference_profile
from tasks.monitor.quality import model_quality
from tasks.monitor.report_html import save_report
from tasks.monitor.settings import CheckSettings

SHIFT_SD = {"none": 0.0, "small": 0.05, "large": 0.5}


def make_project(numeric, categorical, task="regression", metrics=None, **monitor) -> Project:
    data = {"path": "d.csv", "target": "y", "task": task}
    data |= {"numeric": numeric, "categorical": categorical}
    estimator = "LinearRegression" if task == "regression" else "LogisticRegression"
    raw = {
        "data": data,
        "train": {"estimator": f"sklearn.linear_model.{estimator}"},
        "monitor": {"min_rows": 50, **monitor},
    }
    if metrics:
        raw["evaluate"] = {"metrics": metrics}
    return Project(DriftloopConfig.model_validate(raw), Path("config/driftloop.yaml"), Path("."))


def shifted_frames(ref_rows: int, cur_rows: int, seed: int = 0):
    """Numeric and categorical columns with no, small and large shifts, plus discrete numerics."""
    rng = np.random.default_rng(seed)
    ref, cur = {}, {}
    for shift, sd in SHIFT_SD.items():
        ref[f"normal_{shift}"] = rng.normal(0, 1, ref_rows)
        cur[f"normal_{shift}"] = rng.normal(0, 1, cur_rows) + sd
        ref[f"expo_{shift}"] = rng.exponential(1, ref_rows)
        cur[f"expo_{shift}"] = rng.exponential(1, cur_rows) + sd
        # integer valued, ~40 distinct values
        ref[f"count_{shift}"] = rng.poisson(20, ref_rows).astype(float)
        cur[f"count_{shift}"] = rng.poisson(20 + 4.5 * sd * 2, cur_rows).astype(float)
        for k in (2, 5, 30):
            p = 1 / np.arange(1, k + 1)
            p /= p.sum()
            q = p.copy()
            if shift == "large":
                q[0], q[1] = p[1], p[0]
            elif shift == "small":
                q[0] -= 0.02
                q[-1] += 0.02
            labels = np.array([f"v{i:02d}" for i in range(k)], dtype=object)
            ref[f"cat{k}_{shift}"] = labels[rng.choice(k, ref_rows, p=p)]
            cur[f"cat{k}_{shift}"] = labels[rng.choice(k, cur_rows, p=q)]
        # discrete numerics: 2 and 4 values (z / chi-square / Jensen-Shannon by Evidently's rules)
        ref[f"flag_{shift}"] = rng.binomial(1, 0.3, ref_rows).astype(float)
        cur[f"flag_{shift}"] = rng.binomial(1, 0.3 + sd / 2, cur_rows).astype(float)
        ref[f"level_{shift}"] = rng.integers(0, 4, ref_rows).astype(float)
        cur[f"level_{shift}"] = np.minimum(
            rng.integers(0, 4, cur_rows) + (rng.random(cur_rows) < sd), 3
        )
    ref, cur = pd.DataFrame(ref), pd.DataFrame(cur)
    numeric = [c for c in ref if not c.startswith("cat")]
    categorical = [c for c in ref if c.startswith("cat")]
    return ref, cur, numeric, categorical


def assert_same(ours, theirs):
    assert [c.column for c in ours] == [c.column for c in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert (a.column, a.method, a.threshold, a.drifted) == (
            b.column,
            b.method,
            b.threshold,
            b.drifted,
        )
        assert a.score == pytest.approx(b.score, rel=1e-9, abs=1e-12), a.column


@pytest.mark.parametrize(
    ("ref_rows", "cur_rows", "methods"),
    [
        (5000, 3000, {"wasserstein", "jensenshannon"}),  # large reference: distances
        (800, 1200, {"ks", "chisquare", "z"}),  # <= 1000 reference rows: p-values
        (1000, 400, {"ks", "chisquare", "z"}),  # the edge: still p-values
        (1001, 400, {"wasserstein", "jensenshannon"}),  # one row more: distances
    ],
)
def test_scores_and_verdicts_equal_the_preset(ref_rows, cur_rows, methods):
    ref, cur, numeric, categorical = shifted_frames(ref_rows, cur_rows, seed=ref_rows)
    project = make_project(numeric, categorical)
    result = run_checks(ref, cur, project)
    evidently = run_checks(ref, cur, project, engine="evidently")
    assert_same(result.columns, evidently.columns)
    assert {c.method for c in result.columns} == methods
    assert (result.drift_share, result.dataset_drift) == (
        evidently.drift_share,
        evidently.dataset_drift,
    )
    by_name = {c.column: c for c in result.columns}
    for column in ("normal_large", "expo_large", "cat5_large", "cat30_large"):
        assert by_name[column].drifted, column
    # p-value tests flag a no-shift column 5% of the time by design; tiny windows are noisy
    if ref_rows > 1000 and cur_rows >= 1000:
        for column in ("normal_none", "expo_none", "cat5_none", "cat30_none"):
            assert not by_name[column].drifted, column


@pytest.mark.parametrize(
    "methods",
    [
        {"num_method": "ks", "cat_method": "psi"},
        {"num_method": "psi", "cat_method": "chisquare", "threshold": 0.2},
        {"method": "jensenshannon"},
        {"num_method": "t_test", "per_column_method": {"cat5_large": "hellinger"}},  # via Evidently
    ],
)
def test_configured_methods_equal_the_preset(methods):
    ref, cur, numeric, categorical = shifted_frames(3000, 2000, seed=7)
    project = make_project(numeric, categorical)
    settings = CheckSettings.from_project(project, **methods)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on zero expected counts
        ours = run_checks(ref, cur, project, settings=settings)
        theirs = preset_drift(ref, cur, project, settings)
    assert_same(ours.columns, theirs)


def test_a_method_that_does_not_fit_the_column_kind_is_a_config_error():
    project = make_project(["x"], ["c"])
    with pytest.raises(ConfigError, match=r"monitor\.num_method"):
        CheckSettings.from_project(project, num_method="chisquare")
    with pytest.raises(ConfigError, match=r"monitor\.cat_method"):
        CheckSettings.from_project(project, cat_method="no_such_test")


# Evidently's chi-square divides by a zero expected count for unseen values (p = 0, as ours)
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_default_method_and_statistic_equal_evidentlys_stattest_on_a_grid():
    """Evidently's own `get_stattest` picks the method; its StatTest computes the score."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(3)
    cases = itertools.product((300, 1000, 1001, 4000), (1, 2, 3, 5, 6, 21, 500), (0.0, 0.4))
    for ref_rows, card, shift in cases:
        # numeric: `card` distinct values (card=500: continuous), with NaN and inf
        r = (
            rng.integers(0, card, ref_rows).astype(float)
            if card < 500
            else rng.normal(size=ref_rows)
        )
        c = rng.integers(0, card, 700).astype(float) if card < 500 else rng.normal(size=700)
        c = c + (1.0 if shift and card < 500 else shift)
        r[:3], r[3] = np.nan, np.inf
        labels = np.array([f"k{i}" for i in range(card)], dtype=object)
        rc = labels[rng.integers(0, card, ref_rows)]
        cc = labels[rng.integers(0, card, 700)]
        if shift:
            cc[:200] = labels[0]
        for kind, ref, cur, ours in (
            ("numeric", pd.Series(r), pd.Series(c), (NumericSide.of(r), NumericSide.of(c))),
            (
                "categorical",
                pd.Series(rc),
                pd.Series(cc),
                (CategoricalSide.of(pd.Series(rc)), CategoricalSide.of(pd.Series(cc))),
            ),
        ):
            column_type = ColumnType.Numerical if kind == "numeric" else ColumnType.Categorical
            ref = ref.replace([np.inf, -np.inf], np.nan).dropna()
            test = get_stattest(ref, cur, column_type, None)
            expected = test(ref, cur, column_type, None)
            got = column_drift(kind, *ours)
            case = (ref_rows, card, shift, kind)
            assert got.method == test.name, case
            assert got.drifted == expected.drifted, case
            assert got.score == pytest.approx(expected.drift_score, rel=1e-9, abs=1e-12), case


def test_default_thresholds_are_evidentlys():
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    for name, threshold in DEFAULT_THRESHOLDS.items():
        kind = ColumnType.Categorical if name in ("chisquare", "z") else ColumnType.Numerical
        assert get_registered_stattest(name, kind).default_threshold == threshold


def test_a_saved_reference_profile_gives_the_same_result(tmp_path):
    ref, cur, numeric, categorical = shifted_frames(3000, 2000)
    project = make_project(numeric, categorical)
    profile = reference_profile(ref, project, key="rev-1")
    assert isinstance(profile, FrameProfile)
    path = profile.save(tmp_path / "profile.pkl")
    assert FrameProfile.load(path, key="rev-2") is None  # another data rev: rebuild
    loaded = FrameProfile.load(path, key="rev-1")
    from_profile = run_checks(loaded, cur, project)
    from_frame = run_checks(ref, cur, project)
    assert from_profile.reference_key == "rev-1"
    assert [c.model_dump() for c in from_profile.columns] == [
        c.model_dump() for c in from_frame.columns
    ]
    # the reference frame's rows are untouched by the sorting a profile does
    assert not ref["normal_none"].is_monotonic_increasing


def test_the_result_is_json_and_carries_data_quality():
    ref, cur, numeric, categorical = shifted_frames(2000, 1000)
    cur.loc[:99, "normal_none"] = np.nan
    project = make_project(numeric, categorical)
    result = run_checks(ref, cur, project)
    payload = json.loads(result.model_dump_json())
    assert payload["verdict"] in ("drift", "no_drift")
    quality = {c.column: c for c in result.data_quality.columns}
    assert quality["normal_none"].missing_share_current == pytest.approx(0.1)
    assert quality["normal_large"].mean_current == pytest.approx(cur["normal_large"].mean())
    assert quality["cat30_none"].unique_reference == ref["cat30_none"].nunique()
    assert result.validation.verdict == "nan_values"
    assert result.duration_seconds > 0


# ---------------------------------------------------------------- bad input reaches the result
def good_pair():
    ref, cur, numeric, categorical = shifted_frames(2000, 600, seed=11)
    return ref, cur, make_project(numeric, categorical)


BAD_CURRENT = {
    "empty": (lambda f: f.iloc[:0], False),
    "insufficient_data": (lambda f: f.iloc[:49], False),
    "schema_mismatch": (lambda f: f.drop(columns=["normal_none"]), False),
    "wrong_dtype": (lambda f: f.assign(expo_none="n/a"), False),
    "all_nan": (lambda f: f.assign(cat5_none=None), False),
    "nan_values": (lambda f: f.assign(normal_none=f["normal_none"].where(f.index > 100)), True),
    "inf_values": (
        lambda f: f.assign(normal_none=f["normal_none"].replace(f["normal_none"].iloc[0], np.inf)),
        True,
    ),
    "unseen_categories": (lambda f: f.assign(cat5_none="v99"), True),
}


@pytest.mark.parametrize("name", list(BAD_CURRENT))
def test_every_bad_input_class_reaches_the_result_by_name(name):
    ref, cur, project = good_pair()
    change, usable = BAD_CURRENT[name]
    result = run_checks(ref, change(cur), project)
    assert result.validation.verdict == name
    assert result.usable == usable
    if usable:
        assert result.verdict in ("drift", "no_drift")
        assert result.columns
    else:
        assert result.verdict == name
        assert result.exit_code == 2
        assert result.bad_input == "current"
        assert name in result.message
    json.loads(result.model_dump_json())


def test_a_bad_reference_is_named_too():
    ref, cur, project = good_pair()
    result = run_checks(ref.drop(columns=["cat2_none"]), cur, project)
    assert (result.verdict, result.bad_input) == ("schema_mismatch", "reference")
    assert result.reference_validation.missing_columns == ["cat2_none"]


def test_a_column_below_the_reliable_size_is_insufficient_data_not_a_guess():
    ref, cur, project = good_pair()
    cur.loc[cur.index[30:], "normal_large"] = np.nan  # 30 values < min_rows 50
    result = run_checks(ref, cur, project)
    column = next(c for c in result.columns if c.column == "normal_large")
    assert (column.status, column.score, column.drifted) == ("insufficient_data", None, False)
    assert result.tested_columns == len(result.columns) - 1
    evidently = run_checks(ref, cur, project, engine="evidently")
    assert_same(
        [c for c in result.columns if c.score is not None],
        [c for c in evidently.columns if c.score is not None],
    )


# ---------------------------------------------------------------- model quality
def regression_frames(rows=400, labelled=300):
    rng = np.random.default_rng(8)
    frame = pd.DataFrame({"x": rng.normal(size=rows), "c": rng.choice(["a", "b"], rows)})
    frame["y"] = 3 * frame["x"] + rng.normal(size=rows)
    frame["prediction"] = 3 * frame["x"]
    frame.loc[frame.index[labelled:], "y"] = np.nan  # labels not yet arrived
    return frame


def test_regression_quality_on_labelled_rows_and_against_the_reference():
    project = make_project(["x"], ["c"], metrics=["rmse", "mae", "r2"], quality_limit=0.5)
    cur = regression_frames()
    ref = regression_frames(1000, 1000)
    ref["prediction"] = 3 * ref["x"] + 0.5
    result = run_checks(ref, cur, project)
    quality = result.quality
    assert (quality.status, quality.rows, quality.labelled_rows) == ("ok", 400, 300)
    assert quality.coverage == pytest.approx(0.75)
    assert quality.reference_labelled_rows == 1000
    assert quality.reference_source == "reference_data"  # no held-out values given
    lab = cur.dropna()
    got = {m.name: m for m in quality.metrics}
    rmse = np.sqrt(skm.mean_squared_error(lab["y"], lab["prediction"]))
    assert got["rmse"].current == pytest.approx(rmse)
    assert got["mae"].current == pytest.approx(skm.mean_absolute_error(lab["y"], lab["prediction"]))
    assert got["r2"].current == pytest.approx(skm.r2_score(lab["y"], lab["prediction"]))
    ref_rmse = np.sqrt(skm.mean_squared_error(ref["y"], ref["prediction"]))
    assert got["rmse"].reference == pytest.approx(ref_rmse)
    assert (got["rmse"].greater_is_better, got["r2"].greater_is_better) == (False, True)
    assert quality.limit_breached is bool(rmse > 0.5)


def test_regression_rmse_equals_evidentlys():
    from evidently import DataDefinition, Dataset, Regression, Report
    from evidently.metrics import RMSE

    project = make_project(["x"], ["c"], metrics=["rmse"])
    cur = regression_frames()
    ours = model_quality(cur, project).metrics[0].current
    definition = DataDefinition(
        numerical_columns=["x"], regression=[Regression(target="y", prediction="prediction")]
    )
    snap = Report([RMSE()]).run(Dataset.from_pandas(cur, data_definition=definition), None)
    assert ours == pytest.approx(snap.dict()["metrics"][0]["value"], rel=1e-12)


def test_too_few_labels_is_named_and_no_labels_is_none():
    project = make_project(["x"], ["c"])
    few = model_quality(regression_frames(400, 20), project)
    assert (few.status, few.labelled_rows, few.metrics) == ("insufficient_labels", 20, [])
    assert model_quality(regression_frames().drop(columns="prediction"), project) is None


def test_binary_quality_with_a_positive_class_probability():
    rng = np.random.default_rng(9)
    rows = 500
    proba = rng.uniform(size=rows)
    frame = pd.DataFrame({"x": rng.normal(size=rows), "c": rng.choice(["a", "b"], rows)})
    frame["y"] = (rng.uniform(size=rows) < proba).astype(int)
    frame["prediction"] = (proba > 0.5).astype(int)
    frame["proba_1"] = proba
    metrics = ["roc_auc", "accuracy", "f1", "log_loss"]
    project = make_project(["x"], ["c"], task="binary", metrics=metrics)
    quality = model_quality(frame, project)
    got = {m.name: m.current for m in quality.metrics}
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(frame["y"], proba))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(frame["y"], frame["prediction"]))
    assert got["f1"] == pytest.approx(skm.f1_score(frame["y"], frame["prediction"]))
    expected = skm.log_loss(frame["y"], np.column_stack([1 - proba, proba]))
    assert got["log_loss"] == pytest.approx(expected)
    # without probabilities, the metrics that need them say so instead of failing
    bare = model_quality(frame.drop(columns="proba_1"), project)
    notes = {m.name: m.note for m in bare.metrics if m.current is None}
    assert set(notes) == {"roc_auc", "log_loss"}
    assert all("predict_proba" in note for note in notes.values())


# ---------------------------------------------------------------- the HTML report
def test_save_report_writes_evidentlys_html(tmp_path):
    project = make_project(["x"], ["c"], metrics=["rmse", "mae"])
    ref = regression_frames(1500, 1500)
    cur = regression_frames(400, 300)
    files = save_report(ref, cur, project, tmp_path / "report.html")
    assert files.paths == [tmp_path / "report.html"]
    html = files.paths[0].read_text()
    assert "Dataset Drift" in html
    assert "Mean Absolute" in html  # the regression quality section
    # the reference has no predictions: quality goes to its own file
    files = save_report(ref.drop(columns="prediction"), cur, project, tmp_path / "r2.html")
    assert [p.name for p in files.paths] == ["r2.html", "r2.quality.html"]
    assert "Dataset Drift" in files.paths[0].read_text()
    assert "Mean Absolute" in files.paths[1].read_text()
