"""The champion/challenger gate: a better candidate passes, a worse one or a guard regression
does not, and the thresholds come from config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression

from config.loader import Project
from config.schema import DriftloopConfig
from model.estimator import build_pipeline
from model.frames import feature_frame
from tasks.retrain.gate import gate


def project(**gate_cfg) -> Project:
    cfg = DriftloopConfig.model_validate(
        {
            "data": {
                "path": "d.csv",
                "target": "y",
                "task": "regression",
                "numeric": ["x"],
                "categorical": [],
            },
            "train": {"estimator": "sklearn.linear_model.LinearRegression"},
            "evaluate": {"metrics": ["rmse", "mae"], "primary": "rmse"},
            "gate": {"guard_metrics": ["mae"], **gate_cfg},
        }
    )
    return Project(config=cfg, path=Path("c.yaml"), root=Path("."))


def frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "y": 3 * x + rng.normal(scale=0.5, size=n)})


def fitted(proj: Project, estimator, data: pd.DataFrame):
    pipe = build_pipeline(proj.config.train, ["x"], [])
    pipe.set_params(estimator=estimator)
    return pipe.fit(feature_frame(data, ["x"], []), data["y"])


def test_better_candidate_passes_and_says_why():
    proj = project()
    champion = fitted(proj, DummyRegressor(), frame())
    candidate = fitted(proj, LinearRegression(), frame())
    result = gate(proj, champion, candidate, frame(seed=1))
    assert result.passed
    assert [line.metric for line in result.lines] == ["rmse", "mae"]
    assert result.lines[0].candidate < result.lines[0].champion
    assert "passes the gate" in result.reason and "on 400 held-out recent rows" in result.reason


def test_worse_candidate_fails():
    proj = project()
    result = gate(
        proj,
        fitted(proj, LinearRegression(), frame()),
        fitted(proj, DummyRegressor(), frame()),
        frame(seed=1),
    )
    assert not result.passed
    assert "failed: rmse" in result.reason


@pytest.mark.parametrize(("relative", "passes"), [(0.02, True), (0.999, False)])
def test_relative_improvement_threshold_from_config(relative, passes):
    proj = project(min_relative_improvement=relative)
    result = gate(
        proj,
        fitted(proj, DummyRegressor(), frame()),
        fitted(proj, LinearRegression(), frame()),
        frame(seed=1),
    )
    assert result.passed is passes


def test_equal_models_do_not_pass_a_required_gain():
    proj = project(min_relative_improvement=0.01)
    model = fitted(proj, LinearRegression(), frame())
    assert not gate(proj, model, model, frame(seed=1)).passed
