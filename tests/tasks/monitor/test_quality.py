"""Classifier quality on captured traffic: served, captured and read back as the monitor does,
every configured metric equals scikit-learn's on the same rows, beside the held-out value
stored with the model."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from config.loader import Project
from config.schema import DriftloopConfig
from model import artifacts
from model.capture import (
    LABELS,
    PREDICTIONS,
    CaptureWriter,
    capture_schema,
    label_rows,
    prediction_rows,
)
from model.evaluate import main as evaluate_stage
from model.register import held_out_metadata
from tasks.capture import capture_root, read_window
from tasks.monitor.quality import model_quality
from tasks.release.package import StoredModel, read_model, register_model, stored_model

# the service rounds probabilities to 6 digits, so rows sum to one only nearly
pytestmark = pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")

T0 = datetime(2011, 4, 1, 8, tzinfo=UTC)
TARGET = "y"


def fitted(load, estimator, labels: dict | None = None):
    """A real fit on scikit-learn's bundled data; `labels` renames the classes."""
    X, y = load(return_X_y=True, as_frame=True)
    if labels:
        y = y.map(labels)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.4, random_state=0, stratify=y
    )
    return make_pipeline(StandardScaler(), estimator).fit(X_train, y_train), X_test, y_test


def project(root: Path, task: str, features: list[str], metrics: list[str]) -> Project:
    cfg = DriftloopConfig.model_validate(
        {
            "data": {
                "path": "d.csv",
                "target": TARGET,
                "task": task,
                "numeric": features,
                "categorical": [],
            },
            "train": {"estimator": "sklearn.linear_model.LogisticRegression"},
            "evaluate": {"metrics": metrics},
            "capture": {"path": str(root / "capture")},
            "monitor": {"min_labels": 20},
        }
    )
    return Project(config=cfg, path=root / "config" / "driftloop.yaml", root=root)


def captured_window(proj: Project, model: Pipeline, X: pd.DataFrame, y: pd.Series):
    """Serve `X` as model/service.py does (string predictions, rounded probabilities), capture
    it and the labels as its /feedback does, then read the window the monitor checks."""
    numeric, categorical = proj.features
    writer = CaptureWriter(
        capture_root(proj),
        capture_schema(numeric, categorical, proj.config.data.task),
        flush_seconds=60,
    )
    ids = [f"r{i}" for i in range(len(X))]
    times = [T0 + timedelta(seconds=i) for i in range(len(X))]
    records = X.astype(object).to_dict(orient="records")
    predictions = [str(p) for p in model.predict(X).tolist()]
    probabilities = model.predict_proba(X).round(6).tolist()
    writer.add(
        PREDICTIONS,
        prediction_rows(records, predictions, probabilities, ids, times, "b:1", "m:1"),
    )
    labels = [{"inference_id": i, "label": str(v)} for i, v in zip(ids, y, strict=True)]
    writer.add(LABELS, label_rows(labels, T0 + timedelta(hours=2)))
    writer.close()
    window = read_window(proj, T0, T0 + timedelta(hours=1))
    return window.frame.rename(columns={"label": TARGET}), np.asarray(probabilities)


def served_classes(model: Pipeline) -> list:
    """The classes as the stored model's schema carries them (JSON, as model.train writes)."""
    return json.loads(json.dumps(model.classes_.tolist()))


BINARY = ["roc_auc", "log_loss", "f1", "accuracy"]
MULTICLASS = ["f1_macro", "accuracy", "log_loss"]


