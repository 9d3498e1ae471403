"""The performance estimator against values known by construction: perfectly calibrated
probabilities (cbpe) and a model whose error is known per row (dle); its band, its pickling,
and its bad-input errors."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from model.evaluate import score
from model.performance import EstimationError, fit_estimator


class KnownProbabilities:
    """A classifier whose probabilities are a known function of feature `x`, so the labels drawn
    from them make those probabilities perfectly calibrated."""

    def __init__(self, classes: list, table: np.ndarray | None = None):
        self.classes_ = np.array(classes)
        self.table = table  # two rows: the probabilities for x < 0.5 and x >= 0.5

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame["x"].to_numpy()
        if self.table is None:
            return np.column_stack([1 - x, x])
        return self.table[(x >= 0.5).astype(int)]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.classes_[self.predict_proba(frame).argmax(1)]


def draw(model: KnownProbabilities, rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.uniform(0, 1, rows)})
    proba = model.predict_proba(frame)
    labels = (rng.random((rows, 1)) > np.cumsum(proba, 1)).sum(1)
    return frame, model.classes_[labels]


def fit(task, model, frame, y, metrics, numeric=("x",), categorical=()):
    return fit_estimator(
        task,
        model,
        frame,
        y,
        metrics=metrics,
        classes=getattr(model, "classes_", None),
        numeric=list(numeric),
        categorical=list(categorical),
        confidence=0.9,
        fit_share=0.5,
        seed=3,
    )


def by_metric(estimates) -> dict:
    return {e.metric: e for e in estimates}


def test_binary_estimates_equal_the_expected_values_of_calibrated_probabilities():
    model = KnownProbabilities(["no", "yes"])
    est = fit("binary", model, *draw(model, 4000, 0), ["roc_auc", "accuracy", "f1", "log_loss"])
    assert est.method == "cbpe" and est.metrics == ["roc_auc", "accuracy", "f1"]
    assert "rare wrong labels" in est.skipped["log_loss"]
    window, labels = draw(model, 20_000, 1)
    got = by_metric(est.estimate(window, model.predict(window), model.predict_proba(window)))
    # p = x ~ U(0, 1): E[max(p, 1 - p)] = 3/4; AUC = 5/6; f1 = 2(3/8) / (2(3/8) + 1/8 + 1/8).
    # Isotonic calibration on 2000 rows leans slightly to the extremes: within 0.015, and the
    # band holds the exact value
    expected = {"accuracy": 0.75, "roc_auc": 5 / 6, "f1": 0.75}
    for name, value in expected.items():
        assert got[name].value == pytest.approx(value, abs=0.015)
        assert got[name].lower <= value <= got[name].upper
    for e in got.values():
        realised = score(
            e.metric, labels, model.predict(window), model.predict_proba(window), model.classes_
        )
        assert e.lower <= realised <= e.upper, e


def test_multiclass_estimates_equal_the_expected_values_of_calibrated_probabilities():
    table = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    model = KnownProbabilities([10, 20, 30], table)
    est = fit("multiclass", model, *draw(model, 4000, 0), ["f1_macro", "accuracy"])
    window, labels = draw(model, 20_000, 1)
    # captured predictions are strings: they match the classes by their text
    predicted = model.predict(window).astype(str)
    got = by_metric(est.estimate(window, predicted, model.predict_proba(window)))
    # half the rows predict class 10 (right 70%), half class 30 (right 60%); 20 never predicted:
    # f1 = 0.7/0.9 for 10, 0.6/0.85 for 30, 0 for 20. The calibrated shares come from 1000 fit
    # rows per group (sd about 0.015 each): within 0.03, and the band holds the exact value
    expected = {"accuracy": 0.65, "f1_macro": (0.7 / 0.9 + 0.6 / 0.85) / 3}
    for name, value in expected.items():
        assert got[name].value == pytest.approx(value, abs=0.03)
        assert got[name].lower <= value <= got[name].upper
    realised = score("accuracy", labels, model.predict(window), None, model.classes_)
    assert got["accuracy"].lower <= realised <= got["accuracy"].upper


def heteroscedastic(rows: int, seed: int, share_b: float = 0.5) -> pd.DataFrame:
    """y = 2x + noise, the noise's sd 1 in group 'a' and 3 in group 'b'."""
    rng = np.random.default_rng(seed)
    group = np.where(rng.random(rows) < share_b, "b", "a")
    x = rng.normal(0, 1, rows)
    y = 2 * x + rng.normal(0, 1, rows) * np.where(group == "b", 3.0, 1.0)
    return pd.DataFrame({"x": x, "group": group, "y": y})


