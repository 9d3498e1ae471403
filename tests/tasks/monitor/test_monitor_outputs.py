"""Every bad-input class reaches the metrics and the Slack notice by name; nothing crashes; model
quality goes out beside the serving model's held-out value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest
from sklearn import metrics as skm

from config.loader import load_project
from tasks.capture import Window
from tasks.metrics import monitor_registry
from tasks.monitor.checks import run_checks
from tasks.monitor.outcome import monitor_metrics
from tasks.monitor.reports import head_report, publish_artifacts
from tasks.notify import as_text, monitor_notice

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def project():
    return load_project(ROOT / "config/driftloop.yaml")


@pytest.fixture(scope="module")
def reference(project):
    return pd.read_csv(ROOT / "data/bikeshare/bikeshare_hourly_2011.csv").query("mnth == 'Jan'")


def current(reference: pd.DataFrame, n: int = 744) -> pd.DataFrame:
    frame = reference.sample(n, replace=True, random_state=1).reset_index(drop=True)
    frame["temp"] = frame["temp"] + 0.3  # a warm month
    return frame


def empty(ref):
    return current(ref).iloc[0:0]


def single_row(ref):
    return current(ref).iloc[:1]


def missing_column(ref):
    return current(ref).drop(columns=["hum"])


def renamed_column(ref):
    return current(ref).rename(columns={"temp": "temperature"})


def retyped_column(ref):
    frame = current(ref)
    frame["temp"] = "warm"
    return frame


def all_nan(ref):
    frame = current(ref)
    frame["hum"] = np.nan
    return frame


def inf_values(ref):
    frame = current(ref)
    frame.loc[:50, "windspeed"] = np.inf
    return frame


def unseen_categories(ref):
    frame = current(ref)
    frame.loc[: int(len(frame) * 0.3), "weathersit"] = "volcanic ash"
    return frame


CASES = {
    empty: "empty",
    single_row: "insufficient_data",
    missing_column: "schema_mismatch",
    renamed_column: "schema_mismatch",
    retyped_column: "wrong_dtype",
    all_nan: "all_nan",
    inf_values: "inf_values",
    unseen_categories: "unseen_categories",
}


@pytest.mark.parametrize(("make", "verdict"), CASES.items(), ids=[f.__name__ for f in CASES])
def test_bad_input_is_named_in_metrics_and_notice(project, reference, make, verdict):
    frame = make(reference)
    result = run_checks(reference, frame, project)
    assert verdict in result.validation.verdicts
    window = Window(start=None, end=None, frame=frame, label_coverage=0.0)
    exposition = generate_latest(
        monitor_registry(project, monitor_metrics(result, window, 0.1))
    ).decode()
    assert f'driftloop_window_verdict{{verdict="{verdict}"}} 1.0' in exposition
    assert 'verdict="no_drift"' not in exposition and 'verdict="drift"' not in exposition
    assert "driftloop_monitor_last_success_timestamp_seconds" in exposition
    text = as_text(monitor_notice(project, result, "May", "bikeshare:v1", {}))
    assert verdict in text


def test_drifted_window_lists_columns_scores_and_thresholds(project, reference):
    result = run_checks(reference, current(reference), project)
    temp = next(c for c in result.columns if c.column == "temp")
    assert temp.drifted
    exposition = generate_latest(
        monitor_registry(
            project, monitor_metrics(result, Window(None, None, current(reference), 0), 1)
        )
    ).decode()
    assert f'driftloop_column_drift_detected{{column="temp",method="{temp.method}"}} 1.0' in (
        exposition
    )
    text = as_text(monitor_notice(project, result, "May", "bikeshare:v1", {"report": "http://x"}))
    sign = "<" if temp.score_is_p_value else ">="
    assert f"`temp` {temp.method}: {temp.score:.3g} {sign} {temp.threshold:.3g}" in text


def test_quality_stands_beside_the_serving_models_held_out_value(
    project, reference, monkeypatch, tmp_path
):
    frame = current(reference)
    frame["prediction"] = frame["bikers"] * 1.1 + 3
    held_out = {"rmse": 18.74, "mae": 12.59, "r2": 0.92}
    result = run_checks(reference, frame, project, held_out=held_out)
    rmse = float(np.sqrt(skm.mean_squared_error(frame["bikers"], frame["prediction"])))

    window = Window(start=None, end=None, frame=frame, label_coverage=1.0)
    exposition = generate_latest(
        monitor_registry(project, monitor_metrics(result, window, 1))
    ).decode()
    assert 'driftloop_quality_reference{metric="rmse"} 18.74' in exposition
    assert 'driftloop_quality_reference{metric="r2"} 0.92' in exposition
    assert f'driftloop_quality{{metric="rmse"}} {rmse!r}' in exposition

    text = as_text(monitor_notice(project, result, "May", "bikeshare:v1", {}))
    assert f"• rmse: {rmse:.4g} (held-out 18.74) within limit 60" in text

    written = {}

    def markdown(md: str, **_) -> None:
        written["md"] = md

    monkeypatch.setattr("tasks.monitor.reports.create_markdown_artifact", markdown)
    monkeypatch.setattr("tasks.monitor.reports.create_table_artifact", lambda *a, **kw: None)
    publish_artifacts.fn(project, result, "headline", "May", [])
    assert "| metric | current | held-out (serving model) | note |" in written["md"]
    assert f"| rmse | {rmse:.4g} | 18.74 |  |" in written["md"]

    report = tmp_path / "report.html"
    report.write_text('<html><body>\n<div id="root_metric_1"></div></body></html>')
    head_report(report, result.quality)
    html = report.read_text()
    assert html.index('id="driftloop-quality"') < html.index('id="root_metric_1"')
    assert "<th>held-out (serving model)</th>" in html
    assert f"<tr><td>rmse</td><td>{rmse:.4g}</td><td>18.74</td><td></td></tr>" in html