@pytest.mark.parametrize(
    "labels",
    [None, {0: "malignant", 1: "benign"}],
    ids=["int-classes-captured-as-text", "named-classes"],
)
def test_binary_metrics_from_captured_probabilities_equal_sklearn(tmp_path, labels):
    model, X, y = fitted(load_breast_cancer, LogisticRegression(max_iter=500), labels)
    proj = project(tmp_path, "binary", list(X.columns), BINARY)
    frame, proba = captured_window(proj, model, X, y)
    quality = model_quality(frame, proj, classes=served_classes(model))

    positive = model.classes_[1]
    predicted = model.predict(X)
    expected = {
        "roc_auc": skm.roc_auc_score(y == positive, proba[:, 1]),
        "log_loss": skm.log_loss(y, proba, labels=model.classes_),
        "f1": skm.f1_score(y, predicted, pos_label=positive),
        "accuracy": skm.accuracy_score(y, predicted),
    }
    got = {m.name: m for m in quality.metrics}
    assert (quality.status, quality.labelled_rows) == ("ok", len(X))
    assert list(got) == BINARY
    for name, value in expected.items():
        assert got[name].current is not None, got[name].note
        assert got[name].current == pytest.approx(value, rel=1e-12), name


@pytest.mark.parametrize(
    "labels",
    [None, {0: 2, 1: 10, 2: 30}],
    ids=["int-classes", "classes-whose-text-sorts-otherwise"],
)
def test_multiclass_metrics_from_captured_probabilities_equal_sklearn(tmp_path, labels):
    model, X, y = fitted(load_wine, HistGradientBoostingClassifier(max_iter=30), labels)
    proj = project(tmp_path, "multiclass", list(X.columns), MULTICLASS)
    frame, proba = captured_window(proj, model, X, y)
    quality = model_quality(frame, proj, classes=served_classes(model))

    predicted = model.predict(X)
    expected = {
        "f1_macro": skm.f1_score(y, predicted, average="macro"),
        "accuracy": skm.accuracy_score(y, predicted),
        "log_loss": skm.log_loss(y, proba, labels=model.classes_),
    }
    got = {m.name: m for m in quality.metrics}
    assert list(got) == MULTICLASS
    for name, value in expected.items():
        assert got[name].current is not None, got[name].note
        assert got[name].current == pytest.approx(value, rel=1e-12), name


def with_limit(proj: Project, limit: float) -> Project:
    monitor = proj.config.monitor.model_copy(update={"quality_limit": limit})
    return Project(proj.config.model_copy(update={"monitor": monitor}), proj.path, proj.root)


def test_the_limit_judges_the_primary_metric_from_the_captured_probabilities(tmp_path):
    model, X, y = fitted(load_breast_cancer, LogisticRegression(max_iter=500))
    proj = project(tmp_path, "binary", list(X.columns), BINARY)
    frame, proba = captured_window(proj, model, X, y)
    auc = skm.roc_auc_score(y, proba[:, 1])
    assert auc < 1
    for limit, breached in (((auc + 1) / 2, True), (auc / 2, False)):
        quality = model_quality(frame, with_limit(proj, limit), classes=served_classes(model))
        assert (quality.primary, quality.limit, quality.limit_breached) == (
            "roc_auc",
            limit,
            breached,
        )


def test_without_the_models_classes_the_probabilities_are_not_guessed(tmp_path):
    model, X, y = fitted(load_breast_cancer, LogisticRegression(max_iter=500))
    proj = project(tmp_path, "binary", list(X.columns), BINARY)
    frame, _ = captured_window(proj, model, X, y)
    got = {m.name: m for m in model_quality(frame, proj).metrics}
    assert got["accuracy"].current == pytest.approx(skm.accuracy_score(y, model.predict(X)))
    for name in ("roc_auc", "log_loss"):
        assert got[name].current is None
        assert "serving model's classes" in got[name].note


def test_rows_served_without_probabilities_are_named(tmp_path):
    model, X, y = fitted(load_breast_cancer, LogisticRegression(max_iter=500))
    proj = project(tmp_path, "binary", list(X.columns), BINARY)
    frame, _ = captured_window(proj, model, X, y)
    frame.loc[frame.index[:3], "probabilities"] = None
    got = {m.name: m for m in model_quality(frame, proj, classes=[0, 1]).metrics}
    assert got["roc_auc"].current is None
    assert f"3 of {len(X)} labelled rows were served without them" in got["roc_auc"].note
    assert got["f1"].current == pytest.approx(skm.f1_score(y, model.predict(X)))


