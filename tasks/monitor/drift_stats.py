"""Per-column drift statistics with numpy/scipy, defined exactly as Evidently 0.7.23 defines them.

Evidently's `DataDriftPreset` computes each column three times and, on every call, picks its
default test with a `concat` + `nunique` pass; the statistic itself is under a third of its time.
Here each column is reduced once to a side: `NumericSide` (finite values, sorted once, kept) or
`CategoricalSide` (value counts). The reference sides form a `FrameProfile` that can be built once
per data rev, saved and reloaded, so a monitor run only pays for the current window. Sorted
arrays make normed Wasserstein a linear merge instead of three sorts.

Method choice, formulas, default thresholds and the direction of each comparison mirror
`evidently.legacy.calculations.stattests` (registry `_get_default_stattest`, `get_binned_data`,
the `ks`, `wasserstein`, `jensenshannon`, `psi`, `chisquare` and `z` tests). Any other method a
config names is run through Evidently's own `StatTest`. `tests/tasks/monitor/test_checks.py`
proves the scores and verdicts equal the preset's. scipy and Evidently are imported in the
functions of the statistics that need them: a run pays only for its columns' methods.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from model.frames import feature_frame

Kind = Literal["numeric", "categorical"]
NUMERIC: Kind = "numeric"
CATEGORICAL: Kind = "categorical"

PROFILE_FORMAT = 1
# Evidently's default-method rules (registry._get_default_stattest, utils.get_binned_data).
SMALL_REFERENCE_ROWS = 1000  # at or below: p-value tests (K-S, chi-square, z)
LOW_CARDINALITY = 5  # numeric columns with at most this many values count as discrete
HISTOGRAM_MIN_UNIQUE = 20  # binned tests histogram numeric columns above this many values
STD_FLOOR = 0.001  # normed Wasserstein divides by max(std(reference), this)

# Evidently StatTest name -> default threshold; tests assert these equal its registry.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "wasserstein": 0.1,
    "jensenshannon": 0.1,
    "psi": 0.1,
    "ks": 0.05,
    "chisquare": 0.05,
    "z": 0.05,
}
# Which column kinds each native method accepts when a config names it (Evidently's registry).
ALLOWED_KINDS: dict[str, frozenset[str]] = {
    "wasserstein": frozenset({NUMERIC}),
    "ks": frozenset({NUMERIC}),
    "jensenshannon": frozenset({NUMERIC, CATEGORICAL}),
    "psi": frozenset({NUMERIC, CATEGORICAL}),
    "chisquare": frozenset({CATEGORICAL}),
    "z": frozenset({CATEGORICAL}),
}
P_VALUE_METHODS = frozenset({"ks", "chisquare", "z"})


# ---------------------------------------------------------------- one column, one frame
@dataclass
class NumericSide:
    """A numeric column reduced to what every drift test needs: its finite values and moments."""

    values: np.ndarray  # finite values; ascending once `sorted()` has run
    rows: int
    missing: int  # NaN / null
    infinite: int
    std: float  # population std (ddof 0) of the finite values, in their original order
    mean: float
    is_sorted: bool = False
    _n_unique: int | None = None

    @classmethod
    def of(cls, values: np.ndarray) -> NumericSide:
        x = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(x)
        n_finite = int(np.count_nonzero(finite))
        missing = int(np.count_nonzero(np.isnan(x)))
        if n_finite < x.size:
            x = x[finite]
        std = float(np.std(x)) if x.size else math.nan
        mean = float(np.mean(x)) if x.size else math.nan
        return cls(
            values=x,
            rows=int(finite.size),
            missing=missing,
            infinite=int(finite.size) - n_finite - missing,
            std=std,
            mean=mean,
        )

    @property
    def n(self) -> int:
        return int(self.values.size)

    def sorted(self) -> np.ndarray:
        if not self.is_sorted:
            self.values = np.sort(self.values)  # a new array: never sorts the caller's frame
            self.is_sorted = True
        return self.values

    def uniques(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct values (ascending) and their counts."""
        s = self.sorted()
        if s.size == 0:
            return s, np.zeros(0, dtype=np.int64)
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        counts = np.diff(np.append(starts, s.size))
        return s[starts], counts

    @property
    def n_unique(self) -> int:
        if self._n_unique is None:
            s = self.sorted()
            self._n_unique = int(np.count_nonzero(s[1:] != s[:-1])) + 1 if s.size else 0
        return self._n_unique


