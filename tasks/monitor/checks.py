"""The monitor's checks: data drift per column and for the dataset, data quality, model quality.

`run_checks` validates both frames (`tasks.monitor.validate`), reduces each feature column once
(`tasks.monitor.drift_stats`) and computes every column's drift with Evidently's own method choice,
formulas and thresholds, without the preset's triple computation and widgets. Evidently stays the
source of truth: `engine="evidently"` runs its `DataDriftPreset` instead (the tests prove both
engines agree on scores and verdicts), and `save_report` writes its HTML report on demand.
Evidently's output is mapped to these result types in one place, `_columns_from_snapshot`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from config.loader import ConfigError, Project
from config.schema import METRICS, MONITOR_DEFAULTS
from tasks.monitor.drift_stats import (
    CATEGORICAL,
    NUMERIC,
    SMALL_REFERENCE_ROWS,
    ColumnJob,
    DriftStat,
    FrameProfile,
    Kind,
    NumericSide,
    check_method,
    drift_table,
)
from tasks.monitor.validate import (
    PREDICTION_COLUMN,
    PROBA_PREFIX,
    WindowVerdict,
    inspect_window,
)

CheckVerdict = Literal[
    "no_drift",
    "drift",
    "empty",
    "schema_mismatch",
    "wrong_dtype",
    "insufficient_data",
    "all_nan",
]
Engine = Literal["native", "evidently"]
# held_out: the serving model's own evaluation; reference_data: its training data's predictions
ReferenceSource = Literal["held_out", "reference_data"]

# Defaults until the config carries them (see `CheckSettings.from_project`).
CAPTURED_PROBABILITIES = "probabilities"  # the capture's list per row, in predict_proba order


@dataclass(frozen=True)
class CheckSettings:
    """Everything the checks read from config; the defaults are `config/schema.py`'s."""

    min_rows: int = MONITOR_DEFAULTS.min_rows
    drift_share: float = MONITOR_DEFAULTS.drift_share
    method: str | None = None  # Evidently StatTest name for every column (None: its default)
    num_method: str | None = None
    cat_method: str | None = None
    per_column_method: dict[str, str] = field(default_factory=dict)
    threshold: float | None = None  # None: the method's own default
    max_nan_share: float = MONITOR_DEFAULTS.max_nan_share
    min_labels: int = MONITOR_DEFAULTS.min_labels
    quality_limit: float | None = None
    prediction_column: str = PREDICTION_COLUMN
    proba_prefix: str = PROBA_PREFIX
    report_sample_rows: int | None = MONITOR_DEFAULTS.report_sample_rows
    workers: int = MONITOR_DEFAULTS.workers

    @classmethod
    def from_project(cls, project: Project, **overrides: Any) -> CheckSettings:
        """The `monitor` section; keys the schema does not define yet keep these defaults."""
        monitor = project.config.monitor
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            value = getattr(monitor, name, None)
            if value is not None:
                values[name] = dict(value) if isinstance(value, dict) else value
        values.update(overrides)
        settings = cls(**values)
        numeric, categorical = project.features
        settings.check_methods(
            dict.fromkeys(numeric, NUMERIC) | dict.fromkeys(categorical, CATEGORICAL)
        )
        return settings

    def method_for(self, column: str, kind: Kind) -> str | None:
        """Per-column, then per-kind, then global: Evidently's precedence."""
        typed = self.num_method if kind == NUMERIC else self.cat_method
        return self.per_column_method.get(column, typed or self.method)

    def check_methods(self, kinds: dict[str, Kind]) -> None:
        """Raise ConfigError naming the key when a configured method does not fit its columns."""
        named: list[tuple[str, str | None, Kind]] = []
        for kind, typed in ((NUMERIC, self.num_method), (CATEGORICAL, self.cat_method)):
            if kind in kinds.values():
                key = f"monitor.{kind[:3]}_method" if typed else "monitor.method"
                named.append((key, typed or self.method, kind))
        for column, method in self.per_column_method.items():
            if column in kinds:
                named.append((f"monitor.per_column_method.{column}", method, kinds[column]))
        for key, method, kind in named:
            if method is None:
                continue
            try:
                check_method(method, kind)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None


