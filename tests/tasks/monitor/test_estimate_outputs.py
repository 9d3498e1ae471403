"""The estimate and the change since the last window reach every place a person looks: the
flow's branch, the metrics, the notice, the Prefect artifacts, the HTML report and the retrain's
evidence; an estimate counts as a breach only when its whole band is past the limit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from config.loader import load_project
from tasks.capture import Window
from tasks.monitor.checks import run_checks
from tasks.monitor.estimation import breached
from tasks.monitor.outcome import assess, monitor_metrics, window_evidence
from tasks.monitor.reports import head_estimate, publish_artifacts
from tasks.monitor.results import ColumnDrift, EstimatedQuality, MetricEstimate, WindowChange
from tasks.notify import as_text, monitor_headline, monitor_notice

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def project():
    return load_project(ROOT / "config/driftloop.yaml")


@pytest.fixture(scope="module")
def quiet(project):
    """January against itself: no drift, so anything wrong below comes from the new parts."""
    january = pd.read_csv(ROOT / "data/bikeshare/bikeshare_hourly_2011.csv").query("mnth == 'Jan'")
    result = run_checks(january, january.sample(600, random_state=3), project)
    assert result.verdict == "no_drift"
    return result


def estimate(value: float, lower: float, upper: float, realised: float | None = None):
    return EstimatedQuality(
        method="dle",
        primary="rmse",
        confidence=0.9,
        rows=600,
        limit=60,
        metrics=[
            MetricEstimate(
                name="rmse",
                value=value,
                lower=lower,
                upper=upper,
                greater_is_better=False,
                realised=realised,
                error=None if realised is None else value - realised,
            )
        ],
    )


@pytest.mark.parametrize(
    ("value", "lower", "upper", "is_breached"),
    [
        (97.3, 88.1, 106.5, True),  # the whole band above the limit of 60
        (62.0, 55.0, 69.0, False),  # past the limit, but not beyond its band
        (40.0, 35.0, 45.0, False),
    ],
)
def test_only_a_band_wholly_past_the_limit_is_a_breach(value, lower, upper, is_breached):
    assert breached(estimate(value, lower, upper)) is is_breached


def test_a_higher_is_better_metric_breaches_below_the_limit():
    accuracy = EstimatedQuality(
        method="cbpe",
        primary="accuracy",
        confidence=0.9,
        rows=1000,
        limit=0.8,
        metrics=[
            MetricEstimate(
                name="accuracy", value=0.7, lower=0.65, upper=0.75, greater_is_better=True
            )
        ],
    )
    assert breached(accuracy)
    accuracy.metrics[0].upper = 0.82
    assert not breached(accuracy)


def test_an_estimated_breach_is_published_announced_and_carried_to_the_retrain(
    project, quiet, monkeypatch, tmp_path
):
    result = quiet.model_copy(deep=True)
    result.estimated = estimate(97.31, 88.12, 106.5)
    result.estimated.limit_breached = True

    seen = assess(result)
    assert seen.wrong and seen.estimated_breached and not seen.quality_breached

    window = Window(start=None, end=None, frame=pd.DataFrame(), label_coverage=0.0)
    metrics = monitor_metrics(result, window, 1.0)
    assert metrics.estimated == (("rmse", 97.31, 88.12, 106.5),)
    assert metrics.estimated_breached is True
    assert metrics.estimate_error == ()  # no labels yet

    assert monitor_headline(project, result) == (
        "bikeshare: no dataset drift, estimated rmse past its limit"
    )
    text = as_text(monitor_notice(project, result, "July", "bikeshare:v1", {}))
    assert (
        "*Quality estimated without labels* (direct loss estimation, 90% band, 600 rows)\n"
        "• rmse: 97.31 (88.12 to 106.5), no labels yet :warning: past limit 60"
    ) in text

    evidence = window_evidence(result, "July")
    assert evidence.estimated_only
    assert [(e.metric, e.estimate, e.lower, e.upper) for e in evidence.estimated] == [
        ("rmse", 97.31, 88.12, 106.5)
    ]

    written = {}
    monkeypatch.setattr(
        "tasks.monitor.reports.create_markdown_artifact", lambda md, **_: written.update(md=md)
    )
    monkeypatch.setattr("tasks.monitor.reports.create_table_artifact", lambda *a, **kw: None)
    publish_artifacts.fn(project, result, "headline", "July", [])
    assert "| metric | estimate | band | realised | estimate error |" in written["md"]
    assert "| rmse | 97.31 | 88.12 to 106.5 | - | - |" in written["md"]


def test_the_realised_value_and_the_error_stand_beside_the_estimate(project, quiet, tmp_path):
    result = quiet.model_copy(deep=True)
    result.estimated = estimate(41.5, 35.25, 47.0, realised=44.0)

    metrics = monitor_metrics(result, Window(None, None, pd.DataFrame(), 1.0), 1.0)
    assert metrics.estimate_error == (("rmse", -2.5),)
    assert metrics.estimated_breached is False
    assert not window_evidence(result, "May").estimated_only

    text = as_text(monitor_notice(project, result, "May", "bikeshare:v1", {}))
    assert "• rmse: 41.5 (35.25 to 47), realised 44 within limit 60" in text

    report = tmp_path / "report.html"
    report.write_text('<html><body>\n<div id="root_metric_1"></div></body></html>')
    head_estimate(report, result.estimated)
    html = report.read_text()
    assert html.index('id="driftloop-estimate"') < html.index('id="root_metric_1"')
    assert "<tr><td>rmse</td><td>41.5</td><td>35.25 to 47</td><td>44</td><td>-2.5</td></tr>" in (
        html
    )


def test_a_sudden_change_is_named_in_the_headline_notice_and_metrics(project, quiet):
    result = quiet.model_copy(deep=True)
    temp = ColumnDrift(
        column="temp", kind="numeric", method="wasserstein", score=0.41, threshold=0.1, drifted=True
    )
    result.change = WindowChange(
        verdict="sudden_change",
        message="sudden change: 1 of 1 columns drifted since the previous window",
        previous_run_id="run-1",
        previous_window="2011-06-01 00:00 to 2011-07-01 00:00 UTC",
        columns=[temp],
        changed_columns=1,
        tested_columns=1,
        change_share=1.0,
        change_share_threshold=0.3,
    )
    seen = assess(result)
    assert seen.wrong and seen.sudden_change
    metrics = monitor_metrics(result, Window(None, None, pd.DataFrame(), 1.0), 1.0)
    assert (metrics.change_share, metrics.sudden_change) == (1.0, True)
    assert monitor_headline(project, result).endswith("sudden change since the last window")
    text = as_text(monitor_notice(project, result, "July", "bikeshare:v1", {}))
    assert (
        "*Against the previous window* (2011-06-01 00:00 to 2011-07-01 00:00 UTC)\n"
        "sudden change: 1 of 1 columns drifted since the previous window\n"
        "• `temp` wasserstein: 0.41"
    ) in text


def test_a_first_window_publishes_no_change_series(project, quiet):
    result = quiet.model_copy(deep=True)
    result.change = WindowChange(
        verdict="no_previous", message="no earlier usable window", change_share_threshold=0.3
    )
    metrics = monitor_metrics(result, Window(None, None, pd.DataFrame(), 1.0), 1.0)
    assert metrics.change_share is None and metrics.sudden_change is None
    assert not assess(result).wrong