@dataclass
class CategoricalSide:
    """A categorical column reduced to its category counts (categories are strings)."""

    values: np.ndarray  # distinct non-null categories, ascending
    counts: np.ndarray  # int64, aligned with values
    rows: int
    missing: int

    @classmethod
    def of(cls, series: pd.Series) -> CategoricalSide:
        counted = series.value_counts(dropna=False, sort=False)
        null = pd.isna(counted.index)
        known = counted[~null]
        values = known.index.to_numpy(dtype=object)
        order = np.argsort(values) if values.size else np.zeros(0, dtype=np.int64)
        return cls(
            values=values[order],
            counts=known.to_numpy(dtype=np.int64)[order],
            rows=len(series),
            missing=int(counted[null].sum()),
        )

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def n_unique(self) -> int:
        return int(self.values.size)

    def uniques(self) -> tuple[np.ndarray, np.ndarray]:
        return self.values, self.counts


Side = NumericSide | CategoricalSide


def numeric_values(series: pd.Series) -> np.ndarray:
    """Float64 values of a numeric feature, as `model.frames.feature_frame` makes them."""
    if series.dtype == np.float64:
        return series.to_numpy()
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def categorical_values(series: pd.Series) -> pd.Series:
    """String categories (NaN kept), as `model.frames.feature_frame` makes them."""
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in (
        "string",
        "empty",
    ):
        return series

    return feature_frame(series.to_frame(), [], [series.name])[series.name]


# ---------------------------------------------------------------- one frame
@dataclass
class FrameProfile:
    """The drift-relevant summary of a frame: one side per feature column.

    Built from the reference once per data rev (`key`), saved with `save`, reloaded with `load`;
    the sorted arrays it keeps are what makes a monitor run cheap.
    """

    rows: int
    numeric: dict[str, NumericSide]
    categorical: dict[str, CategoricalSide]
    key: str | None = None
    format: int = PROFILE_FORMAT

    def side(self, column: str) -> Side:
        return self.numeric[column] if column in self.numeric else self.categorical[column]

    def covers(self, numeric: Iterable[str], categorical: Iterable[str]) -> bool:
        return set(numeric) <= set(self.numeric) and set(categorical) <= set(self.categorical)

    def known_categories(self) -> dict[str, frozenset[str]]:
        return {c: frozenset(side.values.tolist()) for c, side in self.categorical.items()}

    def prepare(self, workers: int = 2) -> FrameProfile:
        """Sort every numeric column now (in parallel), e.g. before saving."""
        _map(workers, lambda side: side.sorted(), list(self.numeric.values()))
        return self

    def save(self, path: Path) -> Path:
        self.prepare()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path, key: str | None = None) -> FrameProfile | None:
        """The saved profile, or None when absent, of another format, or for another key."""
        if not path.is_file():
            return None
        with path.open("rb") as fh:
            profile = pickle.load(fh)  # our own cache file, written by `save`
        if not isinstance(profile, cls) or profile.format != PROFILE_FORMAT:
            return None
        if key is not None and profile.key != key:
            return None
        return profile


def build_profile(
    frame: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    *,
    key: str | None = None,
    workers: int = 2,
    sort: bool = False,
) -> FrameProfile:
    """Reduce the feature columns of `frame` to sides (columns must exist)."""

    def num(column: str) -> NumericSide:
        side = NumericSide.of(numeric_values(frame[column]))
        if sort:
            side.sorted()
        return side

    def cat(column: str) -> CategoricalSide:
        return CategoricalSide.of(categorical_values(frame[column]))

    jobs: list[Callable[[], Side]] = [lambda c=c: num(c) for c in numeric]
    jobs += [lambda c=c: cat(c) for c in categorical]
    sides = _map(_workers_for(workers, len(frame)), lambda job: job(), jobs)
    return FrameProfile(
        rows=len(frame),
        numeric=dict(zip(numeric, sides[: len(numeric)], strict=True)),
        categorical=dict(zip(categorical, sides[len(numeric) :], strict=True)),  # type: ignore[arg-type]
        key=key,
    )


# ---------------------------------------------------------------- method choice
def combined_unique(reference: Side, current: Side, cap: int = LOW_CARDINALITY) -> int:
    """Distinct values of reference and current together, exact up to `cap` (then `cap + 1`)."""
    if isinstance(reference, NumericSide) and reference.n_unique > cap:
        return cap + 1
    union = np.union1d(reference.uniques()[0], current.uniques()[0])
    return min(int(union.size), cap + 1) if isinstance(reference, NumericSide) else union.size


