"""The monitor's checks: data drift per column and for the dataset, data quality, model quality.

`run_checks` validates both frames (`tasks.monitor.validate`), reduces each feature column once
(`tasks.monitor.drift_stats`) and computes every column's drift with Evidently's own method choice,
formulas and thresholds, without the preset's triple computation and widgets. Evidently stays the
source of truth: `engine="evidently"` runs its `DataDriftPreset` instead
(`tasks.monitor.evidently_engine`; the tests prove both engines agree on scores and verdicts), and
`tasks.monitor.report_html.save_report` writes its HTML report on demand. The same columns,
methods and thresholds also compare the window with the previous usable one
(`tasks.monitor.window_change`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from tasks.monitor.drift_stats import (
    CATEGORICAL,
    NUMERIC,
    ColumnJob,
    FrameProfile,
    Kind,
    NumericSide,
    drift_table,
)
from tasks.monitor.evidently_engine import preset_drift
from tasks.monitor.quality import model_quality
from tasks.monitor.results import (
    CheckResult,
    CheckVerdict,
    ColumnQuality,
    DataQuality,
    Engine,
)
from tasks.monitor.settings import CheckSettings
from tasks.monitor.validate import WindowVerdict, inspect_window
from tasks.monitor.window_change import column_result, compare_windows


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
    previous: FrameProfile | None = None,
    previous_run: tuple[str, str] | None = None,
) -> CheckResult:
    """Validate, then check drift and quality of `current` against `reference`, and its change
    since the `previous` usable window (`previous_run`: that window's run id and text).

    `reference` is the serving model's training data, or its saved `FrameProfile` (built once
    per data rev with `reference_profile`); pass both via `profile=` to skip re-profiling while
    keeping the frame for reference quality. Bad input returns a result with a named verdict.
    `classes` are the model's class labels in its `predict_proba` order (classification), and
    `held_out` its metrics on its held-out set, if known. The current window's profile stays on
    the result (`current_profile`) so the next run can compare with it.
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
        columns = [column_result(c, k, stats[c], ref_profile, cur_profile) for c, k in kinds]
    tested = [c for c in columns if c.status == "tested"]
    drifted = sum(c.drifted for c in tested)
    share = drifted / len(tested) if tested else 0.0
    dataset_drift = bool(tested) and share >= s.drift_share

    # 4. the same columns, methods and thresholds against the previous usable window
    change = compare_windows(
        previous,
        cur_profile,
        jobs,
        change_share=project.config.monitor.change_share or s.drift_share,
        min_values=s.min_rows,
        workers=s.workers,
        previous_run=previous_run,
    )

    # 5. data quality from the profiles, model quality from the labelled rows
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
        change=change,
        reference_key=ref_profile.key,
        duration_seconds=time.perf_counter() - started,
        **base,
    ).keep_profile(cur_profile)


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


@task(cache_policy=NO_CACHE)
def check_window(
    reference,
    current: pd.DataFrame,
    project: Project,
    classes: list[Any] | None = None,
    held_out: dict[str, float] | None = None,
    previous: FrameProfile | None = None,
    previous_run: tuple[str, str] | None = None,
) -> CheckResult:
    """`run_checks` on the captured window, its label column named as the target; `classes`
    and `held_out` are the serving model's (`tasks.release.package.read_model`), `previous` the
    last usable window's profile (`tasks.monitor.window_change.find_previous_window`)."""
    frame = current.rename(columns={"label": project.config.data.target})
    model = {"classes": classes, "held_out": held_out}
    model |= {"previous": previous, "previous_run": previous_run}
    if reference.profile is None:
        return run_checks(reference.frame, frame, project, **model)
    return run_checks(reference.frame, frame, project, profile=reference.profile, **model)
