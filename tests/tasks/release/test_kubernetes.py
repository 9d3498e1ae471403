"""The kubernetes backend with the real kubectl: against a loopback API server, and a real cluster.

The loopback server (tests/fakes/kube_api.py) answers what kubectl sends and settles workloads
at once: healthy, stalled (past the progress deadline / analysis failed) or never progressing.
So the apply, wait, undo and abort paths run for real in kubectl; the pods, probes and the
Prometheus analysis themselves need a cluster, which the last test uses when
DRIFTLOOP_TEST_KUBECONFIG names a disposable one (the user's kubeconfig is never read).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tasks.commands import CommandError
from tasks.release import kubernetes as k8s_release
from tasks.release.kubernetes import release_to_kubernetes
from tests.contracts.test_deployments import config_copy
from tests.fakes.kube_api import FakeKube
from tests.support import free_port, private_ports

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed on this machine"
)
APPS, ARGO = "apps/v1", "argoproj.io/v1alpha1"
GOOD, GOOD_TOO, BROKEN, HANGING = "v1", "v2", "v3-broken", "v4-hanging"


def image(version: str) -> str:
    return f"bikeshare:{version}"


@pytest.fixture
def kube(tmp_path, monkeypatch):
    fake = FakeKube(broken={image(BROKEN)}, hanging={image(HANGING)}).start()
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.setenv("HOME", str(tmp_path))  # kubectl's discovery cache
    yield fake
    fake.stop()


def project_with(tmp_path: Path, strategy: str = "deployment", **kubernetes: object):
    def change(raw: dict) -> None:
        private_ports(raw)
        raw["kubernetes"].update(
            {"strategy": strategy, "rollout_timeout_seconds": 10, **kubernetes}
        )

    return config_copy(tmp_path / "project", change)


def patches(fake: FakeKube, suffix: str) -> int:
    return sum(1 for method, path in fake.requests if method == "PATCH" and path.endswith(suffix))


# ---------------------------------------------------------------- plain Deployment


def test_a_release_applies_the_manifests_with_its_image(kube, tmp_path):
    project = project_with(tmp_path)
    release = release_to_kubernetes(project, f"bikeshare:{GOOD}")
    assert release.image == image(GOOD)
    assert release.workload == "deployment/bikeshare"
    assert kube.image_of(APPS, "deployments", "driftloop", "bikeshare") == image(GOOD)
    assert kube.get("v1", "services", "driftloop", "bikeshare") is not None
    assert kube.get("policy/v1", "poddisruptionbudgets", "driftloop", "bikeshare") is not None
    applied = list(yaml.safe_load_all(release.manifest.read_text()))
    assert {d["kind"] for d in applied} == {"Deployment", "Service", "PodDisruptionBudget"}
    # the next release rolls forward over it
    release_to_kubernetes(project, f"bikeshare:{GOOD_TOO}")
    assert kube.image_of(APPS, "deployments", "driftloop", "bikeshare") == image(GOOD_TOO)


def test_a_stalled_release_is_undone_and_the_previous_image_serves(kube, tmp_path):
    project = project_with(tmp_path)
    release_to_kubernetes(project, f"bikeshare:{GOOD}")
    with pytest.raises(CommandError) as failed:
        release_to_kubernetes(project, f"bikeshare:{BROKEN}")
    message = str(failed.value)
    assert f"Release {image(BROKEN)} failed" in message
    assert "exceeded its progress deadline" in message
    assert f"Rolled back (`kubectl rollout undo`): {image(GOOD)} serves again" in message
    assert "kubectl -n driftloop describe deployment/bikeshare" in message
    assert kube.image_of(APPS, "deployments", "driftloop", "bikeshare") == image(GOOD)
    # the undo went through the API as kubectl does it: a patch back to the old ReplicaSet
    assert patches(kube, "/deployments/bikeshare") == 3  # apply, apply, undo


def test_a_release_that_never_settles_is_undone_after_the_timeout(kube, tmp_path):
    project = project_with(tmp_path)
    release_to_kubernetes(project, f"bikeshare:{GOOD}")
    with pytest.raises(CommandError, match="timed out waiting") as failed:
        release_to_kubernetes(project, f"bikeshare:{HANGING}")
    assert f"{image(GOOD)} serves again" in str(failed.value)
    assert kube.image_of(APPS, "deployments", "driftloop", "bikeshare") == image(GOOD)


def test_a_failing_first_release_says_there_is_nothing_to_return_to(kube, tmp_path):
    project = project_with(tmp_path)
    with pytest.raises(CommandError, match="no earlier release to return to"):
        release_to_kubernetes(project, f"bikeshare:{BROKEN}")


def test_a_rollback_on_the_kubernetes_backend_returns_the_cluster_not_a_local_slot(kube, tmp_path):
    from tasks.release.package import Bento
    from tasks.release.releases import read_attempts, read_serving
    from tasks.release.rollout import kubernetes_release, rollback
    from tasks.stack.paths import stack_dir

    def change(raw: dict) -> None:
        private_ports(raw)
        raw["serving"]["backend"] = "kubernetes"
        raw["kubernetes"].update({"strategy": "deployment", "rollout_timeout_seconds": 10})

    project = config_copy(tmp_path / "project", change)
    pushed: list[str] = []
    for version in (GOOD, GOOD_TOO):
        bento = Bento(
            tag=f"bikeshare:{version}",
            model_tag=f"bikeshare:model-{version}",
            labels={"image": f"registry.example/bikeshare:{version}", "data_rev": version},
        )
        kubernetes_release(project, bento, bento.labels["image"], lambda _, i: pushed.append(i))
    assert pushed == ["registry.example/bikeshare:v1", "registry.example/bikeshare:v2"]

    back = rollback(project, released_by="alice")
    assert kube.image_of(APPS, "deployments", "driftloop", "bikeshare") == image(GOOD)
    serving = read_serving(project)
    assert (serving.bento, serving.model_tag, serving.how, serving.released_by) == (
        "bikeshare:v1",
        "bikeshare:model-v1",
        "rollback",
        "alice",
    )
    assert serving.url == "kubernetes driftloop/deployment/bikeshare" and serving.slot is None
    assert back.labels["data_rev"] == "v1"  # its lineage comes back with it
    last = read_attempts(project)[-1]
    assert (last.outcome, last.action, last.previous) == ("promoted", "rollback", "bikeshare:v2")
    assert not (stack_dir(project) / "slots").exists()  # no local slot was started


def test_the_configured_context_is_used(kube, tmp_path, monkeypatch):
    """kubectl's current context points nowhere; only `--context` reaches the cluster."""
    config = yaml.safe_load(Path(kube.kubeconfig(tmp_path / "kc", context="ml")).read_text())
    config["clusters"].append(
        {"name": "nowhere", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}
    )
    config["contexts"].append({"name": "other", "context": {"cluster": "nowhere", "user": "fake"}})
    config["current-context"] = "other"
    (tmp_path / "kc").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kc"))
    project = project_with(tmp_path, context="ml")
    release_to_kubernetes(project, f"bikeshare:{GOOD}")
    assert kube.image_of(APPS, "deployments", "driftloop", "bikeshare") == image(GOOD)


