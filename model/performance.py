"""The serving model's quality on a window, estimated before (or without) its labels.

Two methods, both fitted on the held-out set at train time (the `estimate` DVC stage), one part
of it fitting and the other part sizing the band:

* **cbpe** (binary, multiclass), confidence-based performance estimation as NannyML describes it:
  the model's `predict_proba` is calibrated by isotonic regression (one-vs-rest for multiclass,
  rows renormalised), and each metric's expected value under the calibrated probabilities is the
  estimate: accuracy, f1 (positive class `classes[1]`), f1_macro and roc_auc (pairs ranked by
  the model's score, weighted by their probability of being positive/negative). log_loss is left
  out: it hinges on the calibrated probability of rare wrong labels, and its band held the
  realised value in as few as half of the benchmark's shifted windows.
* **dle** (regression), direct loss estimation: two small nanny models
  (HistGradientBoostingRegressor, Poisson loss so their outputs stay positive) read the features,
  encoded as the model reads them, plus the model's prediction, and predict the absolute and the
  squared error of each row: mae is their mean, rmse the root of the mean squared error. r2 needs
  the variance of the window's labels, which the predictions alone do not give: it is left out.

Once the band part has measured the estimator's error, the calibrators or nanny models are
fitted again on the whole held-out set: more rows make them no worse than the ones measured.

The band holds the realised metric in `confidence` of windows. Its half-width is
z * sqrt(sampling + systematic), z the normal quantile:

* sampling: the spread of the realised metric at the rows the estimate used. cbpe simulates
  label sets from the calibrated probabilities and takes the variance of the metric over them;
  dle takes each row's variance of its loss from the nanny models (E[e^2] - E[|e|]^2 for mae; for
  mse the squared error's variance from the standardised residuals' kurtosis, then the delta
  method for rmse).
* systematic: the estimator's own error, measured on the band-measuring part of the held-out set
  (never seen by the calibrator or nanny models): on that part as it is and on weighted
  samples of half of it that shift its features along random directions at several strengths
  (covariate shift, labels untouched). It is the mean squared error of the estimate there minus
  the sampling variance of each resample (never below zero), plus the band part's own sampling
  variance: the error measured there is known only up to that part's label noise, so a small
  held-out set gives a wider band, not a falsely narrow one.

A window larger than `max_rows` is estimated on a seeded uniform sample of that many rows; the
sampling term is taken at the sample's size, so the band stays honest for the whole window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.isotonic import IsotonicRegression
from threadpoolctl import threadpool_limits

from config.schema import METRIC_RANGES, METRICS
from model.estimator import feature_encoder
from model.frames import feature_frame

CBPE_METRICS = frozenset({"accuracy", "f1", "f1_macro", "roc_auc"})
DLE_METRICS = frozenset({"mae", "rmse"})
NOT_ESTIMATED = {
    "r2": "r2 needs the variance of the window's labels, which predictions alone do not give",
    "log_loss": "log_loss hinges on the calibrated probability of rare wrong labels, which a "
    "held-out set cannot pin down: its band held the realised value in too few windows",
}
THREADED_ROWS = 10_000  # nanny models predict on all cores from this many rows
SIMULATIONS = 200  # label sets simulated per window for the cbpe sampling term
SIMULATED_ROWS = 2_000  # rows they are drawn for; larger windows scale the variance down
SHIFT_STRENGTHS = (0.0, 0.5, 1.0, 1.5)  # weights exp(strength * z) along a random direction
SHIFT_DIRECTIONS = 12  # per strength above zero
MIN_ROWS = 20  # in each part of the held-out set
ESTIMATOR_KEY = "performance_estimator"  # its name among a stored model's custom objects


class EstimationError(ValueError):
    """The estimator cannot be fitted or used on this input; the message says what to do."""


@dataclass(frozen=True)
class Estimate:
    """One metric on a window: the estimate and the band its realised value should lie in."""

    metric: str
    value: float
    lower: float
    upper: float


@dataclass(frozen=True)
class RowScores:
    """Per-row results of the estimator's models: expected absolute and squared errors (dle),
    or the window as cbpe sees it."""

    moments: tuple[np.ndarray, np.ndarray] | None = None
    window: _Window | None = None

    def __len__(self) -> int:
        return len(self.moments[0]) if self.moments is not None else len(self.window.predicted)

    def take(self, rows: np.ndarray) -> RowScores:
        if self.moments is not None:
            return RowScores(moments=(self.moments[0][rows], self.moments[1][rows]))
        w = self.window
        return RowScores(window=_Window(w.calibrated[rows], w.predicted[rows], w.proba[rows]))


@dataclass
class PerformanceEstimator:
    """Everything needed to estimate a window's quality from the model's outputs; picklable."""

    task: str
    method: str  # "cbpe" | "dle"
    metrics: list[str]
    skipped: dict[str, str]  # metric -> why it is not estimated
    classes: list[Any] | None
    numeric: list[str]
    categorical: list[str]
    confidence: float
    systematic: dict[str, float]  # metric -> variance of the estimator's own error
    fit_rows: int
    band_rows: int
    seed: int = 0
    calibrators: list[IsotonicRegression] = field(default_factory=list)
    encoder: ColumnTransformer | None = None
    nanny_abs: HistGradientBoostingRegressor | None = None
    nanny_sq: HistGradientBoostingRegressor | None = None
    kurtosis: float = 3.0
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # numeric, held-out
    seen: dict[str, set[str]] = field(default_factory=dict)  # categorical values, held-out

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def estimate(
        self,
        features: pd.DataFrame,
        prediction: Any,
        proba: np.ndarray | None,
        *,
        max_rows: int = 5_000,
    ) -> list[Estimate]:
        """Each estimated metric on this window (its features, the model's predictions and, for a
        classifier, its probabilities in `classes` order), on at most `max_rows` rows."""
        n = _check_window(self, features, prediction, proba)
        rows = _sample(n, max_rows, self.seed)
        proba = None if proba is None else np.asarray(proba, dtype="float64")[rows]
        scores = self.row_scores(features.iloc[rows], np.asarray(prediction)[rows], proba)
        return self.summarise(scores)

    def row_scores(
        self, features: pd.DataFrame, prediction: Any, proba: np.ndarray | None
    ) -> RowScores:
        """What the estimator makes of each row (no sampling): its expected losses (dle) or its
        calibrated probabilities (cbpe). `summarise` turns any subset of them into estimates, so
        a window and its labelled part cost one pass of the models."""
        _check_window(self, features, prediction, proba)
        prediction = np.asarray(prediction)
        if self.method == "dle":
            return RowScores(moments=_dle_moments(self, features, prediction))
        window = _cbpe_window(self, prediction, np.asarray(proba, dtype="float64"))
        return RowScores(window=window)

    def summarise(self, scores: RowScores, rows: np.ndarray | None = None) -> list[Estimate]:
        """Each metric's estimate and band over `rows` of `scores` (all of them by default)."""
        if rows is not None:
            scores = scores.take(rows)
        if scores.moments is not None:
            values = {m: _dle_value(m, scores.moments) for m in self.metrics}
            sampling = {
                m: _dle_sampling_var(m, scores.moments, self.kurtosis) for m in self.metrics
            }
        else:
            values = {m: _cbpe_expected(m, scores.window) for m in self.metrics}
            sampling = _cbpe_sampling_var(self.metrics, scores.window, self.seed)
        return [self._band(m, values[m], sampling[m]) for m in self.metrics]

    def outside_share(self, features: pd.DataFrame) -> float:
        """The share of rows the estimator never learned from: a category the held-out set
        lacks, or a number beyond its range. The band assumes the window's rows resemble the
        held-out set's in where they lie; for these rows it is an extrapolation."""
        ranges, seen = getattr(self, "ranges", {}), getattr(self, "seen", {})  # older pickles
        if not ranges and not seen:
            return 0.0
        outside = np.zeros(len(features), dtype=bool)
        for column, (low, high) in ranges.items():
            values = pd.to_numeric(features[column], errors="coerce").to_numpy(dtype="float64")
            outside |= (values < low) | (values > high)
        for column, known in seen.items():
            values = features[column]
            outside |= values.notna().to_numpy() & ~values.astype(str).isin(known).to_numpy()
        return float(outside.mean()) if len(outside) else 0.0

    def _band(self, metric: str, value: float, sampling_var: float) -> Estimate:
        z = NormalDist().inv_cdf((1 + self.confidence) / 2)
        half = z * math.sqrt(max(sampling_var, 0.0) + self.systematic.get(metric, 0.0))
        low, high = METRIC_RANGES.get(metric, (None, None))
        lower, upper = value - half, value + half
        lower = lower if low is None else max(lower, low)
        upper = upper if high is None else min(upper, high)
        return Estimate(metric, float(value), float(lower), float(upper))