def default_method(kind: Kind, reference: Side, current: Side) -> str:
    """The test Evidently's `get_stattest` picks when no method is configured."""
    if kind == CATEGORICAL and reference.n > SMALL_REFERENCE_ROWS:
        return "jensenshannon"
    n_values = combined_unique(reference, current)
    if reference.n <= SMALL_REFERENCE_ROWS:
        if kind == NUMERIC and n_values > LOW_CARDINALITY:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    return "jensenshannon" if n_values <= LOW_CARDINALITY else "wasserstein"


def check_method(method: str, kind: Kind) -> None:
    """Raise ValueError when `method` is no Evidently test for this column kind."""
    if method in ALLOWED_KINDS:
        if kind not in ALLOWED_KINDS[method]:
            allowed = sorted(m for m, kinds in ALLOWED_KINDS.items() if kind in kinds)
            raise ValueError(f"drift method {method!r} does not apply to {kind} columns: {allowed}")
        return
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest

    get_registered_stattest(method, _column_type(kind))  # raises Evidently's own ValueError


# ---------------------------------------------------------------- the statistics
@dataclass(frozen=True)
class DriftStat:
    method: str  # Evidently's StatTest name
    score: float
    threshold: float
    drifted: bool
    reference_rows: int
    current_rows: int

    @property
    def is_p_value(self) -> bool:
        return self.method in P_VALUE_METHODS


def column_drift(
    kind: Kind,
    reference: Side,
    current: Side,
    method: str | None = None,
    threshold: float | None = None,
) -> DriftStat:
    """One column's drift score and verdict, as Evidently's `ValueDrift` would compute them."""
    name = method or default_method(kind, reference, current)
    if name not in DEFAULT_THRESHOLDS:
        return _evidently_stattest(name, kind, reference, current, threshold)
    limit = DEFAULT_THRESHOLDS[name] if threshold is None else float(threshold)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "wasserstein":
            score = normed_wasserstein(reference, current)  # type: ignore[arg-type]
        elif name == "ks":
            score = ks_p_value(reference, current)  # type: ignore[arg-type]
        elif name == "jensenshannon":
            score = jensen_shannon(kind, reference, current)
        elif name == "psi":
            score = psi(kind, reference, current)
        elif name == "chisquare":
            score = chi_square_p_value(reference, current)
        else:
            score = z_p_value(reference, current)
    if name in ("chisquare", "z"):
        drifted = score < limit
    elif name == "ks":
        drifted = score <= limit
    else:
        drifted = score >= limit
    return DriftStat(name, float(score), limit, bool(drifted), reference.n, current.n)


def normed_wasserstein(reference: NumericSide, current: NumericSide) -> float:
    """`scipy.stats.wasserstein_distance(ref, cur) / max(std(ref), 0.001)`, from sorted arrays.

    scipy argsorts both samples, merge-sorts their concatenation and binary-searches every value
    in both; with both sides already sorted, a stable argsort of the concatenation is a linear
    merge and the CDFs are running counts. The terms and their summation equal scipy's.
    """
    u, v = reference.sorted(), current.sorted()
    n, m = u.size, v.size
    both = np.concatenate((u, v))
    order = np.argsort(both, kind="stable")
    merged = both[order]
    del both
    u_counts = np.cumsum(order[:-1] < n)
    del order
    v_counts = np.arange(1, n + m, dtype=np.int64) - u_counts
    cdf_gap = np.abs(u_counts / n - v_counts / m)
    distance = float(np.vecdot(cdf_gap, np.diff(merged)))
    return distance / max(reference.std, STD_FLOOR)


def ks_p_value(reference: NumericSide, current: NumericSide) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(reference.sorted(), current.sorted())[1])


def _aligned_counts(reference: Side, current: Side) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of the two sides' values (ascending) and each side's count per value."""
    r_values, r_counts = reference.uniques()
    c_values, c_counts = current.uniques()
    keys = np.union1d(r_values, c_values)
    r = np.zeros(keys.size, dtype=np.int64)
    c = np.zeros(keys.size, dtype=np.int64)
    r[np.searchsorted(keys, r_values)] = r_counts
    c[np.searchsorted(keys, c_values)] = c_counts
    return keys, r, c


def _binned_shares(
    kind: Kind, reference: Side, current: Side, fill_zeroes: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's `get_binned_data`: Sturges bins over both samples, or shares per value."""
    if kind == NUMERIC and reference.n_unique > HISTOGRAM_MIN_UNIQUE:
        r_vals, c_vals = reference.values, current.values  # type: ignore[union-attr]
        bins = np.histogram_bin_edges(np.concatenate((r_vals, c_vals)), bins="sturges")
        r_share = np.histogram(r_vals, bins)[0] / r_vals.size
        c_share = np.histogram(c_vals, bins)[0] / c_vals.size
    else:
        _, r, c = _aligned_counts(reference, current)
        r_share, c_share = r / reference.n, c / current.n
    if fill_zeroes:
        for share in (r_share, c_share):
            smallest = share[share != 0].min()
            np.place(share, share == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)
    return r_share, c_share