# ---------------------------------------------------------------- results
class ColumnDrift(BaseModel):
    column: str
    kind: Kind
    method: str | None = Field(description="Evidently StatTest name; None when not tested")
    score: float | None
    threshold: float | None
    drifted: bool
    status: Literal["tested", "insufficient_data"] = "tested"
    score_is_p_value: bool = False  # p-values drift when low, distances when high
    reference_values: int = 0
    current_values: int = 0

    @classmethod
    def untested(cls, column: str, kind: Kind, ref_n: int, cur_n: int) -> ColumnDrift:
        """Too few usable values on a side: reported, never guessed."""
        return cls(
            column=column,
            kind=kind,
            method=None,
            score=None,
            threshold=None,
            drifted=False,
            status="insufficient_data",
            reference_values=ref_n,
            current_values=cur_n,
        )


class ColumnQuality(BaseModel):
    column: str
    kind: Kind
    missing_share_current: float
    missing_share_reference: float
    mean_current: float | None = None
    mean_reference: float | None = None
    std_current: float | None = None
    std_reference: float | None = None
    unique_current: int | None = None
    unique_reference: int | None = None


class DataQuality(BaseModel):
    rows_current: int
    rows_reference: int
    missing_share_current: float = Field(description="NaN or inf share of all feature cells")
    missing_share_reference: float
    columns: list[ColumnQuality]


class MetricValue(BaseModel):
    name: str
    current: float | None
    reference: float | None = Field(None, description="see QualityResult.reference_source")
    greater_is_better: bool
    note: str | None = None


class QualityResult(BaseModel):
    task: str
    status: Literal["ok", "insufficient_labels"]
    target: str
    prediction_column: str
    rows: int
    labelled_rows: int
    coverage: float
    min_labels: int
    reference_labelled_rows: int | None = None
    reference_source: ReferenceSource | None = None
    primary: str
    metrics: list[MetricValue] = Field(default_factory=list)
    limit: float | None = None
    limit_breached: bool | None = None


class CheckResult(BaseModel):
    """One check of a current window against the reference."""

    verdict: CheckVerdict
    message: str
    bad_input: Literal["reference", "current"] | None = None
    validation: WindowVerdict | None = None
    reference_validation: WindowVerdict | None = None
    columns: list[ColumnDrift] = Field(default_factory=list)
    drifted_columns: int = 0
    tested_columns: int = 0
    drift_share: float = 0.0
    drift_share_threshold: float
    dataset_drift: bool = False
    data_quality: DataQuality | None = None
    quality: QualityResult | None = None
    engine: Engine = "native"
    reference_key: str | None = None
    duration_seconds: float = 0.0

    @property
    def usable(self) -> bool:
        return self.bad_input is None

    @property
    def window_verdict(self) -> str:
        """The verdict a window is published under: a problem in the traffic (NaN, inf, unseen
        categories) is named even when the checks could still run; otherwise drift or not."""
        if self.bad_input is None and self.validation is not None and self.validation.verdicts:
            return self.validation.verdicts[0]
        return self.verdict

    @property
    def exit_code(self) -> int:
        """0 no drift, 1 drift, 2 bad input (the `driftloop check` contract)."""
        if self.bad_input is not None or self.verdict not in ("drift", "no_drift"):
            return 2
        return 1 if self.dataset_drift else 0


