"""Shared fixtures for tests that run the real tools in a fresh copy of the project."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.s3_server import s3_server  # noqa: F401  (one S3-API server for the session)
from tests.support import copy_project, driftloop


@pytest.fixture(autouse=True)
def no_user_kubeconfig(tmp_path_factory, monkeypatch):
    """kubectl never reads the user's kubeconfig or an in-cluster account: KUBECONFIG names a
    file of the test's whose one cluster is a closed loopback port (an empty or missing file
    would send kubectl to localhost:8080). A test that needs a cluster points it at its own."""
    import yaml

    from tests.support import free_port

    path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "none", "cluster": {"server": server}}],
        "users": [{"name": "none", "user": {}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
        "current-context": "none",
    }
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECTL_CONTEXT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """One fresh copy with its data pushed and `dvc repro` done; read-only for its users."""
    root = copy_project(tmp_path_factory.mktemp("trained"))
    driftloop(root, "data")
    driftloop(root, "train")
    return root


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (SQLite) on a free loopback port, used by this whole test process.

    Sets PREFECT_API_URL and PREFECT_HOME in os.environ so flows, clients and subprocesses started
    by the tests all talk to it; stops it (by its own pid) at the end of the session.
    """
    import os
    import subprocess
    import time

    import httpx

    from tests.support import BIN, free_port

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"{url}/api",
    }
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert server.poll() is None, (home / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "Prefect server not healthy within 120 s"
        time.sleep(0.5)
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ.update({"PREFECT_API_URL": f"{url}/api", "PREFECT_HOME": str(home)})
    # settings are read when prefect is imported: override them for this process too
    with temporary_settings(updates={PREFECT_API_URL: f"{url}/api", PREFECT_HOME: str(home)}):
        yield url
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.killpg(server.pid, 15)
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)
    log.close()


@pytest.fixture
def slack(monkeypatch):
    """The local Slack (Web API, interactivity, Socket Mode) with the app's secrets set."""
    from tests.fakes.slack_interactive import SIGNING_SECRET, FakeSlackApp

    fake = FakeSlackApp().start()
    monkeypatch.setenv("SLACK_BOT_TOKEN", fake.token)
    monkeypatch.setenv("SLACK_API_URL", fake.url)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)
    yield fake
    fake.stop()


@pytest.fixture
def project(tmp_path):
    """A project whose state lives under tmp_path (approval requests, audit, threads)."""
    from tests.fakes.approval_stub import project_copy

    return project_copy(tmp_path)


@pytest.fixture
def stub(prefect_server, slack, project, request):
    """Start stub flows asking for approval; nothing is left paused behind."""
    from tests.fakes.approval_stub import StubRun

    runs = []

    def start(**kwargs):
        run = StubRun(project, candidate=f"bikeshare:{request.node.name}-{len(runs)}", **kwargs)
        runs.append(run)
        return run.start()

    yield start
    for run in runs:
        run.close()
