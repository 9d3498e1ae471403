"""Evidently itself: its `DataDriftPreset` as the checks' second engine, and the data definitions
and presets its HTML report runs.

Evidently stays the source of truth for the native engine (`tasks.monitor.checks`); the tests
prove both engines agree on scores and verdicts. Evidently's output is mapped to the result
types in one place, `_columns_from_snapshot`. Evidently is imported only where it runs: it is
slow to import and most runs never need it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from config.loader import Project
from model.frames import feature_frame
from tasks.monitor.drift_stats import CATEGORICAL, NUMERIC, FrameProfile, Kind
from tasks.monitor.quality import labelled_rows, observed_classes
from tasks.monitor.results import ColumnDrift
from tasks.monitor.settings import CheckSettings


def features_of(frame: pd.DataFrame, project: Project) -> pd.DataFrame:
    """The configured feature columns, typed as the model sees them."""
    return feature_frame(frame, *project.features)


def data_definition(project: Project, columns: list[str] | None = None, **tasks: Any):
    """Evidently's `DataDefinition` of the features (only `columns`, if given)."""
    from evidently import DataDefinition

    numeric, categorical = project.features
    keep = set(columns) if columns is not None else None
    return DataDefinition(
        numerical_columns=[c for c in numeric if keep is None or c in keep],
        categorical_columns=[c for c in categorical if keep is None or c in keep],
        **tasks,
    )


def drift_preset(project: Project, s: CheckSettings, columns: list[str]):
    """Evidently's `DataDriftPreset` with the configured methods and thresholds."""
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
    ref_feat, cur_feat = features_of(reference, project), features_of(current, project)
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
        definition = data_definition(project, enough)
        snapshot = Report([drift_preset(project, s, enough)], include_tests=True).run(
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


def quality_definition(
    project: Project, s: CheckSettings, frame: pd.DataFrame, classes: list[Any] | None
) -> dict[str, Any]:
    """`DataDefinition`'s task arguments (regression or classification) for the labels."""
    from evidently import BinaryClassification, MulticlassClassification, Regression

    cfg = project.config
    target, prediction = cfg.data.target, s.prediction_column
    if cfg.data.task == "regression":
        return {"regression": [Regression(target=target, prediction=prediction)]}
    labelled = labelled_rows(frame, target, prediction)
    known = classes or observed_classes(labelled[target], labelled[prediction])
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


def quality_presets(task: str) -> list[Any]:
    """Evidently's model-quality preset for the task."""
    from evidently.presets import ClassificationPreset, RegressionPreset

    return [RegressionPreset() if task == "regression" else ClassificationPreset()]
