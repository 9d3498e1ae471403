"""Model quality estimated on a window before its labels arrive, and checked once they do.

The serving model's `PerformanceEstimator` (`model.performance`, fitted by the DVC stage
`estimate` and stored with the model) reads the window's features, predictions and captured
probabilities. Where labels have arrived, the same estimate on the labelled rows is set beside the
realised value, so every window measures the estimator as well as the model.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from config.schema import METRICS
from tasks.monitor.quality import proba_matrix
from tasks.monitor.results import EstimatedQuality, MetricEstimate, QualityResult
from tasks.monitor.settings import CheckSettings

log = logging.getLogger("driftloop.estimation")


def estimate_quality(
    current: pd.DataFrame,
    project: Project,
    estimator: Any,
    *,
    classes: list[Any] | None = None,
    quality: QualityResult | None = None,
    settings: CheckSettings | None = None,
) -> EstimatedQuality | None:
    """The estimate of each metric the estimator knows, with its band; None when the model has
    no estimator or the window lacks what it reads (a logged reason, never an error)."""
    if estimator is None or current.empty:
        return None
    s = settings or CheckSettings.from_project(project)
    cfg = project.config
    sample = uniform_rows(current, cfg.estimate.max_rows, cfg.estimate.seed)
    try:
        scores = _row_scores(sample, project, estimator, s, classes)
        estimates = estimator.summarise(scores)
    except (KeyError, ValueError, TypeError) as exc:
        log.warning("quality not estimated: %s", str(exc).split("\n")[0])
        return None
    if not estimates:
        return None
    outside = _outside_share(sample, project, estimator)
    realised = _realised(quality)
    on_labelled = _on_labelled(sample, estimator, scores, estimates, quality, s.min_labels)
    metrics = [
        MetricEstimate(
            name=e.metric,
            value=e.value,
            lower=e.lower,
            upper=e.upper,
            greater_is_better=METRICS[e.metric][1],
            realised=realised.get(e.metric),
            error=_error(on_labelled.get(e.metric), realised.get(e.metric)),
        )
        for e in estimates
    ]
    result = EstimatedQuality(
        method=estimator.method,
        primary=cfg.primary_metric,
        confidence=estimator.confidence,
        rows=len(sample),
        metrics=metrics,
        limit=cfg.monitor.quality_limit,
        outside_share=outside,
    )
    result.limit_breached = breached(result)
    return result


def breached(estimated: EstimatedQuality) -> bool:
    """The primary estimate past the limit beyond its band: the whole band on the wrong side."""
    primary = next((m for m in estimated.metrics if m.name == estimated.primary), None)
    if estimated.limit is None or primary is None:
        return False
    if primary.greater_is_better:
        return primary.upper < estimated.limit
    return primary.lower > estimated.limit


def _row_scores(
    frame: pd.DataFrame,
    project: Project,
    estimator: Any,
    s: CheckSettings,
    classes: list[Any] | None,
) -> Any:
    """The estimator's per-row view of `frame`'s features, predictions and probabilities."""
    numeric, categorical = project.features
    features = frame[numeric + categorical]
    prediction = frame[s.prediction_column]
    proba = None
    if project.config.data.task != "regression":
        known = classes if classes is not None else getattr(estimator, "classes", None)
        if known is None:
            raise ValueError("the serving model's classes are unknown")
        proba, missing = proba_matrix(frame, list(known), s.proba_prefix, ordered=True)
        if proba is None:
            raise ValueError(missing or "the window has no probabilities")
    else:
        prediction = prediction.astype("float64")
    return estimator.row_scores(features, prediction, proba)


def uniform_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows of `frame`, a seeded uniform sample in their order: taken before
    any column is read, so a window of any size costs the sample's rows."""
    if len(frame) <= max_rows:
        return frame
    rng = np.random.default_rng(seed)
    return frame.iloc[np.sort(rng.choice(len(frame), size=max_rows, replace=False))]


def _outside_share(sample: pd.DataFrame, project: Project, estimator: Any) -> float:
    """The share of the sampled rows the estimator never learned from."""
    numeric, categorical = project.features
    return estimator.outside_share(sample[numeric + categorical])


def _realised(quality: QualityResult | None) -> dict[str, float]:
    if quality is None or quality.status != "ok":
        return {}
    return {m.name: m.current for m in quality.metrics if m.current is not None}


def _on_labelled(
    sample: pd.DataFrame,
    estimator: Any,
    scores: Any,
    whole: list[Any],
    quality: QualityResult | None,
    min_labels: int,
) -> dict[str, float]:
    """The estimate on the sample's labelled rows, to set beside the realised value: the
    estimator's own error. The same per-row scores, so no second pass of its models."""
    if quality is None or quality.status != "ok":
        return {}
    known = (sample[quality.target].notna() & sample[quality.prediction_column].notna()).to_numpy()
    if known.all():
        return {e.metric: e.value for e in whole}
    if known.sum() < min_labels:
        return {}
    try:
        return {e.metric: e.value for e in estimator.summarise(scores, np.flatnonzero(known))}
    except (ValueError, IndexError) as exc:
        log.warning("estimate on the labelled rows failed: %s", str(exc).split("\n")[0])
        return {}


def _error(estimate: float | None, realised: float | None) -> float | None:
    return None if estimate is None or realised is None else estimate - realised


@task(cache_policy=NO_CACHE)
def estimate_window(
    current: pd.DataFrame,
    project: Project,
    estimator: Any,
    classes: list[Any] | None = None,
    quality: QualityResult | None = None,
) -> EstimatedQuality | None:
    """`estimate_quality` on the captured window, its label column named as the target."""
    frame = current.rename(columns={"label": project.config.data.target})
    return estimate_quality(frame, project, estimator, classes=classes, quality=quality)