# ---------------------------------------------------------------- the task
def run_checks(
    reference: pd.DataFrame | FrameProfile,
    current: pd.DataFrame,
    project: Project,
    *,
    profile: FrameProfile | None = None,
    settings: CheckSettings | None = None,
    engine: Engine = "native",
    classes: list[Any] | None = None,
    held_out: dict[str, float] | None = None,
) -> CheckResult:
    """Validate, then check drift and quality of `current` against `reference`.

    `reference` is the serving model's training data, or its saved `FrameProfile` (built once
    per data rev with `reference_profile`); pass both via `profile=` to skip re-profiling while
    keeping the frame for reference quality. Bad input returns a result with a named verdict.
    `classes` are the model's class labels in its `predict_proba` order (classification), and
    `held_out` its metrics on its held-out set, if known.
    """
    started = time.perf_counter()
    s = settings or CheckSettings.from_project(project)
    numeric, categorical = project.features
    ref_frame = reference if isinstance(reference, pd.DataFrame) else None
    ref_profile = reference if isinstance(reference, FrameProfile) else profile
    base = {"drift_share_threshold": s.drift_share, "engine": engine}
    window = {
        "min_rows": s.min_rows,
        "max_nan_share": s.max_nan_share,
        "prediction_column": s.prediction_column,
        "proba_prefix": s.proba_prefix,
        "workers": s.workers,
    }

    # 1. the reference: a cached profile, or validate and profile the frame
    ref_check = None
    if ref_profile is None or not ref_profile.covers(numeric, categorical):
        if ref_frame is None:
            raise ValueError("the reference profile lacks configured features; pass the frame")
        ref_check, ref_profile = inspect_window(ref_frame, project, role="reference", **window)
        if ref_profile is None:
            return _bad_input("reference", ref_check, None, started, base)

    # 2. the current window, with the reference's categories as the known ones
    check, cur_profile = inspect_window(
        current,
        project,
        role="current",
        known_categories=ref_profile.known_categories(),
        **window,
    )
    if cur_profile is None:
        return _bad_input("current", check, ref_check, started, base)

    # 3. drift per column, then for the dataset
    kinds: list[tuple[str, Kind]] = [(c, NUMERIC) for c in numeric]
    kinds += [(c, CATEGORICAL) for c in categorical]
    jobs = [ColumnJob(c, k, s.method_for(c, k), s.threshold) for c, k in kinds]
    if engine == "evidently":
        if ref_frame is None:
            raise ValueError("engine='evidently' needs the reference frame")
        columns = preset_drift(ref_frame, current, project, s, ref_profile, cur_profile)
    else:
        stats = drift_table(
            ref_profile, cur_profile, jobs, min_values=s.min_rows, workers=s.workers
        )
        columns = [_column(c, k, stats[c], ref_profile, cur_profile) for c, k in kinds]
    tested = [c for c in columns if c.status == "tested"]
    drifted = sum(c.drifted for c in tested)
    share = drifted / len(tested) if tested else 0.0
    dataset_drift = bool(tested) and share >= s.drift_share

    # 4. data quality from the profiles, model quality from the labelled rows
    data_quality = _data_quality(ref_profile, cur_profile, numeric, categorical)
    quality = model_quality(
        current, project, s, reference=ref_frame, classes=classes, held_out=held_out
    )

    if not tested:
        verdict: CheckVerdict = "insufficient_data"
        message = f"no column has {s.min_rows} usable values on both sides; drift not tested"
    else:
        verdict = "drift" if dataset_drift else "no_drift"
        message = (
            f"{'dataset drift' if dataset_drift else 'no dataset drift'}: {drifted} of "
            f"{len(tested)} columns drifted ({share:.0%}; threshold {s.drift_share:.0%})"
        )
    return CheckResult(
        verdict=verdict,
        message=message,
        validation=check,
        reference_validation=ref_check,
        columns=columns,
        drifted_columns=drifted,
        tested_columns=len(tested),
        drift_share=share,
        dataset_drift=dataset_drift,
        data_quality=data_quality,
        quality=quality,
        reference_key=ref_profile.key,
        duration_seconds=time.perf_counter() - started,
        **base,
    )


def reference_profile(
    reference: pd.DataFrame,
    project: Project,
    *,
    key: str | None = None,
    settings: CheckSettings | None = None,
) -> FrameProfile | WindowVerdict:
    """The reference's profile (sorted, ready to save), or the verdict saying why it is unusable.

    Build it once per data rev (`key`) and pass it to `run_checks`; `FrameProfile.save`/`load`.
    """
    s = settings or CheckSettings.from_project(project)
    verdict, profile = inspect_window(
        reference, project, role="reference", min_rows=s.min_rows, workers=s.workers
    )
    if profile is None:
        return verdict
    profile.key = key
    return profile.prepare(s.workers)


