"""The scikit-learn Pipeline a config describes: encoders for the features, then the estimator."""

from __future__ import annotations

import inspect

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from config.loader import import_estimator
from config.schema import TrainConfig


def build_pipeline(train: TrainConfig, numeric: list[str], categorical: list[str]) -> Pipeline:
    """Impute and scale numbers, one-hot categories (unseen ones ignored), then the estimator.

    Scaling is harmless for trees and necessary for linear models, so every estimator gets it.
    """
    cls = import_estimator(train.estimator)
    params = dict(train.params)
    if train.seed is not None and "random_state" in inspect.signature(cls).parameters:
        params.setdefault("random_state", train.seed)
    features = feature_encoder(numeric, categorical)
    return Pipeline([("features", features), ("estimator", cls(**params))])


def feature_encoder(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    """The features as every model of the project sees them (the performance estimator too)."""
    return ColumnTransformer(
        [
            ("numeric", _numeric_steps(), numeric),
            ("categorical", _categorical_steps(), categorical),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )


def _numeric_steps() -> Pipeline:
    return Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])


def _categorical_steps() -> Pipeline:
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
