"""The estimate, its band and error, and the change since the previous window reach a real
Pushgateway under the names of docs/metrics.md; what a run did not compute is not published."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config.loader import Project, load_project
from tasks.metrics import MonitorMetrics, push_monitor_metrics
from tests.support import free_port, stop_group, wait_answering

ROOT = Path(__file__).resolve().parents[3]
NEW_SERIES = (
    "driftloop_estimated_quality",
    "driftloop_estimated_quality_lower",
    "driftloop_estimated_quality_upper",
    "driftloop_estimate_error",
    "driftloop_estimated_quality_breached",
    "driftloop_window_change_share",
    "driftloop_sudden_change",
)


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:  # a broken setup, not a reason to skip
        pytest.fail("prometheus-pushgateway is not installed: run `make setup`")
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [binary, f"--web.listen-address={url.removeprefix('http://')}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_answering(f"{url}/-/ready", server, 20, "the Pushgateway")
        yield url
    finally:
        stop_group(server)


@pytest.fixture
def project(gateway) -> Project:
    base = load_project(ROOT / "config/driftloop.yaml")
    cfg = base.config
    endpoints = cfg.endpoints.model_copy(update={"pushgateway": gateway})
    return Project(cfg.model_copy(update={"endpoints": endpoints}), base.path, base.root)


def pushed(gateway: str) -> dict[str, float]:
    """The monitor group's samples for bikeshare, as `name{labels}` -> value."""
    samples = {}
    for line in httpx.get(f"{gateway}/metrics", timeout=10).text.splitlines():
        if line.startswith("driftloop_") and 'model="bikeshare"' in line:
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            kept = [kv for kv in labels.rstrip("}").split(",") if kv.startswith("metric=")]
            samples[f"{name}{{{','.join(kept)}}}" if kept else name] = float(value)
    return samples


def test_estimate_band_error_and_change_are_pushed(project, gateway):
    push_monitor_metrics(
        project,
        MonitorMetrics(
            verdict="no_drift",
            rows=744,
            label_coverage=0.25,
            duration_seconds=1.5,
            estimated=(("rmse", 71.5, 66.0, 77.0), ("mae", 48.0, 44.5, 51.5)),
            estimate_error=(("rmse", 3.25),),
            estimated_breached=True,
            change_share=0.45,
            sudden_change=True,
        ),
    )
    got = pushed(gateway)
    assert got['driftloop_estimated_quality{metric="rmse"}'] == 71.5
    assert got['driftloop_estimated_quality_lower{metric="rmse"}'] == 66.0
    assert got['driftloop_estimated_quality_upper{metric="rmse"}'] == 77.0
    assert got['driftloop_estimated_quality{metric="mae"}'] == 48.0
    assert got['driftloop_estimated_quality_upper{metric="mae"}'] == 51.5
    assert got['driftloop_estimate_error{metric="rmse"}'] == 3.25
    assert 'driftloop_estimate_error{metric="mae"}' not in got  # mae's labels not in yet
    assert got["driftloop_estimated_quality_breached"] == 1
    assert got["driftloop_window_change_share"] == 0.45
    assert got["driftloop_sudden_change"] == 1


def test_a_run_without_estimate_or_previous_window_publishes_neither(project, gateway):
    push_monitor_metrics(
        project,
        MonitorMetrics(verdict="no_drift", rows=744, label_coverage=0.25, duration_seconds=1.5),
    )
    got = pushed(gateway)
    assert got["driftloop_window_rows"] == 744  # the group was replaced ...
    for name in NEW_SERIES:  # ... and no stale estimate or change survives in it
        assert not any(key.startswith(name) for key in got), name


def test_a_calm_window_publishes_zeros(project, gateway):
    push_monitor_metrics(
        project,
        MonitorMetrics(
            verdict="no_drift",
            rows=744,
            label_coverage=1.0,
            duration_seconds=1.5,
            estimated=(("rmse", 40.0, 35.0, 45.0),),
            estimated_breached=False,
            change_share=0.0,
            sudden_change=False,
        ),
    )
    got = pushed(gateway)
    assert got["driftloop_estimated_quality_breached"] == 0
    assert got["driftloop_window_change_share"] == 0
    assert got["driftloop_sudden_change"] == 0