def _bad_input(
    role: Literal["reference", "current"],
    check: WindowVerdict,
    ref_check: WindowVerdict | None,
    started: float,
    base: dict[str, Any],
) -> CheckResult:
    return CheckResult(
        verdict=check.verdict,  # type: ignore[arg-type]  # an error verdict
        message=f"bad input ({check.verdict}): {check.summary()}",
        bad_input=role,
        validation=check if role == "current" else None,
        reference_validation=check if role == "reference" else ref_check,
        duration_seconds=time.perf_counter() - started,
        **base,
    )


def _column(
    column: str, kind: Kind, stat: DriftStat | None, ref: FrameProfile, cur: FrameProfile
) -> ColumnDrift:
    r, c = ref.side(column), cur.side(column)
    if stat is None:
        return ColumnDrift.untested(column, kind, r.n, c.n)
    return ColumnDrift(
        column=column,
        kind=kind,
        method=stat.method,
        score=stat.score,
        threshold=stat.threshold,
        drifted=stat.drifted,
        score_is_p_value=stat.is_p_value,
        reference_values=stat.reference_rows,
        current_values=stat.current_rows,
    )


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _data_quality(
    ref: FrameProfile, cur: FrameProfile, numeric: list[str], categorical: list[str]
) -> DataQuality:
    columns = []
    for column in numeric + categorical:
        r, c = ref.side(column), cur.side(column)
        kind: Kind = NUMERIC if column in numeric else CATEGORICAL
        entry = ColumnQuality(
            column=column,
            kind=kind,
            missing_share_current=(c.rows - c.n) / max(c.rows, 1),
            missing_share_reference=(r.rows - r.n) / max(r.rows, 1),
        )
        if isinstance(r, NumericSide) and isinstance(c, NumericSide):
            entry.mean_current, entry.mean_reference = _finite(c.mean), _finite(r.mean)
            entry.std_current, entry.std_reference = _finite(c.std), _finite(r.std)
        else:
            entry.unique_current, entry.unique_reference = c.n_unique, r.n_unique
        columns.append(entry)
    cells_cur = max(cur.rows * len(columns), 1)
    cells_ref = max(ref.rows * len(columns), 1)
    return DataQuality(
        rows_current=cur.rows,
        rows_reference=ref.rows,
        missing_share_current=sum(q.missing_share_current * cur.rows for q in columns) / cells_cur,
        missing_share_reference=sum(q.missing_share_reference * ref.rows for q in columns)
        / cells_ref,
        columns=columns,
    )


# ---------------------------------------------------------------- model quality
def model_quality(
    current: pd.DataFrame,
    project: Project,
    settings: CheckSettings | None = None,
    *,
    reference: pd.DataFrame | None = None,
    classes: list[Any] | None = None,
    held_out: dict[str, float] | None = None,
) -> QualityResult | None:
    """The configured metrics on labelled rows (target and prediction both present).

    None when the window carries no target or no prediction column. With too few labels the
    status is `insufficient_labels` and no metric is computed. `classes` are the serving model's,
    in its `predict_proba` order: the capture stores labels as text and probabilities as one
    list per row, and only the model says which class each value and column is. Beside each
    metric is its reference: the model's `held_out` value, else the same metric on `reference`
    when that carries predictions too.
    """
    s = settings or CheckSettings.from_project(project)
    cfg = project.config
    target, prediction = cfg.data.target, s.prediction_column
    if target not in current.columns or prediction not in current.columns:
        return None
    labelled = _labelled(current, target, prediction)
    result = QualityResult(
        task=cfg.data.task,
        status="ok" if len(labelled) >= s.min_labels else "insufficient_labels",
        target=target,
        prediction_column=prediction,
        rows=len(current),
        labelled_rows=len(labelled),
        coverage=len(labelled) / len(current) if len(current) else 0.0,
        min_labels=s.min_labels,
        primary=cfg.primary_metric,
        limit=cfg.monitor.quality_limit,
    )
    if result.status != "ok":
        return result
    references = _references(result, reference, project, s, classes, held_out)
    for name, (value, note) in _scores(labelled, project, s, classes).items():
        result.metrics.append(
            MetricValue(
                name=name,
                current=value,
                reference=references.get(name),
                greater_is_better=METRICS[name][1],
                note=note,
            )
        )
    primary = next((m for m in result.metrics if m.name == result.primary), None)
    if result.limit is not None and primary is not None and primary.current is not None:
        if primary.greater_is_better:
            result.limit_breached = primary.current < result.limit
        else:
            result.limit_breached = primary.current > result.limit
    return result


