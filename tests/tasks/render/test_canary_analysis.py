"""The Argo canary judges the model too: its analysis reads the canary version's prediction drift
that the monitor publishes, checked here against a real Pushgateway and Prometheus.

No Kubernetes cluster or Argo Rollouts controller runs here: the controller's own reading of the
answer (`result[0] <= limit`) is the one step not exercised; the query, the labels it selects,
the value it returns and the limit it is compared with all are.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import kubernetes_validate
import numpy as np
import pandas as pd
import pytest

from config.loader import Project, load_project
from tasks.metrics import MonitorMetrics, push_monitor_metrics
from tasks.monitor.versions import compare_versions
from tasks.render import kubernetes as k8s
from tasks.render.runtime import write_runtime
from tests.contracts.test_deployments import config_copy
from tests.integration.test_monitoring_binaries import need
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[3]
STABLE, DRIFTED, ALIKE = "20250101-aaaa", "20250202-bbbb", "20250303-cccc"


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(ROOT / "config" / "driftloop.yaml")


def drift_metric(project: Project, version: str = "v9") -> tuple[dict, dict]:
    docs = {d["kind"]: d for d in k8s.manifests(project, version)["argo-rollout.yaml"]}
    metrics = {m["name"]: m for m in docs["AnalysisTemplate"]["spec"]["metrics"]}
    assert set(metrics) == {"error-ratio", "prediction-drift"}
    return metrics["prediction-drift"], docs["Rollout"]


def test_the_analysis_checks_the_canarys_prediction_drift_against_the_config(project):
    metric, rollout = drift_metric(project)
    assert project.config.monitor.version_drift_threshold == 0.1
    assert metric["successCondition"] == "result[0] <= 0.1"
    assert metric["failureCondition"] == "result[0] > 0.1"
    assert metric["failureLimit"] == 0  # one window's verdict is enough
    assert metric["provider"]["prometheus"]["address"] == project.config.kubernetes.prometheus_url
    query = metric["provider"]["prometheus"]["query"]
    selector = 'job="driftloop_monitor",model="bikeshare",version="{{args.bento-version}}"'
    assert f"driftloop_version_prediction_drift{{{selector}}}" in query
    # the Rollout passes the version its pods run, which is the version the monitor labels
    assert rollout["spec"]["strategy"]["canary"]["analysis"]["args"] == [
        {"name": "bento-version", "value": "v9"}
    ]
    assert rollout["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "v9"


def test_the_threshold_follows_the_config(tmp_path):
    changed = config_copy(tmp_path, lambda raw: raw["monitor"].update(version_drift_threshold=0.25))
    metric, rollout = drift_metric(changed)
    assert metric["successCondition"] == "result[0] <= 0.25"
    assert metric["failureCondition"] == "result[0] > 0.25"
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "rollout-template"},
        "template": rollout["spec"]["template"],
    }
    kubernetes_validate.validate(wrapped, kubernetes_validate.latest_version(), strict=True)


def test_the_committed_rollout_file_carries_the_drift_check(project):
    text = (ROOT / "deployments" / "k8s" / "argo-rollout.yaml").read_text()
    assert "name: prediction-drift" in text
    assert "driftloop_version_prediction_drift" in text


# ---------------------------------------------------------------- against real Prometheus


def _wait(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def prometheus(project, tmp_path_factory) -> Iterator[tuple[Project, str]]:
    """A real Pushgateway and Prometheus (the rendered scrape config) on free loopback ports."""
    tmp = tmp_path_factory.mktemp("canary")
    ports = {name: free_port() for name in ("prometheus", "pushgateway", "alertmanager")}
    cfg = project.config
    variant = Project(
        config=cfg.model_copy(
            update={
                "endpoints": cfg.endpoints.model_copy(
                    update={k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
                ),
                "stack": cfg.stack.model_copy(update={"scrape_interval_seconds": 1}),
            }
        ),
        path=project.path,
        root=project.root,
    )
    files = write_runtime(variant, tmp / "stack", None)
    commands = [
        [need("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{ports['pushgateway']}"],
        [
            need("prometheus"),
            f"--config.file={files.prometheus_config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        ],
    ]
    processes = []
    try:
        for i, command in enumerate(commands):
            log = (tmp / f"{i}.log").open("w")
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        for name in ("pushgateway", "prometheus"):
            url = f"http://127.0.0.1:{ports[name]}/-/ready"
            _wait(lambda u=url: httpx.get(u).status_code == 200, name)
        yield variant, f"http://127.0.0.1:{ports['prometheus']}"
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def analysis_value(prometheus: tuple[Project, str], version: str) -> list[float]:
    """The drift metric's query as Argo sends it for `version`: the values of `result`."""
    project, url = prometheus
    metric, _ = drift_metric(project)
    query = metric["provider"]["prometheus"]["query"].replace("{{args.bento-version}}", version)
    body = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10).json()
    assert body["status"] == "success", body
    return [float(r["value"][1]) for r in body["data"]["result"]]


@pytest.mark.integration
def test_prometheus_answers_the_canary_query_with_the_monitors_drift(prometheus):
    project, url = prometheus
    base = np.arange(1000.0)  # std 288.675: a shift of 100 is a normed Wasserstein of 0.3464
    frame = pd.DataFrame(
        {
            "bento": [f"bikeshare:{v}" for v in (STABLE, DRIFTED, ALIKE) for _ in base],
            "prediction": np.concatenate([base, base + 100.0, base + 1.0]),
        }
    )
    versions = compare_versions(project, frame, f"bikeshare:{STABLE}")
    push_monitor_metrics(
        project, MonitorMetrics("no_drift", len(frame), 0.0, 1.0, versions=versions)
    )
    expected = f'driftloop_version_prediction_drift{{version="{DRIFTED}"}}'
    _wait(
        lambda: httpx.get(f"{url}/api/v1/query", params={"query": expected}).json()["data"][
            "result"
        ],
        "the pushed drift scraped",
    )
    # the drifted canary fails the check, the one that answers alike passes it
    assert analysis_value(prometheus, DRIFTED) == [pytest.approx(0.346410, rel=1e-5)]
    assert analysis_value(prometheus, ALIKE) == [pytest.approx(0.003464, rel=1e-3)]
    # a version the monitor has not compared yet (and the stable one) measure as 0, one value
    assert analysis_value(prometheus, "20250404-dddd") == [0.0]
    assert analysis_value(prometheus, STABLE) == [0.0]
