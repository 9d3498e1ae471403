"""The `estimate` stage writes the estimator for the model file `train` wrote; registration
stores it with that model in a real BentoML store, and the monitor's loader reads it back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import joblib
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from config.loader import Project
from config.schema import DriftloopConfig
from model import artifacts
from model.estimate import main as estimate_stage
from model.estimate import read_estimate
from model.lineage import file_md5
from model.performance import PerformanceEstimator
from tasks.release.package import bentoml_home, load_estimator, register_model

TARGET = "y"


def trained_project(root: Path, estimate: dict | None = None) -> Project:
    """A project folder as `prepare` and `train` leave it: a binary model and its held-out set."""
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X = X.iloc[:, :6]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X_train, y_train)
    raw = {
        "data": {
            "path": "data.csv",
            "target": TARGET,
            "task": "binary",
            "numeric": list(X),
            "categorical": [],
        },
        "train": {"estimator": "sklearn.linear_model.LogisticRegression"},
        "evaluate": {"metrics": ["roc_auc", "accuracy", "log_loss"]},
        "estimate": estimate or {},
    }
    proj = Project(DriftloopConfig.model_validate(raw), root / "config/driftloop.yaml", root)
    proj.path.parent.mkdir(parents=True)
    (root / "pyproject.toml").touch()
    proj.path.write_text(json.dumps(raw))  # JSON is YAML too
    prepared = proj.resolve(artifacts.PREPARED_TEST)
    prepared.parent.mkdir(parents=True)
    X_test.assign(**{TARGET: y_test.to_numpy()}).to_parquet(prepared)
    proj.resolve(artifacts.MODEL_DIR).mkdir(parents=True)
    joblib.dump(model, proj.resolve(artifacts.MODEL_FILE))
    lineage = {"data_rev": "d1", "git_commit": "c1", "params_hash": "p1", "git_dirty": False}
    meta = {"lineage": lineage, "schema": {"classes": [0, 1]}}
    proj.resolve(artifacts.MODEL_META).write_text(json.dumps(meta))
    return proj


def test_the_stage_fits_for_this_model_and_registration_carries_it_to_the_loader(tmp_path):
    proj = trained_project(tmp_path)
    estimate_stage(proj)
    record = joblib.load(proj.resolve(artifacts.ESTIMATOR))
    assert record["model_md5"] == file_md5(proj.resolve(artifacts.MODEL_FILE))
    fitted = record["estimator"]
    assert isinstance(fitted, PerformanceEstimator) and record["reason"] is None
    assert (fitted.method, fitted.metrics, fitted.classes) == (
        "cbpe",
        ["roc_auc", "accuracy"],
        [0, 1],
    )
    assert list(fitted.skipped) == ["log_loss"]
    assert (fitted.fit_rows, fitted.band_rows) == (114, 114)  # 228 held-out rows, halved

    tag = register_model(proj)
    assert (bentoml_home(proj) / "models" / tag.replace(":", "/") / "custom_objects.pkl").is_file()
    loaded = load_estimator(proj, tag)
    assert isinstance(loaded, PerformanceEstimator)
    model = joblib.load(proj.resolve(artifacts.MODEL_FILE))
    X = pd.read_parquet(proj.resolve(artifacts.PREPARED_TEST)).drop(columns=TARGET)
    args = (X, model.predict(X), model.predict_proba(X))
    assert loaded.estimate(*args) == fitted.estimate(*args)


def test_an_estimator_fitted_for_another_model_file_is_not_stored(tmp_path, caplog):
    proj = trained_project(tmp_path)
    estimate_stage(proj)
    model = joblib.load(proj.resolve(artifacts.MODEL_FILE))
    model.set_params(logisticregression__C=0.5)  # `train` ran again; `estimate` did not
    joblib.dump(model, proj.resolve(artifacts.MODEL_FILE))
    assert (
        read_estimate(proj.resolve(artifacts.ESTIMATOR), proj.resolve(artifacts.MODEL_FILE)) is None
    )

    tag = register_model(proj)
    with caplog.at_level(logging.WARNING, logger="driftloop.package"):
        assert load_estimator(proj, tag) is None
        assert load_estimator(proj, "model:0123456789abcdef") is None
    assert f"no performance estimator stored with {tag}" in caplog.text
    assert "no performance estimator stored with model:0123456789abcdef" in caplog.text


def test_disabled_or_unreadable_the_loop_goes_without_and_says_why(tmp_path, caplog):
    proj = trained_project(tmp_path, estimate={"enabled": False})
    estimate_stage(proj)
    record = joblib.load(proj.resolve(artifacts.ESTIMATOR))
    assert (record["estimator"], record["reason"]) == (None, "estimate.enabled is false")

    broken = bentoml_home(proj) / "models" / "model" / "v1" / "custom_objects.pkl"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a pickle")
    with caplog.at_level(logging.WARNING, logger="driftloop.package"):
        assert load_estimator(proj, "model:v1") is None
    assert "performance estimator of model:v1 not read" in caplog.text


def test_a_held_out_set_too_small_leaves_the_reason_in_the_record(tmp_path):
    proj = trained_project(tmp_path)
    prepared = proj.resolve(artifacts.PREPARED_TEST)
    pd.read_parquet(prepared).head(30).to_parquet(prepared)
    estimate_stage(proj)
    record = joblib.load(proj.resolve(artifacts.ESTIMATOR))
    assert record["estimator"] is None
    assert "held-out set has 30 rows" in record["reason"]
    assert "raise prepare.test_size" in record["reason"]