def jensen_shannon(kind: Kind, reference: Side, current: Side) -> float:
    from scipy.spatial import distance

    return float(distance.jensenshannon(*_binned_shares(kind, reference, current, False)))


def psi(kind: Kind, reference: Side, current: Side) -> float:
    r, c = _binned_shares(kind, reference, current, True)
    return float(np.sum((r - c) * np.log(r / c)))


def chi_square_p_value(reference: Side, current: Side) -> float:
    from scipy.stats import chisquare

    _, r, c = _aligned_counts(reference, current)
    expected = r * (current.n / reference.n)
    return float(chisquare(c, expected)[1])


def z_p_value(reference: Side, current: Side) -> float:
    """Two-proportion z-test on 'first value (in sort order)' against the rest."""
    from scipy.stats import norm

    keys, r, c = _aligned_counts(reference, current)
    if reference.n_unique == 1 and current.n_unique == 1 and keys.size == 1:
        return 1.0
    n1, n2 = reference.n, current.n
    p1 = float(n1 - r[0]) / n1
    p2 = float(n2 - c[0]) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - norm.cdf(np.abs(z))))


def _column_type(kind: Kind):
    from evidently.legacy.core import ColumnType

    return ColumnType.Numerical if kind == NUMERIC else ColumnType.Categorical


def _expand(side: Side) -> pd.Series:
    if isinstance(side, NumericSide):
        return pd.Series(side.values)
    return pd.Series(np.repeat(side.values, side.counts), dtype=object)


def _evidently_stattest(
    method: str, kind: Kind, reference: Side, current: Side, threshold: float | None
) -> DriftStat:
    """Methods not implemented here run through Evidently's own StatTest (same inputs)."""
    from evidently.legacy.calculations.stattests.registry import get_stattest

    ref, cur = _expand(reference), _expand(current)
    column_type = _column_type(kind)
    test = get_stattest(ref, cur, column_type, method)
    result = test(ref, cur, column_type, threshold)
    return DriftStat(
        method=test.name,
        score=float(result.drift_score),
        threshold=float(result.actual_threshold),
        drifted=bool(result.drifted),
        reference_rows=reference.n,
        current_rows=current.n,
    )


# ---------------------------------------------------------------- all columns
@dataclass(frozen=True)
class ColumnJob:
    column: str
    kind: Kind
    method: str | None = None
    threshold: float | None = None


def drift_table(
    reference: FrameProfile,
    current: FrameProfile,
    jobs: list[ColumnJob],
    *,
    min_values: int = 1,
    workers: int = 2,
) -> dict[str, DriftStat | None]:
    """Every column's drift, spread over `workers` threads (numpy sorts release the GIL).

    A column maps to None when either side has fewer than `min_values` usable values: below the
    smallest reliable window the answer is "insufficient data", not a guess.
    """

    def one(job: ColumnJob) -> DriftStat | None:
        ref, cur = reference.side(job.column), current.side(job.column)
        if min(ref.n, cur.n) < max(min_values, 1):
            return None
        return column_drift(job.kind, ref, cur, job.method, job.threshold)

    # Largest columns first, so two threads finish together.
    ordered = sorted(jobs, key=lambda j: -current.side(j.column).n * (j.kind == NUMERIC))
    results = _map(_workers_for(workers, max(reference.rows, current.rows)), one, ordered)
    by_column = {job.column: result for job, result in zip(ordered, results, strict=True)}
    return {job.column: by_column[job.column] for job in jobs}


PARALLEL_MIN_ROWS = 20_000  # below this, thread hand-offs cost more than they save


def _workers_for(workers: int, rows: int) -> int:
    return workers if rows >= PARALLEL_MIN_ROWS else 1


def _map(workers: int, fn, items: list) -> list:
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drift") as pool:
        return list(pool.map(fn, items))
