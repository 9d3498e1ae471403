"""The monitor's estimate on a captured window: the realised value and the estimator's error
once labels arrive, the rows it never learned from named, and a window it cannot read left
without an estimate instead of failing the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from config.loader import Project
from config.schema import DriftloopConfig
from model.estimator import feature_encoder
from model.performance import fit_estimator
from tasks.monitor.estimation import estimate_quality
from tasks.monitor.quality import model_quality
from tasks.notify import as_text, monitor_notice

NUMERIC, CATEGORICAL = ["x"], ["shop"]


def traffic(n: int, seed: int, shops=("north", "south")) -> pd.DataFrame:
    """y = 3x + noise whose spread is 2 in the north and 6 in the south."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.uniform(0, 10, n), "shop": rng.choice(list(shops), n)})
    spread = np.where(frame["shop"] == "south", 6.0, 2.0)
    frame["y"] = 3 * frame["x"] + rng.normal(0, 1, n) * spread
    return frame


@pytest.fixture(scope="module")
def project() -> Project:
    cfg = DriftloopConfig.model_validate(
        {
            "project": {"name": "shops"},
            "data": {
                "path": "shops.csv",
                "target": "y",
                "task": "regression",
                "numeric": NUMERIC,
                "categorical": CATEGORICAL,
            },
            "train": {"estimator": "sklearn.linear_model.LinearRegression"},
            "evaluate": {"metrics": ["rmse", "mae"], "primary": "rmse"},
            "monitor": {"quality_limit": 3.0, "min_labels": 50},
        }
    )
    return Project(config=cfg, path=Path("driftloop.yaml"), root=Path("."))


@pytest.fixture(scope="module")
def fitted():
    from sklearn.pipeline import Pipeline

    train = traffic(4000, 0)
    model = Pipeline(
        [("features", feature_encoder(NUMERIC, CATEGORICAL)), ("estimator", LinearRegression())]
    ).fit(train[NUMERIC + CATEGORICAL], train["y"])
    held = traffic(3000, 1)
    estimator = fit_estimator(
        "regression",
        model,
        held[NUMERIC + CATEGORICAL],
        held["y"],
        metrics=["rmse", "mae"],
        classes=None,
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        seed=5,
    )
    return model, estimator


def captured(model, frame: pd.DataFrame, labelled_share: float) -> pd.DataFrame:
    """The window as the monitor holds it: predictions, and the labels that have arrived."""
    out = frame.copy()
    out["prediction"] = model.predict(frame[NUMERIC + CATEGORICAL])
    unlabelled = np.arange(len(out)) >= int(len(out) * labelled_share)
    out.loc[unlabelled, "y"] = np.nan
    return out


def test_the_realised_value_and_the_error_are_measured_on_the_labelled_rows(project, fitted):
    model, estimator = fitted
    window = captured(model, traffic(2000, 2), labelled_share=0.5)
    quality = model_quality(window, project)
    estimated = estimate_quality(window, project, estimator, quality=quality)

    labelled = window.iloc[:1000]
    realised = float(np.sqrt(np.mean((labelled["y"] - labelled["prediction"]) ** 2)))
    on_labelled = {
        e.metric: e.value
        for e in estimator.estimate(labelled[NUMERIC + CATEGORICAL], labelled["prediction"], None)
    }
    rmse = next(m for m in estimated.metrics if m.name == "rmse")
    assert rmse.realised == pytest.approx(realised)
    assert rmse.error == pytest.approx(on_labelled["rmse"] - realised)
    # noise 2 and 6 in equal parts: the true rmse is sqrt((4 + 36) / 2) = 4.47
    assert rmse.lower <= 4.47 <= rmse.upper
    assert (estimated.method, estimated.primary, estimated.rows) == ("dle", "rmse", 2000)
    # the limit of 3 lies below the whole band: an estimated breach
    assert estimated.limit == 3.0 and estimated.limit_breached
    assert estimated.outside_share < 0.01  # at most the odd x past the held-out range


def test_rows_the_estimator_never_saw_are_counted_and_announced(project, fitted):
    model, estimator = fitted
    frame = traffic(1000, 3, shops=("north", "south", "east"))
    frame["x"] = frame["x"].clip(1, 9)  # well inside the held-out range: only shops count
    window = captured(model, frame, labelled_share=0.0)
    estimated = estimate_quality(window, project, estimator)
    assert estimated.outside_share == pytest.approx((frame["shop"] == "east").mean())
    assert all(m.realised is None and m.error is None for m in estimated.metrics)


def test_a_window_the_estimator_cannot_read_has_no_estimate(project, fitted):
    model, estimator = fitted
    window = captured(model, traffic(300, 4), labelled_share=0.0).drop(columns="shop")
    assert estimate_quality(window, project, estimator) is None
    assert estimate_quality(window.iloc[0:0], project, estimator) is None
    assert estimate_quality(captured(model, traffic(300, 4), 0.0), project, None) is None


def test_the_notice_warns_when_the_band_extrapolates(project, fitted):
    from tasks.monitor.checks import run_checks

    model, estimator = fitted
    reference = traffic(2000, 6)
    window = captured(model, traffic(1000, 7, shops=("north", "east")), labelled_share=0.0)
    result = run_checks(reference, window, project)
    result.estimated = estimate_quality(window, project, estimator)
    share = result.estimated.outside_share
    assert 0.4 < share < 0.6
    text = as_text(monitor_notice(project, result, "today", "shops:v1", {}))
    assert (
        f":warning: {share:.0%} of the rows lie outside what the estimator learned from "
        "(categories or values the held-out set lacks): for them the band is an extrapolation"
    ) in text