def test_a_missing_namespace_is_named(tmp_path, monkeypatch):
    fake = FakeKube(namespaces=()).start()
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.setenv("HOME", str(tmp_path))
    try:
        with pytest.raises(CommandError) as failed:
            release_to_kubernetes(project_with(tmp_path), f"bikeshare:{GOOD}")
    finally:
        fake.stop()
    assert 'namespaces "driftloop" not found' in str(failed.value)
    assert "kubectl get namespace driftloop" in str(failed.value)


def test_an_unreachable_cluster_changes_nothing(tmp_path, monkeypatch):
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    project = project_with(tmp_path)
    with pytest.raises(CommandError) as failed:
        release_to_kubernetes(project, f"bikeshare:{GOOD}")
    assert "connection refused" in str(failed.value)
    assert "nothing was changed" in str(failed.value)
    assert not (project.state_dir / "k8s").exists()  # failed before writing or applying


# ---------------------------------------------------------------- Argo Rollouts


def test_an_argo_release_waits_for_healthy(kube, tmp_path):
    project = project_with(tmp_path, strategy="argo")
    release = release_to_kubernetes(project, f"bikeshare:{GOOD}")
    assert release.workload == "rollout/bikeshare"
    assert kube.image_of(ARGO, "rollouts", "driftloop", "bikeshare") == image(GOOD)
    template = kube.get(ARGO, "analysistemplates", "driftloop", "bikeshare-error-ratio")
    assert template["spec"]["metrics"][0]["successCondition"] == "result[0] <= 0.01"