# ---------------------------------------------------------------- fitting
def fit_estimator(
    task: str,
    pipeline: Any,
    features: pd.DataFrame,
    y_true: Any,
    *,
    metrics: list[str],
    classes: list[Any] | None,
    numeric: list[str],
    categorical: list[str],
    confidence: float = 0.9,
    fit_share: float = 0.5,
    seed: int = 42,
) -> PerformanceEstimator:
    """Fit on the held-out set: a random `fit_share` of it fits the calibrators or nanny models,
    the rest measures the estimator's own error for the band."""
    method = "dle" if task == "regression" else "cbpe"
    supported = DLE_METRICS if method == "dle" else CBPE_METRICS
    usable = [m for m in metrics if m in supported and task in METRICS[m][0]]
    skipped = {m: _why_skipped(m, task) for m in metrics if m not in usable}
    if not usable:
        raise EstimationError(
            f"none of the metrics {metrics} can be estimated for a {task} model "
            f"({'; '.join(f'{m}: {r}' for m, r in skipped.items())}); "
            f"list one of {sorted(supported)} in evaluate.metrics, or set estimate.enabled: false"
        )
    features = feature_frame(features, numeric, categorical).reset_index(drop=True)
    y = np.asarray(y_true)
    fit_idx, band_idx = _split(len(features), fit_share, seed)
    est = PerformanceEstimator(
        task=task,
        method=method,
        metrics=usable,
        skipped=skipped,
        classes=None if classes is None else list(classes),
        numeric=list(numeric),
        categorical=list(categorical),
        confidence=confidence,
        systematic={},
        fit_rows=len(fit_idx),
        band_rows=len(band_idx),
        seed=seed,
    )
    est.encoder = feature_encoder(est.numeric, est.categorical).fit(features.iloc[fit_idx])
    est.ranges = {c: (float(features[c].min()), float(features[c].max())) for c in numeric}
    est.seen = {c: set(features[c].dropna().astype(str)) for c in categorical}
    prediction = np.asarray(pipeline.predict(features))
    if method == "dle":
        _fit_dle(est, features, prediction, y.astype("float64"), fit_idx, band_idx)
    else:
        if est.classes is None or not hasattr(pipeline, "predict_proba"):
            raise EstimationError(
                f"a {task} model needs predict_proba and classes_ for confidence-based "
                "estimation; use a probabilistic classifier or set estimate.enabled: false"
            )
        proba = np.asarray(pipeline.predict_proba(features), dtype="float64")
        _fit_cbpe(est, features, prediction, proba, y, fit_idx, band_idx)
    _refit_on_all(est, features, prediction, y, proba if method == "cbpe" else None)
    return est