def _references(
    result: QualityResult,
    reference: pd.DataFrame | None,
    project: Project,
    s: CheckSettings,
    classes: list[Any] | None,
    held_out: dict[str, float] | None,
) -> dict[str, float]:
    """The value each metric is compared with; records its source on `result`."""
    if held_out:
        result.reference_source = "held_out"
        return dict(held_out)
    target, prediction = result.target, result.prediction_column
    if reference is None or not {target, prediction} <= set(reference.columns):
        return {}
    ref_labelled = _labelled(reference, target, prediction)
    result.reference_labelled_rows = len(ref_labelled)
    if not len(ref_labelled):
        return {}
    result.reference_source = "reference_data"
    scores = _scores(ref_labelled, project, s, classes)
    return {name: value for name, (value, _) in scores.items() if value is not None}


def _labelled(frame: pd.DataFrame, target: str, prediction: str) -> pd.DataFrame:
    return frame[frame[target].notna() & frame[prediction].notna()]


def _scores(
    labelled: pd.DataFrame, project: Project, s: CheckSettings, classes: list[Any] | None
) -> dict[str, tuple[float | None, str | None]]:
    """Each configured metric via `model.evaluate.score`, or None and the reason it is missing."""
    from model.evaluate import NEEDS_PROBA, score

    cfg = project.config
    y_true, y_pred = labelled[cfg.data.target], labelled[s.prediction_column]
    proba, known, missing = None, None, None
    if cfg.data.task == "regression":
        y_true, y_pred = y_true.astype("float64"), y_pred.astype("float64")
    else:
        known = classes if classes is not None else _classes(y_true, y_pred)
        y_true, y_pred = _as_classes(y_true, known), _as_classes(y_pred, known)
        proba, missing = _proba(labelled, known, s.proba_prefix, ordered=classes is not None)
    out: dict[str, tuple[float | None, str | None]] = {}
    for name in cfg.metric_names:
        if name in NEEDS_PROBA and proba is None:
            out[name] = (None, missing)
            continue
        try:
            out[name] = (float(score(name, y_true, y_pred, proba, known)), None)
        except (ValueError, IndexError, TypeError) as exc:
            out[name] = (None, str(exc).split("\n")[0])
    return out


def _classes(y_true: pd.Series, y_pred: pd.Series) -> list[Any]:
    try:
        return np.unique(np.concatenate([y_true.to_numpy(), y_pred.to_numpy()])).tolist()
    except TypeError:  # mixed label types: compare as strings
        return sorted({str(v) for v in pd.concat([y_true, y_pred])})