def test_a_failed_analysis_aborts_and_reverts_the_rollout(kube, tmp_path):
    project = project_with(tmp_path, strategy="argo")
    release_to_kubernetes(project, f"bikeshare:{GOOD}")
    with pytest.raises(CommandError) as failed:
        release_to_kubernetes(project, f"bikeshare:{BROKEN}")
    message = str(failed.value)
    assert 'metric "error-ratio" assessed Failed' in message
    assert f"Rolled back (re-applied): {image(GOOD)} serves again" in message
    assert kube.image_of(ARGO, "rollouts", "driftloop", "bikeshare") == image(GOOD)
    assert kube.get(ARGO, "rollouts", "driftloop", "bikeshare")["status"]["phase"] == "Healthy"
    assert patches(kube, "/rollouts/bikeshare/status") == 1  # the abort


def test_an_argo_rollout_that_never_settles_is_aborted_after_the_timeout(kube, tmp_path):
    project = project_with(tmp_path, strategy="argo")
    release_to_kubernetes(project, f"bikeshare:{GOOD}")
    with pytest.raises(CommandError, match="still Progressing after 10s"):
        release_to_kubernetes(project, f"bikeshare:{HANGING}")
    assert patches(kube, "/rollouts/bikeshare/status") == 1
    assert kube.image_of(ARGO, "rollouts", "driftloop", "bikeshare") == image(GOOD)


def test_argo_strategy_on_a_cluster_without_argo_rollouts_says_so(tmp_path, monkeypatch):
    fake = FakeKube(argo=False).start()
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.setenv("HOME", str(tmp_path))
    try:
        with pytest.raises(CommandError) as failed:
            release_to_kubernetes(project_with(tmp_path, strategy="argo"), f"bikeshare:{GOOD}")
    finally:
        fake.stop()
    assert 'resource type "rollout"' in str(failed.value)
    assert "install Argo Rollouts" in str(failed.value)
    assert not any(method == "PATCH" for method, _ in fake.requests)  # nothing applied


# ---------------------------------------------------------------- without kubectl, with a cluster


def test_without_kubectl_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CommandError, match="`kubectl` is not installed"):
        k8s_release.current_image(project_with(tmp_path))


# a real cluster only when one is named for tests: never the user's current kubeconfig
TEST_KUBECONFIG = os.environ.get("DRIFTLOOP_TEST_KUBECONFIG", "")


def _cluster_answers() -> bool:
    if not TEST_KUBECONFIG or shutil.which("kubectl") is None:
        return False
    try:
        done = subprocess.run(
            ["kubectl", "get", "--raw", "/readyz", "--request-timeout=5s"],
            env={**os.environ, "KUBECONFIG": TEST_KUBECONFIG},
            capture_output=True,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(
    not _cluster_answers(),
    reason="no test cluster: DRIFTLOOP_TEST_KUBECONFIG names none, or it does not answer",
)
def test_on_a_real_cluster_an_image_that_never_starts_is_reported(tmp_path, monkeypatch):
    """A real API server validates the manifests, real pods never pull the image, and the
    release fails by the progress deadline instead of pretending success."""
    monkeypatch.setenv("KUBECONFIG", TEST_KUBECONFIG)
    namespace = f"driftloop-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["kubectl", "create", "namespace", namespace], check=True, capture_output=True)
    try:
        project = project_with(
            tmp_path, namespace=namespace, rollout_timeout_seconds=30, replicas=1
        )
        with pytest.raises(CommandError, match="no earlier release to return to"):
            release_to_kubernetes(project, "bikeshare:never-built")
    finally:
        subprocess.run(["kubectl", "delete", "namespace", namespace, "--wait=false"], check=False)
