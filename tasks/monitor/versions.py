"""Each serving version's predictions in a window, and how far they are from the stable one's.

While a canary runs, two bento versions answer the same traffic side by side, so their answers
should be distributed alike: a candidate that handles a feature differently at serving, or loads
a wrong preprocessing artefact, answers validly but differently, which no 5xx ratio shows. The
monitor reduces each version's captured predictions to their distribution (quantiles and mean
for regression, the share of each predicted class for classifiers) and scores every other
version against the stable one (the release serving) with the monitor's drift engine: normed
Wasserstein on regression predictions, Jensen-Shannon on predicted classes. Both grow with the
difference, so one threshold, `monitor.version_drift_threshold`, reads the same either way; the
Argo canary's analysis compares the canary's score with it.

A version is named by its bento version (the part after `:`), which is the image tag, BentoML's
`service_version` label and the argument the Rollout passes to its analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from config.loader import Project
from tasks.monitor.drift_stats import (
    CATEGORICAL,
    NUMERIC,
    CategoricalSide,
    DriftStat,
    NumericSide,
    column_drift,
)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
REGRESSION_METHOD = "wasserstein"  # normed by the stable version's spread
CLASSIFIER_METHOD = "jensenshannon"


@dataclass(frozen=True)
class VersionPredictions:
    """One version's predictions in the window and, for a version other than the stable one
    with enough rows on both sides, their drift against the stable version's."""

    version: str
    bento: str
    rows: int
    stable: bool
    mean: float | None = None  # regression
    quantiles: tuple[tuple[float, float], ...] = ()  # regression: (q, value)
    class_shares: tuple[tuple[str, float], ...] = ()  # classifiers: (class, share of rows)
    drift: DriftStat | None = None


def version_of(bento: str) -> str:
    """`name:version` -> `version`; a tag without one is its own name."""
    return bento.rpartition(":")[2] or bento


def compare_versions(
    project: Project, frame: pd.DataFrame, stable_bento: str | None
) -> tuple[VersionPredictions, ...]:
    """Every version that answered in `frame` (a captured window), the stable one first.

    Drift is measured only when both the version and the stable one answered at least
    `monitor.min_rows` rows: below that a score is noise, and the analysis would judge noise.
    """
    if frame.empty or "bento" not in frame or "prediction" not in frame:
        return ()
    regression = project.config.data.task == "regression"
    min_rows = project.config.monitor.min_rows
    threshold = project.config.monitor.version_drift_threshold
    groups = {str(bento): rows["prediction"] for bento, rows in frame.groupby("bento", sort=True)}
    sides = {bento: _side(values, regression) for bento, values in groups.items()}
    stable = sides.get(stable_bento) if stable_bento is not None else None
    order = sorted(groups, key=lambda bento: (bento != stable_bento, bento))
    out = []
    for bento in order:
        side, is_stable = sides[bento], bento == stable_bento
        drift = None
        if not is_stable and stable is not None and min(side.n, stable.n) >= min_rows:
            kind, method = (
                (NUMERIC, REGRESSION_METHOD) if regression else (CATEGORICAL, CLASSIFIER_METHOD)
            )
            drift = column_drift(kind, stable, side, method, threshold)
        out.append(
            VersionPredictions(
                version=version_of(bento),
                bento=bento,
                rows=len(groups[bento]),
                stable=is_stable,
                drift=drift,
                **_distribution(side),
            )
        )
    return tuple(out)


def _side(values: pd.Series, regression: bool) -> NumericSide | CategoricalSide:
    if regression:
        return NumericSide.of(pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64))
    return CategoricalSide.of(values.dropna().astype(str))


def _distribution(side: NumericSide | CategoricalSide) -> dict:
    if side.n == 0:
        return {}
    if isinstance(side, NumericSide):
        points = np.quantile(side.sorted(), QUANTILES)
        return {
            "mean": side.mean,
            "quantiles": tuple(zip(QUANTILES, map(float, points), strict=True)),
        }
    shares = side.counts / side.n
    return {"class_shares": tuple(zip(side.values.tolist(), map(float, shares), strict=True))}
