"""Model quality on a window's labelled rows, beside the serving model's reference values.

The capture stores labels as text and probabilities as one list per row; this module turns them
back into the model's own classes and scores each configured metric with `model.evaluate.score`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from config.loader import Project
from config.schema import METRICS
from tasks.monitor.results import MetricValue, QualityResult
from tasks.monitor.settings import CAPTURED_PROBABILITIES, CheckSettings


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
    labelled = labelled_rows(current, target, prediction)
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
    ref_labelled = labelled_rows(reference, target, prediction)
    result.reference_labelled_rows = len(ref_labelled)
    if not len(ref_labelled):
        return {}
    result.reference_source = "reference_data"
    scores = _scores(ref_labelled, project, s, classes)
    return {name: value for name, (value, _) in scores.items() if value is not None}


def labelled_rows(frame: pd.DataFrame, target: str, prediction: str) -> pd.DataFrame:
    return frame[frame[target].notna() & frame[prediction].notna()]


def _scores(
    labelled: pd.DataFrame, project: Project, s: CheckSettings, classes: list[Any] | None
) -> dict[str, tuple[float | None, str | None]]:
    """Each configured metric via `model.evaluate.score`, or None and the reason it is missing."""
    # local: model.evaluate loads sklearn, which a window without labels never needs
    from model.evaluate import NEEDS_PROBA, score

    cfg = project.config
    y_true, y_pred = labelled[cfg.data.target], labelled[s.prediction_column]
    proba, known, missing = None, None, None
    if cfg.data.task == "regression":
        y_true, y_pred = y_true.astype("float64"), y_pred.astype("float64")
    else:
        known = classes if classes is not None else observed_classes(y_true, y_pred)
        y_true, y_pred = _as_classes(y_true, known), _as_classes(y_pred, known)
        proba, missing = proba_matrix(labelled, known, s.proba_prefix, ordered=classes is not None)
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


def observed_classes(y_true: pd.Series, y_pred: pd.Series) -> list[Any]:
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


def proba_matrix(
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