def _as_classes(values: pd.Series, classes: list[Any]) -> pd.Series:
    """`values` as the model's own class values: the capture keeps labels and predictions as
    text ("1"), the model may know them as numbers (1). Each distinct value matches a class by
    its text, else by its number; a value no class matches stays as it is."""
    by_text = {str(c): c for c in classes}
    by_number = {float(c): c for c in classes if _is_number(c)}

    def match(value: Any) -> Any:
        text = str(value)
        if text in by_text:
            return by_text[text]
        try:
            return by_number.get(float(text), value)
        except ValueError:
            return value

    return values.map({v: match(v) for v in values.unique()}).infer_objects()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def _proba(
    frame: pd.DataFrame, classes: list[Any], prefix: str, *, ordered: bool
) -> tuple[np.ndarray | None, str | None]:
    """Probabilities in `classes` order, or None and why not.

    From `<prefix><class>` columns (binary may carry only one of the two), else from the list
    per row the capture stores, whose order is the model's `predict_proba` order: usable only
    when `classes` are the model's own (`ordered`).
    """
    names = [f"{prefix}{c}" for c in classes]
    present = [n in frame.columns for n in names]
    if all(present):
        return frame[names].to_numpy(dtype="float64"), None
    if len(classes) == 2 and any(present):
        given = frame[names[present.index(True)]].to_numpy(dtype="float64")
        return np.column_stack([given, 1 - given] if present[0] else [1 - given, given]), None
    if CAPTURED_PROBABILITIES not in frame.columns:
        return None, "needs probabilities; the window has none (has the model predict_proba?)"
    rows = frame[CAPTURED_PROBABILITIES]
    lacking = int(rows.isna().sum())
    if lacking:
        return None, (
            f"needs probabilities; {lacking} of {len(rows)} labelled rows were served without "
            "them (has the model predict_proba?)"
        )
    if not ordered:
        return None, "needs the serving model's classes to read the captured probabilities"
    widths = {len(p) for p in rows}
    if widths != {len(classes)}:
        shown = ", ".join(map(str, sorted(widths)))
        return None, f"captured probabilities have {shown} values for {len(classes)} classes"
    return np.vstack(rows.to_numpy()).astype("float64"), None


# ---------------------------------------------------------------- Evidently
def _feature_frame(frame: pd.DataFrame, project: Project) -> pd.DataFrame:
    from model.frames import feature_frame

    return feature_frame(frame, *project.features)


def _data_definition(project: Project, columns: list[str] | None = None, **tasks: Any):
    from evidently import DataDefinition

    numeric, categorical = project.features
    keep = set(columns) if columns is not None else None
    return DataDefinition(
        numerical_columns=[c for c in numeric if keep is None or c in keep],
        categorical_columns=[c for c in categorical if keep is None or c in keep],
        **tasks,
    )


def _drift_preset(project: Project, s: CheckSettings, columns: list[str]):
    from evidently.presets import DataDriftPreset

    return DataDriftPreset(
        columns=columns,
        drift_share=s.drift_share,
        method=s.method,
        num_method=s.num_method,
        cat_method=s.cat_method,
        per_column_method=dict(s.per_column_method) or None,
        threshold=s.threshold,
    )


def preset_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    project: Project,
    settings: CheckSettings | None = None,
    ref_profile: FrameProfile | None = None,
    cur_profile: FrameProfile | None = None,
) -> list[ColumnDrift]:
    """Per-column drift from Evidently's own `DataDriftPreset` (slow; the source of truth).

    Columns with fewer than `min_rows` usable values on a side are left out of the preset and
    reported as `insufficient_data`, as the native engine does.
    """
    from evidently import Dataset, Report

    s = settings or CheckSettings.from_project(project)
    numeric, categorical = project.features
    ref_feat, cur_feat = _feature_frame(reference, project), _feature_frame(current, project)
    kinds = {c: NUMERIC for c in numeric} | {c: CATEGORICAL for c in categorical}
    counts = {
        c: (
            _side_n(ref_profile, ref_feat, c, kinds[c]),
            _side_n(cur_profile, cur_feat, c, kinds[c]),
        )
        for c in kinds
    }
    enough = [c for c in kinds if min(counts[c]) >= max(s.min_rows, 1)]
    mapped: dict[str, ColumnDrift] = {}
    if enough:
        definition = _data_definition(project, enough)
        snapshot = Report([_drift_preset(project, s, enough)], include_tests=True).run(
            Dataset.from_pandas(cur_feat[enough], data_definition=definition),
            Dataset.from_pandas(ref_feat[enough], data_definition=definition),
        )
        mapped = {c.column: c for c in _columns_from_snapshot(snapshot.dict(), kinds)}
    out = []
    for column, kind in kinds.items():
        ref_n, cur_n = counts[column]
        if column in mapped:
            update = {"reference_values": ref_n, "current_values": cur_n}
            out.append(mapped[column].model_copy(update=update))
        else:
            out.append(ColumnDrift.untested(column, kind, ref_n, cur_n))
    return out