def test_regression_estimates_the_known_error_of_each_group_and_holds_it_in_the_band():
    train = heteroscedastic(5000, 0)
    model = LinearRegression().fit(train[["x"]], train["y"])  # close to 2x: the error is the noise

    class OnX:  # the model reads x only; the estimator sees both features
        def predict(self, frame):
            return model.predict(frame[["x"]])

    held_out = heteroscedastic(3000, 1)
    est = fit(
        "regression", OnX(), held_out[["x", "group"]], held_out["y"], ["rmse", "mae", "r2"],
        categorical=["group"],
    )  # fmt: skip
    assert est.method == "dle" and est.metrics == ["rmse", "mae"]
    assert "variance of the window's labels" in est.skipped["r2"]
    for share_b, rmse in ((0.0, 1.0), (1.0, 3.0)):  # windows shifted wholly into one group
        window = heteroscedastic(2000, 2, share_b)
        prediction = OnX().predict(window)
        got = by_metric(est.estimate(window[["x", "group"]], prediction, None))
        assert got["rmse"].value == pytest.approx(rmse, rel=0.1)
        assert got["mae"].value == pytest.approx(rmse * np.sqrt(2 / np.pi), rel=0.1)
        for e in got.values():
            realised = score(e.metric, window["y"], prediction, None, None)
            assert e.lower <= realised <= e.upper, (share_b, e, realised)


def test_a_large_window_is_estimated_on_a_bounded_sample_and_survives_pickling():
    model = KnownProbabilities(["no", "yes"])
    est = fit("binary", model, *draw(model, 2000, 0), ["accuracy"])
    window, _ = draw(model, 30_000, 5)
    args = (window, model.predict(window), model.predict_proba(window))
    sampled = est.estimate(*args, max_rows=1000)
    full = est.estimate(*args, max_rows=30_000)
    # the sample's band is wider (fewer rows), and both hold the expected 3/4
    assert sampled[0].upper - sampled[0].lower > full[0].upper - full[0].lower
    assert sampled[0].lower <= 0.75 <= sampled[0].upper

    buffer = io.BytesIO()
    joblib.dump(est, buffer)
    buffer.seek(0)
    again = joblib.load(buffer)
    assert (again.task, again.method, again.classes, again.feature_names) == (
        "binary",
        "cbpe",
        ["no", "yes"],
        ["x"],
    )
    assert again.estimate(*args, max_rows=1000) == sampled


def test_bad_windows_and_held_out_sets_are_refused_with_what_to_do():
    model = KnownProbabilities(["no", "yes"])
    est = fit("binary", model, *draw(model, 500, 0), ["accuracy"])
    window, _ = draw(model, 50, 1)
    proba = model.predict_proba(window)
    with pytest.raises(EstimationError, match=r"lacks the model's feature columns \['x'\]"):
        est.estimate(window.rename(columns={"x": "z"}), model.predict(window), proba)
    with pytest.raises(EstimationError, match=r"probabilities of shape \(50, 3\)"):
        est.estimate(window, model.predict(window), np.ones((50, 3)) / 3)
    with pytest.raises(EstimationError, match=r"values \['maybe'\] are not among"):
        est.estimate(window, ["maybe"] * 50, proba)
    with pytest.raises(EstimationError, match="has no rows"):
        est.estimate(window.iloc[:0], [], proba[:0])
    with pytest.raises(EstimationError, match=r"raise prepare\.test_size"):
        fit("binary", model, *draw(model, 30, 0), ["accuracy"])
    with pytest.raises(EstimationError, match="none of the metrics"):
        fit("binary", model, *draw(model, 500, 0), ["log_loss"])
