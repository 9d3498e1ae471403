"""Each serving version's predictions in a window, and their drift against the stable version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

from config.loader import Project, load_project
from tasks.metrics import MonitorMetrics, monitor_registry
from tasks.monitor.versions import compare_versions, version_of
from tests.contracts.test_deployments import config_copy

ROOT = Path(__file__).resolve().parents[3]
STABLE, CANARY = "bikeshare:20250101-000000-aaaa1111", "bikeshare:20250202-000000-bbbb2222"


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(ROOT / "config" / "driftloop.yaml")


@pytest.fixture
def classifier(project) -> Project:
    """The same project serving a binary classifier (only the task matters here)."""
    cfg = project.config
    data = cfg.data.model_copy(update={"task": "binary"})
    return Project(cfg.model_copy(update={"data": data}), project.path, project.root)


def window(**predictions_by_bento) -> pd.DataFrame:
    """A captured window's bento and prediction columns, rows of each version interleaved."""
    parts = [
        pd.DataFrame({"bento": bento, "prediction": values})
        for bento, values in predictions_by_bento.items()
    ]
    return pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=0)


def test_version_is_the_bento_version():
    assert version_of(STABLE) == "20250101-000000-aaaa1111"
    assert version_of("dev-server") == "dev-server"


def test_a_shifted_regression_canary_drifts_from_the_stable_version(project):
    assert project.config.monitor.min_rows == 500
    base = np.arange(1000, dtype=float)  # std 288.675
    frame = window(**{CANARY: base + 100.0, STABLE: base})
    stable, canary = compare_versions(project, frame, STABLE)
    assert (stable.bento, stable.stable, stable.rows, stable.drift) == (STABLE, True, 1000, None)
    assert stable.mean == pytest.approx(499.5)
    assert dict(stable.quantiles) == pytest.approx(
        {0.05: 49.95, 0.25: 249.75, 0.5: 499.5, 0.75: 749.25, 0.95: 949.05}
    )
    assert canary.version == "20250202-000000-bbbb2222" and not canary.stable
    assert canary.mean == pytest.approx(599.5)
    # Wasserstein distance 100 over the stable version's std
    assert canary.drift.method == "wasserstein"
    assert canary.drift.score == pytest.approx(0.346410, rel=1e-5)
    assert canary.drift.threshold == 0.1 and canary.drift.drifted


def test_a_canary_that_answers_like_the_stable_version_does_not_drift(project):
    rng = np.random.default_rng(7)
    frame = window(**{STABLE: rng.normal(100, 10, 2000), CANARY: rng.normal(100, 10, 2000)})
    _, canary = compare_versions(project, frame, STABLE)
    assert canary.drift.score < 0.1 and not canary.drift.drifted


def test_classifier_versions_publish_class_shares_and_jensen_shannon(classifier):
    frame = window(**{STABLE: ["a"] * 700 + ["b"] * 300, CANARY: ["a"] * 300 + ["b"] * 700})
    stable, canary = compare_versions(classifier, frame, STABLE)
    assert dict(stable.class_shares) == pytest.approx({"a": 0.7, "b": 0.3})
    assert dict(canary.class_shares) == pytest.approx({"a": 0.3, "b": 0.7})
    assert stable.mean is None and stable.quantiles == ()
    # sqrt(0.7 ln 1.4 + 0.3 ln 0.6): the two distributions sit symmetrically about (0.5, 0.5)
    assert canary.drift.method == "jensenshannon"
    assert canary.drift.score == pytest.approx(0.286850, rel=1e-5)
    assert canary.drift.drifted


def test_too_few_rows_or_no_stable_version_means_no_score(project):
    few = window(**{STABLE: np.arange(1000.0), CANARY: np.arange(499.0)})
    assert compare_versions(project, few, STABLE)[1].drift is None  # min_rows is 500
    alone = window(**{CANARY: np.arange(1000.0)})
    (only,) = compare_versions(project, alone, STABLE)
    assert only.drift is None and not only.stable and only.rows == 1000
    assert compare_versions(project, pd.DataFrame(), STABLE) == ()


def test_the_threshold_comes_from_the_config(tmp_path):
    strict = config_copy(tmp_path, lambda raw: raw["monitor"].update(version_drift_threshold=0.5))
    frame = window(**{STABLE: np.arange(1000.0), CANARY: np.arange(1000.0) + 100.0})
    _, canary = compare_versions(strict, frame, STABLE)
    assert canary.drift.threshold == 0.5 and not canary.drift.drifted  # 0.346 < 0.5


def test_the_monitor_publishes_each_versions_series(project):
    frame = window(**{STABLE: np.arange(1000.0), CANARY: np.arange(1000.0) + 100.0})
    metrics = MonitorMetrics(
        verdict="no_drift",
        rows=2000,
        label_coverage=0.0,
        duration_seconds=1.0,
        versions=compare_versions(project, frame, STABLE),
    )
    text = generate_latest(monitor_registry(project, metrics, now=0.0)).decode()
    v1, v2 = "20250101-000000-aaaa1111", "20250202-000000-bbbb2222"
    assert f'driftloop_version_rows{{version="{v1}"}} 1000.0' in text
    assert f'driftloop_version_stable{{version="{v1}"}} 1.0' in text
    assert f'driftloop_version_stable{{version="{v2}"}} 0.0' in text
    assert f'driftloop_version_prediction_quantile{{quantile="0.5",version="{v2}"}} 599.5' in text
    drift = f'driftloop_version_prediction_drift{{method="wasserstein",version="{v2}"}} 0.3464'
    assert drift in text
    limit = f'driftloop_version_prediction_drift_threshold{{method="wasserstein",version="{v2}"}}'
    assert f"{limit} 0.1" in text
    assert f'driftloop_version_prediction_drift{{method="wasserstein",version="{v1}"}}' not in text