def _side_n(profile: FrameProfile | None, frame: pd.DataFrame, column: str, kind: Kind) -> int:
    if profile is not None:
        return profile.side(column).n
    values = frame[column]
    if kind == NUMERIC:
        return int(np.isfinite(values.to_numpy(dtype="float64")).sum())
    return int(values.notna().sum())


def _stattest_names() -> dict[str, str]:
    """Evidently's StatTest display name -> name (snapshots carry the display name)."""
    from evidently.legacy.calculations import stattests

    tests = [v for v in vars(stattests).values() if isinstance(v, stattests.StatTest)]
    return {t.display_name: t.name for t in tests}


def _columns_from_snapshot(snapshot: dict[str, Any], kinds: dict[str, Kind]) -> list[ColumnDrift]:
    """The one place Evidently's output becomes our types: `ValueDrift` metrics and tests."""
    names = _stattest_names()
    status: dict[str, str] = {}
    for test in snapshot.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            status[params["column"]] = test["status"]
    out = []
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        column = config["column"]
        method = names.get(config.get("method"), config.get("method"))
        out.append(
            ColumnDrift(
                column=column,
                kind=kinds[column],
                method=method,
                score=float(metric["value"]),
                threshold=config.get("threshold"),
                drifted=status.get(column) == "FAIL",
                score_is_p_value=method in ("ks", "chisquare", "z"),
            )
        )
    return out


class ReportFiles(BaseModel):
    paths: list[Path]
    reference_rows: int
    current_rows: int
    sampled: bool


class BadInput(ValueError):
    """A frame the checks cannot run on; the message carries the validation verdict."""