def _refit_on_all(est: PerformanceEstimator, features, prediction, y, proba) -> None:
    """The calibrators or nanny models fitted again on the whole held-out set, once the band
    part has measured their error: models fitted on twice the rows err no more than the ones
    measured, so the band stays honest while the estimate gains (NannyML fits on its whole
    reference set too)."""
    if est.method == "dle":
        est.encoder = feature_encoder(est.numeric, est.categorical).fit(features)
        error = y.astype("float64") - prediction
        x = _nanny_inputs(est, features, prediction)
        with threadpool_limits(1, user_api="openmp"):
            est.nanny_abs = _nanny(est.seed).fit(x, np.abs(error))
            est.nanny_sq = _nanny(est.seed).fit(x, np.square(error))
        return
    truth = _class_index(est.classes, y, "held-out label")
    k = len(est.classes)
    est.calibrators = [
        IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
            proba[:, column], truth == column
        )
        for column in (range(k) if k > 2 else [1])
    ]


def _why_skipped(metric: str, task: str) -> str:
    if metric in NOT_ESTIMATED:
        return NOT_ESTIMATED[metric]
    if metric in METRICS and task not in METRICS[metric][0]:
        return f"{metric} does not apply to a {task} model"
    return f"{metric} has no estimator"


def _split(n: int, fit_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * fit_share)
    if cut < MIN_ROWS or n - cut < MIN_ROWS:
        raise EstimationError(
            f"the held-out set has {n} rows; fitting the estimator needs at least {MIN_ROWS} in "
            f"each part (estimate.fit_share {fit_share}): raise prepare.test_size or add data"
        )
    return np.sort(order[:cut]), np.sort(order[cut:])