def test_each_metric_stands_beside_the_held_out_value(tmp_path):
    model, X, y = fitted(load_breast_cancer, LogisticRegression(max_iter=500))
    proj = project(tmp_path, "binary", list(X.columns), BINARY)
    frame, _ = captured_window(proj, model, X, y)
    held_out = {"roc_auc": 0.991, "log_loss": 0.08, "f1": 0.97, "accuracy": 0.96}
    quality = model_quality(frame, proj, classes=[0, 1], held_out=held_out)
    assert quality.reference_source == "held_out"
    assert {m.name: m.reference for m in quality.metrics} == held_out


# ---------------------------------------------------------------- stored with the model
def trained_project(root: Path) -> tuple[Project, Pipeline, pd.DataFrame]:
    """A project folder as `dvc repro` leaves it: the model, its meta and the held-out split."""
    model, X, y = fitted(load_breast_cancer, LogisticRegression(max_iter=500))
    proj = project(root, "binary", list(X.columns), BINARY)
    (root / "config").mkdir(parents=True)
    (root / "pyproject.toml").touch()
    raw = proj.config.model_dump(mode="json", exclude_none=True)
    proj.path.write_text(json.dumps(raw))  # JSON is YAML too
    test = X.assign(**{TARGET: y.to_numpy()})
    prepared = proj.resolve(artifacts.PREPARED_TEST)
    prepared.parent.mkdir(parents=True)
    test.to_parquet(prepared)
    proj.resolve(artifacts.MODEL_DIR).mkdir(parents=True)
    joblib.dump(model, proj.resolve(artifacts.MODEL_FILE))
    lineage = {"data_rev": "d1", "git_commit": "c1", "params_hash": "p1", "git_dirty": False}
    meta = {"lineage": lineage, "schema": {"classes": served_classes(model)}}
    proj.resolve(artifacts.MODEL_META).write_text(json.dumps(meta))
    return proj, model, test


def test_registration_stores_the_held_out_metrics_and_they_are_read_back_by_tag(tmp_path):
    proj, model, test = trained_project(tmp_path)
    evaluate_stage(proj)
    stored = stored_model(proj, register_model(proj))

    X, y = test.drop(columns=TARGET), test[TARGET]
    proba, predicted = model.predict_proba(X), model.predict(X)
    expected = {
        "roc_auc": skm.roc_auc_score(y, proba[:, 1]),
        "log_loss": skm.log_loss(y, proba),
        "f1": skm.f1_score(y, predicted),
        "accuracy": skm.accuracy_score(y, predicted),
    }
    assert stored.classes == [0, 1]
    assert stored.held_out == pytest.approx(expected, rel=1e-12)
    assert stored.held_out_rows == len(test)


def test_metrics_of_another_model_file_are_not_stored_with_this_one(tmp_path):
    proj, _, _ = trained_project(tmp_path)
    evaluate_stage(proj)
    model_file = proj.resolve(artifacts.MODEL_FILE)
    assert set(held_out_metadata(proj, model_file)["held_out_metrics"]) == set(BINARY)
    joblib.dump(LogisticRegression(), model_file)  # retrained by hand, never evaluated
    assert held_out_metadata(proj, model_file) == {}
    proj.resolve(artifacts.METRICS).unlink()
    assert held_out_metadata(proj, model_file) == {}


def test_a_model_missing_from_the_store_leaves_the_monitor_without_its_metadata(tmp_path, caplog):
    proj, _, _ = trained_project(tmp_path)
    assert read_model.fn(proj, "nope:0123456789abcdef") == StoredModel(tag="nope:0123456789abcdef")
    assert "model metadata not read" in caplog.text