def save_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    project: Project,
    path: Path,
    *,
    settings: CheckSettings | None = None,
    sample_rows: int | None = None,
    seed: int = 0,
) -> ReportFiles:
    """Write Evidently's HTML report: drift, data summary and (with labels) model quality.

    Frames above `sample_rows` (default `monitor.report_sample_rows`, 100k) are sampled; a
    sample never drops to Evidently's small-reference size, where its default tests change.
    When the current window has labels but the reference has no predictions, the quality part
    goes to a second file, `<name>.quality.html`.
    """
    from evidently import Dataset, Report
    from evidently.presets import DataSummaryPreset

    s = settings or CheckSettings.from_project(project)
    cfg = project.config
    for role, frame in (("reference", reference), ("current", current)):
        verdict = inspect_window(
            frame,
            project,
            role=role,
            min_rows=s.min_rows,
            workers=s.workers,  # type: ignore[arg-type]
        )[0]
        if not verdict.usable:
            raise BadInput(f"cannot build the report: {verdict.summary()}")
    limit = sample_rows if sample_rows is not None else s.report_sample_rows
    if limit is not None:
        limit = max(limit, SMALL_REFERENCE_ROWS + 1)
    sampled = False

    def shrink(frame: pd.DataFrame) -> pd.DataFrame:
        nonlocal sampled
        if limit is not None and len(frame) > limit:
            sampled = True
            return frame.sample(n=limit, random_state=seed)
        return frame

    numeric, categorical = project.features
    features = numeric + categorical
    target, prediction = cfg.data.target, s.prediction_column
    unsafe = [name for name in (*features, target, prediction) if html_safe_text(name) != name]
    if unsafe:
        raise BadInput(
            f"cannot build the report: column names {unsafe} hold <, > or &, which the HTML "
            "report cannot show safely; rename them in the data and the config"
        )
    ref, cur = html_safe_frame(shrink(reference)), html_safe_frame(shrink(current))
    labels = {target, prediction} <= set(cur.columns) and len(_labelled(cur, target, prediction))
    ref_has = {target, prediction} <= set(ref.columns)

    def prepared(frame: pd.DataFrame, with_labels: bool) -> pd.DataFrame:
        out = _feature_frame(frame, project)
        if with_labels:
            probas = [c for c in frame.columns if str(c).startswith(s.proba_prefix)]
            extra = [target, prediction, *probas]
            out = out.join(frame[extra])
        return out

    drift = [_drift_preset(project, s, features), DataSummaryPreset(columns=features)]
    together = bool(labels) and ref_has
    tasks = _quality_definition(project, s, cur, classes=None) if labels else {}
    definition = _data_definition(project, **(tasks if together else {}))
    presets = drift + (_quality_presets(cfg.data.task) if together else [])
    snapshot = Report(presets).run(
        Dataset.from_pandas(prepared(cur, together), data_definition=definition),
        Dataset.from_pandas(prepared(ref, together), data_definition=definition),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    paths = [path]
    if labels and not together:
        quality_path = path.with_name(path.stem + ".quality.html")
        only = Report(_quality_presets(cfg.data.task)).run(
            Dataset.from_pandas(
                prepared(cur, True), data_definition=_data_definition(project, **tasks)
            ),
            None,
        )
        only.save_html(str(quality_path))
        paths.append(quality_path)
    return ReportFiles(paths=paths, reference_rows=len(ref), current_rows=len(cur), sampled=sampled)


def html_safe_text(value: str) -> str:
    """`&`, `<` and `>` as HTML entities: `&` first, so the mapping is one-to-one and two
    different values stay two different values in the report."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def html_safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame Evidently sees, with every string cell and column name made inert in HTML.

    Evidently's HTML report embeds its data as JSON inside a `<script>` block without escaping
    `</`: a category value (or label) from traffic such as `</script><script>...` would close
    that block and run as script in the page that nginx serves. Escaping `&`, `<` and `>` here,
    before Evidently sees the data, leaves it nothing that can end a script or start a tag; both
    frames go through it, so reference and current still share their categories and every
    drift score is unchanged. The report may show `&lt;` where traffic sent `<`; the checks
    themselves (`run_checks`) never see these frames.
    """

    def safe(value: Any) -> Any:
        return html_safe_text(value) if isinstance(value, str) else value

    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            out[column] = values.cat.rename_categories([safe(c) for c in values.cat.categories])
        elif values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            out[column] = values.map(safe, na_action="ignore")
    out.columns = [safe(c) for c in out.columns]
    return out


def _quality_definition(
    project: Project, s: CheckSettings, frame: pd.DataFrame, classes: list[Any] | None
) -> dict[str, Any]:
    from evidently import BinaryClassification, MulticlassClassification, Regression

    cfg = project.config
    target, prediction = cfg.data.target, s.prediction_column
    if cfg.data.task == "regression":
        return {"regression": [Regression(target=target, prediction=prediction)]}
    labelled = _labelled(frame, target, prediction)
    known = classes or _classes(labelled[target], labelled[prediction])
    if cfg.data.task == "binary":
        positive = known[-1]
        probas = f"{s.proba_prefix}{positive}"
        return {
            "classification": [
                BinaryClassification(
                    target=target,
                    prediction_labels=prediction,
                    prediction_probas=probas if probas in frame.columns else None,
                    pos_label=positive,
                )
            ]
        }
    return {
        "classification": [MulticlassClassification(target=target, prediction_labels=prediction)]
    }


def _quality_presets(task: str) -> list[Any]:
    from evidently.presets import ClassificationPreset, RegressionPreset

    return [RegressionPreset() if task == "regression" else ClassificationPreset()]


__all__ = [
    "CheckResult",
    "CheckSettings",
    "ColumnDrift",
    "DataQuality",
    "QualityResult",
    "model_quality",
    "preset_drift",
    "reference_profile",
    "run_checks",
    "save_report",
]


@task(cache_policy=NO_CACHE)
def check_window(
    reference,
    current: pd.DataFrame,
    project: Project,
    classes: list[Any] | None = None,
    held_out: dict[str, float] | None = None,
) -> CheckResult:
    """`run_checks` on the captured window, its label column named as the target; `classes`
    and `held_out` are the serving model's (`tasks.release.package.read_model`)."""
    frame = current.rename(columns={"label": project.config.data.target})
    model = {"classes": classes, "held_out": held_out}
    if reference.profile is None:
        return run_checks(reference.frame, frame, project, **model)
    return run_checks(reference.frame, frame, project, profile=reference.profile, **model)