def _shifted_resamples(encoded: np.ndarray, seed: int) -> list[np.ndarray]:
    """Row indices of the band part as it is, and halves of it drawn without replacement with
    weights exp(s * z), z the rows' standardised position along a random direction of their
    encoded features (distinct rows: each label counts once, as in a real window)."""
    rng = np.random.default_rng(seed + 1)
    spread = encoded.std(0)
    encoded = (encoded - encoded.mean(0)) / np.where(spread > 0, spread, 1)
    n = len(encoded)
    out = [np.arange(n)]
    for strength in SHIFT_STRENGTHS:
        for _ in range(SHIFT_DIRECTIONS if strength else 4):
            z = encoded @ rng.normal(size=encoded.shape[1])
            z = (z - z.mean()) / (z.std() or 1.0)
            weights = np.exp(strength * z)
            out.append(rng.choice(n, size=n // 2, replace=False, p=weights / weights.sum()))
    return out


def _systematic(
    metrics: list[str], errors: dict[str, list[float]], sampling: dict[str, list[float]]
) -> dict[str, float]:
    """Mean squared error of the estimate over the resamples, less their sampling variance,
    plus the band part's own (the first resample): the error is known only up to that noise."""
    return {
        m: max(float(np.mean(np.square(errors[m]) - np.asarray(sampling[m]))), 0.0) + sampling[m][0]
        for m in metrics
    }


# ---------------------------------------------------------------- dle
def _nanny(seed: int) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(
        loss="poisson", max_iter=50, learning_rate=0.15, max_leaf_nodes=15, random_state=seed
    )


def _encoded(est: PerformanceEstimator, features: pd.DataFrame) -> np.ndarray:
    return np.asarray(est.encoder.transform(features), dtype="float64")


def _nanny_inputs(est: PerformanceEstimator, features: pd.DataFrame, prediction) -> np.ndarray:
    return np.column_stack([_encoded(est, features), np.asarray(prediction, dtype="float64")])


def _fit_dle(est, features, prediction, y, fit_idx, band_idx) -> None:
    if not np.isfinite(y).all():
        raise EstimationError("the held-out target has missing or infinite values")
    error = y - prediction
    x = _nanny_inputs(est, features, prediction)
    with threadpool_limits(1, user_api="openmp"):  # threads cost more than they save here
        est.nanny_abs = _nanny(est.seed).fit(x[fit_idx], np.abs(error[fit_idx]))
        est.nanny_sq = _nanny(est.seed).fit(x[fit_idx], np.square(error[fit_idx]))
    band = features.iloc[band_idx]
    moments = _dle_moments(est, band, prediction[band_idx])
    standardised = error[band_idx] / np.sqrt(moments[1])
    est.kurtosis = max(
        float(np.mean(standardised**4) / max(np.mean(standardised**2) ** 2, 1e-12)), 1.0
    )
    errors: dict[str, list[float]] = {m: [] for m in est.metrics}
    sampling: dict[str, list[float]] = {m: [] for m in est.metrics}
    for rows in _shifted_resamples(_encoded(est, band), est.seed):
        picked = (moments[0][rows], moments[1][rows])
        realised = {"mae": np.mean(np.abs(error[band_idx][rows]))}
        realised["rmse"] = math.sqrt(np.mean(np.square(error[band_idx][rows])))
        for m in est.metrics:
            errors[m].append(_dle_value(m, picked) - realised[m])
            sampling[m].append(_dle_sampling_var(m, picked, est.kurtosis))
    est.systematic = _systematic(est.metrics, errors, sampling)


def _dle_moments(est, features: pd.DataFrame, prediction) -> tuple[np.ndarray, np.ndarray]:
    """Each row's expected absolute and squared error (the second never below the first's
    square, as no distribution allows)."""
    x = _nanny_inputs(est, feature_frame(features, est.numeric, est.categorical), prediction)
    threads = 1 if len(x) < THREADED_ROWS else None  # threads cost more than they save below
    with threadpool_limits(threads, user_api="openmp"):
        absolute = np.clip(est.nanny_abs.predict(x), 0, None)
        squared = np.maximum(est.nanny_sq.predict(x), absolute**2)
    return absolute, np.maximum(squared, 1e-12)


def _dle_value(metric: str, moments) -> float:
    absolute, squared = moments
    return float(np.mean(absolute)) if metric == "mae" else math.sqrt(float(np.mean(squared)))


def _dle_sampling_var(metric: str, moments, kurtosis: float) -> float:
    absolute, squared = moments
    n = len(absolute)
    if metric == "mae":
        return float(np.sum(squared - absolute**2)) / n**2
    mse = float(np.mean(squared))
    mse_var = (kurtosis - 1) * float(np.sum(squared**2)) / n**2
    return mse_var / (4 * mse)  # delta method: d sqrt(m) = dm / (2 sqrt(m))


# ---------------------------------------------------------------- cbpe
@dataclass
class _Window:
    """A window as cbpe sees it: calibrated probabilities, predicted class indices and the
    model's own probabilities (its positive-class score ranks the pairs of roc_auc)."""

    calibrated: np.ndarray
    predicted: np.ndarray
    proba: np.ndarray


def _fit_cbpe(est, features, prediction, proba, y, fit_idx, band_idx) -> None:
    k = len(est.classes)
    if proba.shape[1] != k:
        raise EstimationError(f"predict_proba gives {proba.shape[1]} columns for {k} classes")
    truth = _class_index(est.classes, y, "held-out label")
    for c in range(k if k > 2 else 1):
        column = c if k > 2 else 1
        calibrator = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
        est.calibrators.append(calibrator.fit(proba[fit_idx, column], truth[fit_idx] == column))
    window = _cbpe_window(est, prediction, proba)
    errors: dict[str, list[float]] = {m: [] for m in est.metrics}
    sampling: dict[str, list[float]] = {m: [] for m in est.metrics}
    for i, rows in enumerate(_shifted_resamples(_encoded(est, features.iloc[band_idx]), est.seed)):
        part = _Window(
            window.calibrated[band_idx][rows],
            window.predicted[band_idx][rows],
            window.proba[band_idx][rows],
        )
        realised = _realised(est.metrics, truth[band_idx][rows][None, :], part)
        spread = _cbpe_sampling_var(est.metrics, part, est.seed + i, simulations=50)
        for m in est.metrics:
            errors[m].append(_cbpe_expected(m, part) - realised[m][0])
            sampling[m].append(spread[m])
    est.systematic = _systematic(est.metrics, errors, sampling)


def _cbpe_window(est: PerformanceEstimator, prediction, proba: np.ndarray) -> _Window:
    if len(est.calibrators) == 1:
        positive = est.calibrators[0].predict(proba[:, 1])
        calibrated = np.column_stack([1 - positive, positive])
    else:
        calibrated = np.column_stack(
            [c.predict(proba[:, i]) for i, c in enumerate(est.calibrators)]
        )
        total = calibrated.sum(1, keepdims=True)
        calibrated = np.where(total > 0, calibrated / np.where(total > 0, total, 1), proba)
    predicted = _class_index(est.classes, prediction, "prediction")
    return _Window(calibrated, predicted, proba)


def _class_index(classes: list[Any], values: Any, what: str) -> np.ndarray:
    """Positions in `classes` of `values`, matching by value or by its text (captured labels
    are strings)."""
    lookup = {str(c): i for i, c in enumerate(classes)}
    texts = [str(v) for v in np.asarray(values).tolist()]
    index = np.array([lookup.get(t, -1) for t in texts])
    if (index < 0).any():
        unknown = sorted({t for t in texts if t not in lookup})
        raise EstimationError(
            f"{what} values {unknown[:5]} are not among the model's classes {classes}"
        )
    return index


def _cbpe_expected(metric: str, w: _Window) -> float:
    """The metric's expected value when each row's label follows its calibrated probabilities."""
    q, pred = w.calibrated, w.predicted
    n, k = q.shape
    if metric == "accuracy":
        return float(np.mean(q[np.arange(n), pred]))
    if metric == "roc_auc":
        return _expected_auc(w.proba[:, 1], q[:, 1])
    classes = [1] if metric == "f1" else range(k)
    scores = []
    for c in classes:
        tp = float(np.sum(q[pred == c, c]))
        fp = float(np.sum(1 - q[pred == c, c]))
        fn = float(np.sum(q[pred != c, c]))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0)
    return float(np.mean(scores))


def _expected_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """E[concordant pairs] / E[positive-negative pairs], ties counting one half."""
    values, group = np.unique(score, return_inverse=True)
    pos = np.bincount(group, weights=positive, minlength=len(values))
    neg = np.bincount(group, weights=1 - positive, minlength=len(values))
    below = np.cumsum(neg) - neg  # negatives scored strictly lower
    concordant = np.sum(pos * (below + neg / 2)) - np.sum(positive * (1 - positive)) / 2
    pairs = pos.sum() * neg.sum() - np.sum(positive * (1 - positive))
    return float(concordant / pairs) if pairs > 0 else 0.5


def _realised(metrics: list[str], labels: np.ndarray, w: _Window) -> dict[str, np.ndarray]:
    """Each metric for each row of `labels` (label sets, shape (sets, n)), vectorised."""
    pred = w.predicted
    k = w.calibrated.shape[1]
    out: dict[str, np.ndarray] = {}
    for m in metrics:
        if m == "accuracy":
            out[m] = (labels == pred).mean(1)
        elif m == "roc_auc":
            out[m] = _auc_of_sets(w.proba[:, 1], labels == 1)
        else:
            classes = [1] if m == "f1" else range(k)
            per_class = []
            for c in classes:
                hit, said = labels == c, pred == c
                tp = (hit & said).sum(1)
                denominator = said.sum() + hit.sum(1)
                per_class.append(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0))
            out[m] = np.mean(per_class, axis=0)
    return out


