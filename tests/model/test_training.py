"""The Pipeline built from config trains and scores regression, binary and multiclass models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from config.loader import Project
from config.schema import DriftloopConfig
from model.evaluate import evaluate
from model.frames import feature_frame
from model.lineage import file_md5
from model.prepare import prepare
from model.train import describe, train


def project_for(
    frame: pd.DataFrame,
    target: str,
    task: str,
    estimator: str,
    categorical=(),
    root: Path = Path("."),
):
    numeric = [c for c in frame.columns if c != target and c not in categorical]
    cfg = DriftloopConfig.model_validate(
        {
            "data": {
                "path": "data.csv",
                "target": target,
                "task": task,
                "numeric": numeric,
                "categorical": list(categorical),
            },
            "train": {"estimator": estimator},
        }
    )
    return Project(config=cfg, path=root / "config.yaml", root=root)


def diabetes():
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame["sex"] = frame["sex"].map({1.0: "f", 2.0: "m"})
    return frame, "target", "regression", "sklearn.linear_model.Ridge", ["sex"]


def breast_cancer():
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.iloc[:, [*list(range(8)), -1]].copy()
    frame["target"] = np.where(data.target == 1, "benign", "malignant")
    return frame, "target", "binary", "sklearn.linear_model.LogisticRegression", []


def iris():
    frame = load_iris(as_frame=True).frame
    frame["target"] = load_iris().target_names[frame["target"]]
    return frame, "target", "multiclass", "sklearn.ensemble.RandomForestClassifier", []


@pytest.mark.parametrize("dataset", [diabetes, breast_cancer, iris], ids=lambda f: f.__name__)
def test_each_task_trains_and_scores(dataset, tmp_path):
    frame, target, task, estimator, categorical = dataset()
    frame.to_csv(tmp_path / "data.csv", index=False)
    project = project_for(frame, target, task, estimator, categorical, root=tmp_path)
    train_set, test_set = prepare(project, frame)
    pipeline = train(project, train_set)
    scores = evaluate(project, pipeline, test_set)
    assert set(scores) == set(project.config.metric_names)
    if task == "regression":
        assert scores["r2"] > 0.3  # a real fit, not a constant
    else:
        assert scores["accuracy"] > 0.85
    meta = describe(project, train_set, pipeline)
    if task != "regression":
        assert sorted(meta["schema"]["classes"]) == sorted(frame[target].unique())
    assert meta["lineage"]["data_rev"] == file_md5(tmp_path / "data.csv")
    assert meta["lineage"]["data_dirty"]  # no .dvc file records this data


def test_unseen_category_and_missing_value_do_not_break_prediction():
    frame, target, task, estimator, categorical = diabetes()
    project = project_for(frame, target, task, estimator, categorical)
    pipeline = train(project, frame)
    odd = frame.drop(columns=[target]).head(2).copy()
    odd.loc[odd.index[0], "sex"] = "unknown"
    odd.loc[odd.index[1], "bmi"] = np.nan
    numeric, cats = project.features
    predictions = pipeline.predict(feature_frame(odd, numeric, cats))
    assert np.isfinite(predictions).all()


def test_categories_are_strings_whatever_the_source_type():
    frame = pd.DataFrame({"n": [1, 2], "c": [1, "1"]})
    out = feature_frame(frame, ["n"], ["c"])
    assert out["c"].tolist() == ["1", "1"]
    assert out["n"].dtype == "float64"


def test_stratified_split_keeps_class_shares():
    frame, target, task, estimator, categorical = breast_cancer()
    project = project_for(frame, target, task, estimator, categorical)
    _train_set, test_set = prepare(project, frame)
    share = frame[target].eq("benign").mean()
    assert abs(test_set[target].eq("benign").mean() - share) < 0.02
