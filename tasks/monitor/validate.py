"""Validate a window before any check runs: bad data becomes a named verdict, never a traceback.

Every problem is a `Finding` with a verdict name from `VERDICTS`. Errors make the window unusable
(no drift figure would mean anything); warnings let the checks run and travel with the result to
the metrics and the notice. The window's `verdict` is the most severe finding, in `VERDICTS`
order.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from config.loader import Project
from config.schema import MONITOR_DEFAULTS
from model.schema import FeatureSchema
from tasks.monitor.drift_stats import FrameProfile, build_profile

VerdictName = Literal[
    "ok",
    "empty",
    "schema_mismatch",
    "wrong_dtype",
    "insufficient_data",
    "all_nan",
    "nan_values",
    "inf_values",
    "unseen_categories",
]
# Most severe first: a window's verdict is the first of these among its findings.
VERDICTS: tuple[str, ...] = (
    "empty",
    "schema_mismatch",
    "wrong_dtype",
    "insufficient_data",
    "all_nan",
    "nan_values",
    "inf_values",
    "unseen_categories",
)
Severity = Literal["error", "warning", "info"]

MIN_ROWS = MONITOR_DEFAULTS.min_rows  # monitor.min_rows when no project is at hand
MAX_NAN_SHARE = MONITOR_DEFAULTS.max_nan_share  # above it a non-nullable feature gets `nan_values`
MAX_EXAMPLES = 5
PREDICTION_COLUMN = "prediction"
PROBA_PREFIX = "proba_"


class Finding(BaseModel):
    verdict: VerdictName
    severity: Severity
    message: str
    column: str | None = None
    share: float | None = None
    examples: list[str] = Field(default_factory=list)


class UnseenCategories(BaseModel):
    share: float
    rows: int
    examples: list[str]


class WindowVerdict(BaseModel):
    """What validation found in one frame."""

    role: Literal["reference", "current"]
    verdict: VerdictName
    usable: bool
    rows: int
    findings: list[Finding] = Field(default_factory=list)
    missing_columns: list[str] = Field(default_factory=list)
    extra_columns: list[str] = Field(default_factory=list)
    renamed: dict[str, str] = Field(default_factory=dict, description="missing -> likely new name")
    nan_shares: dict[str, float] = Field(default_factory=dict, description="columns with NaN")
    inf_shares: dict[str, float] = Field(default_factory=dict, description="columns with inf")
    unseen: dict[str, UnseenCategories] = Field(default_factory=dict)

    @property
    def verdicts(self) -> list[str]:
        """Every distinct verdict among errors and warnings, most severe first."""
        found = {f.verdict for f in self.findings if f.severity != "info"}
        return [v for v in VERDICTS if v in found]

    def summary(self) -> str:
        problems = [f for f in self.findings if f.severity != "info"]
        if not problems:
            return f"{self.role}: ok ({self.rows} rows)"
        return f"{self.role}: " + "; ".join(f.message for f in problems)


class _Spec(BaseModel):
    numeric: list[str]
    categorical: list[str]
    nullable: list[str] = Field(default_factory=list)
    known: set[str] = Field(default_factory=set)  # non-feature columns a window may carry
    categories: dict[str, list[str]] = Field(default_factory=dict)
    min_rows: int = MIN_ROWS


def _spec(source: Project | FeatureSchema) -> _Spec:
    if isinstance(source, FeatureSchema):
        return _Spec(
            numeric=source.numeric,
            categorical=source.categorical,
            nullable=source.nullable,
            known={source.target},
            categories=source.categories,
        )
    numeric, categorical = source.features
    data = source.config.data
    known = {data.target, data.id_column, data.timestamp_column, *data.drop} - {None}
    return _Spec(
        numeric=numeric,
        categorical=categorical,
        nullable=data.nullable,
        known=known,  # type: ignore[arg-type]
        min_rows=source.config.monitor.min_rows,
    )


def validate_window(
    frame: pd.DataFrame, source: Project | FeatureSchema, **options: Any
) -> WindowVerdict:
    """Validate `frame` against the configured features (or a model's `FeatureSchema`);
    `options` are `inspect_window`'s (role, known_categories, min_rows, max_nan_share, ...)."""
    return inspect_window(frame, source, **options)[0]


def inspect_window(
    frame: pd.DataFrame,
    source: Project | FeatureSchema,
    *,
    role: Literal["reference", "current"] = "current",
    known_categories: Mapping[str, Collection[str]] | None = None,
    min_rows: int | None = None,
    max_nan_share: float = MAX_NAN_SHARE,
    prediction_column: str = PREDICTION_COLUMN,
    proba_prefix: str = PROBA_PREFIX,
    workers: int = 2,
) -> tuple[WindowVerdict, FrameProfile | None]:
    """`validate_window`, also returning the frame's profile (None when columns are unusable).

    The checks reuse the profile, so a window's columns are reduced once.
    """
    spec = _spec(source)
    floor = spec.min_rows if min_rows is None else min_rows
    if known_categories is None and spec.categories:
        known_categories = spec.categories
    features = spec.numeric + spec.categorical
    findings: list[Finding] = []
    out = WindowVerdict(role=role, verdict="ok", usable=True, rows=len(frame))

    # 1. an empty window
    if len(frame) == 0 or len(frame.columns) == 0:
        findings.append(Finding(verdict="empty", severity="error", message=f"{role} is empty"))
        return _finish(out, findings), None

    # 2. schema: missing, extra and likely renamed columns
    present = [str(c) for c in frame.columns]
    missing = [c for c in features if c not in frame.columns]
    extra = [
        c
        for c in present
        if c not in features
        and c not in spec.known
        and c != prediction_column
        and not c.startswith(proba_prefix)
    ]
    renamed = {}
    for column in missing:
        close = difflib.get_close_matches(column, extra, n=1, cutoff=0.75)
        if close:
            renamed[column] = close[0]
    out.missing_columns, out.extra_columns, out.renamed = missing, extra, renamed
    for column in missing:
        hint = f" (renamed to {renamed[column]!r}?)" if column in renamed else ""
        findings.append(
            Finding(
                verdict="schema_mismatch",
                severity="error",
                column=column,
                message=f"{role} lacks feature column {column!r}{hint}",
            )
        )
    if extra:
        findings.append(
            Finding(
                verdict="schema_mismatch",
                severity="info",
                message=f"{role} carries columns that are not configured: {extra}",
                examples=extra[:MAX_EXAMPLES],
            )
        )
    duplicated = sorted({c for c in present if present.count(c) > 1} & set(features))
    for column in duplicated:
        findings.append(
            Finding(
                verdict="schema_mismatch",
                severity="error",
                column=column,
                message=f"{role} has column {column!r} more than once",
            )
        )

    # 3. numeric features whose values are not numbers
    for column in spec.numeric:
        if column in missing or column in duplicated:
            continue
        problem = _numeric_problem(frame[column])
        if problem:
            share, examples, what = problem
            findings.append(
                Finding(
                    verdict="wrong_dtype",
                    severity="error",
                    column=column,
                    share=share,
                    examples=examples,
                    message=f"{role} column {column!r} should be numeric but holds {what}",
                )
            )

    # 4. too few rows to say anything
    if len(frame) < floor:
        findings.append(
            Finding(
                verdict="insufficient_data",
                severity="error",
                message=f"{role} has {len(frame)} rows; at least {floor} are needed",
            )
        )
    if any(f.severity == "error" for f in findings):
        return _finish(out, findings), None

    # 5. content: NaN, inf and unseen categories, from the frame's profile
    profile = build_profile(frame, spec.numeric, spec.categorical, workers=workers)
    rows = len(frame)
    for column in features:
        side = profile.side(column)
        if side.missing:
            out.nan_shares[column] = side.missing / rows
        infinite = getattr(side, "infinite", 0)
        if infinite:
            out.inf_shares[column] = infinite / rows
        if side.n == 0:
            findings.append(
                Finding(
                    verdict="all_nan",
                    severity="error",
                    column=column,
                    share=1.0,
                    message=f"{role} column {column!r} has no usable value (all NaN or inf)",
                )
            )
            continue
        nan_share = side.missing / rows
        if nan_share > max_nan_share and column not in spec.nullable:
            findings.append(
                Finding(
                    verdict="nan_values",
                    severity="warning",
                    column=column,
                    share=nan_share,
                    message=f"{role} column {column!r} is {nan_share:.1%} NaN "
                    f"(limit {max_nan_share:.1%})",
                )
            )
        if infinite:
            findings.append(
                Finding(
                    verdict="inf_values",
                    severity="warning",
                    column=column,
                    share=infinite / rows,
                    message=f"{role} column {column!r} has {infinite} infinite values "
                    f"({infinite / rows:.2%}); drift tests ignore them",
                )
            )
        if side.n < floor:
            findings.append(
                Finding(
                    verdict="insufficient_data",
                    severity="warning",
                    column=column,
                    message=f"{role} column {column!r} has {side.n} usable values, "
                    f"fewer than {floor}: its drift is not tested",
                )
            )
    if role == "current" and known_categories:
        for column in spec.categorical:
            known = known_categories.get(column)
            if known is None:
                continue
            side = profile.categorical[column]
            unseen = ~np.isin(side.values, np.asarray(list(known), dtype=object))
            if not unseen.any():
                continue
            count = int(side.counts[unseen].sum())
            top = np.argsort(-side.counts[unseen], kind="stable")[:MAX_EXAMPLES]
            examples = [str(v) for v in side.values[unseen][top]]
            out.unseen[column] = UnseenCategories(share=count / rows, rows=count, examples=examples)
            findings.append(
                Finding(
                    verdict="unseen_categories",
                    severity="warning",
                    column=column,
                    share=count / rows,
                    examples=examples,
                    message=f"{role} column {column!r} has categories never seen in the "
                    f"reference in {count / rows:.1%} of rows, e.g. {examples}",
                )
            )
    usable = not any(f.severity == "error" for f in findings)
    return _finish(out, findings), profile if usable else None


def _numeric_problem(series: pd.Series) -> tuple[float, list[str], str] | None:
    """(share of non-null values that are not numbers, examples, description) or None."""
    dtype = series.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return 1.0, [str(v) for v in series.dropna().head(MAX_EXAMPLES)], f"{dtype} values"
    if pd.api.types.is_numeric_dtype(dtype):
        return None
    present = series.notna()
    coerced = pd.to_numeric(series, errors="coerce")
    bad = present & coerced.isna()
    if not bad.any():
        return None
    shown = series[bad].astype(str).drop_duplicates().head(MAX_EXAMPLES).tolist()
    share = float(bad.sum() / max(int(present.sum()), 1))
    return share, shown, f"{share:.1%} non-numeric values, e.g. {shown}"


def _finish(out: WindowVerdict, findings: list[Finding]) -> WindowVerdict:
    out.findings = findings
    errors = {f.verdict for f in findings if f.severity == "error"}
    warnings = {f.verdict for f in findings if f.severity == "warning"}
    out.usable = not errors
    primary = next((v for v in VERDICTS if v in errors), None) or next(
        (v for v in VERDICTS if v in warnings), "ok"
    )
    out.verdict = primary  # type: ignore[assignment]
    return out
