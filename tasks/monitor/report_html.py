"""Evidently's HTML report of a window (drift, data summary, model quality), made safe to serve.

Traffic reaches the report as data; `html_safe_frame` makes every string in it inert in HTML
before Evidently sees it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from config.loader import Project
from tasks.monitor.drift_stats import SMALL_REFERENCE_ROWS
from tasks.monitor.evidently_engine import (
    data_definition,
    drift_preset,
    features_of,
    quality_definition,
    quality_presets,
)
from tasks.monitor.quality import labelled_rows
from tasks.monitor.settings import CheckSettings
from tasks.monitor.validate import inspect_window


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
    labels = {target, prediction} <= set(cur.columns) and len(
        labelled_rows(cur, target, prediction)
    )
    ref_has = {target, prediction} <= set(ref.columns)

    def prepared(frame: pd.DataFrame, with_labels: bool) -> pd.DataFrame:
        out = features_of(frame, project)
        if with_labels:
            probas = [c for c in frame.columns if str(c).startswith(s.proba_prefix)]
            extra = [target, prediction, *probas]
            out = out.join(frame[extra])
        return out

    drift = [drift_preset(project, s, features), DataSummaryPreset(columns=features)]
    together = bool(labels) and ref_has
    tasks = quality_definition(project, s, cur, classes=None) if labels else {}
    definition = data_definition(project, **(tasks if together else {}))
    presets = drift + (quality_presets(cfg.data.task) if together else [])
    snapshot = Report(presets).run(
        Dataset.from_pandas(prepared(cur, together), data_definition=definition),
        Dataset.from_pandas(prepared(ref, together), data_definition=definition),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    paths = [path]
    if labels and not together:
        quality_path = path.with_name(path.stem + ".quality.html")
        only = Report(quality_presets(cfg.data.task)).run(
            Dataset.from_pandas(
                prepared(cur, True), data_definition=data_definition(project, **tasks)
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