def _auc_of_sets(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each label set against the same scores (average ranks for ties)."""
    ranks = pd.Series(score).rank(method="average").to_numpy()
    n_pos = positive.sum(1).astype("float64")
    n_neg = positive.shape[1] - n_pos
    u = positive.astype("float64") @ ranks - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos * n_neg > 0, u / (n_pos * n_neg), 0.5)


def _cbpe_sampling_var(
    metrics: list[str], w: _Window, seed: int, simulations: int = SIMULATIONS
) -> dict[str, float]:
    """The realised metrics' variance over label sets drawn from the calibrated probabilities.

    Past SIMULATED_ROWS rows the label sets are drawn for a uniform subset of that many, and
    the variance scaled by subset / rows: each metric is a mean-like statistic whose variance
    falls as 1 / rows, and the subset keeps the cost flat at any window size."""
    rng = np.random.default_rng(seed)
    n = len(w.predicted)
    scale = 1.0
    if n > SIMULATED_ROWS:
        rows = np.sort(rng.choice(n, size=SIMULATED_ROWS, replace=False))
        w = _Window(w.calibrated[rows], w.predicted[rows], w.proba[rows])
        scale = SIMULATED_ROWS / n
    cumulative = np.cumsum(w.calibrated, axis=1)
    cumulative[:, -1] = 1.0
    draws = rng.random((simulations, len(w.predicted), 1))
    labels = (draws > cumulative[None, :, :]).sum(2)
    return {m: scale * float(np.var(v)) for m, v in _realised(metrics, labels, w).items()}


# ---------------------------------------------------------------- estimating
def _check_window(est: PerformanceEstimator, features, prediction, proba) -> int:
    missing = [c for c in est.feature_names if c not in features.columns]
    if missing:
        raise EstimationError(
            f"the window lacks the model's feature columns {missing}; it must carry every "
            f"feature the model was trained on ({est.feature_names})"
        )
    n = len(features)
    if n == 0:
        raise EstimationError("the window has no rows: nothing to estimate")
    if len(np.asarray(prediction)) != n:
        raise EstimationError(f"{len(np.asarray(prediction))} predictions for {n} feature rows")
    if est.method == "cbpe":
        shape = None if proba is None else np.shape(proba)
        if shape != (n, len(est.classes)):
            raise EstimationError(
                f"probabilities of shape {shape} for {n} rows and {len(est.classes)} classes; "
                "pass predict_proba's output in the model's classes_ order"
            )
    return n


def _sample(n: int, max_rows: int, seed: int) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
