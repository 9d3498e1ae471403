"""The Kubernetes manifests: valid against the official schemas, and every value from the config."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from config.loader import Project, load_project
from tasks.render import kubernetes as k8s
from tests.contracts.test_deployments import config_copy

ROOT = Path(__file__).resolve().parents[3]
# the oldest release with the native preStop sleep on by default, and the newest schemas here
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(ROOT / "config" / "driftloop.yaml")


def core_documents(project: Project, version: str = "v1") -> list[dict]:
    docs = [d for docs in k8s.manifests(project, version).values() for d in docs]
    return [d for d in docs if not d["apiVersion"].startswith("argoproj.io/")]


def the_container(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def rollout_and_analysis(project: Project, version: str = "v1") -> tuple[dict, dict]:
    docs = {d["kind"]: d for d in k8s.manifests(project, version)["argo-rollout.yaml"]}
    return docs["Rollout"], docs["AnalysisTemplate"]


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_core_manifests_are_valid_against_the_official_schemas(project, kube_version):
    kinds = set()
    for doc in core_documents(project):
        kubernetes_validate.validate(doc, kube_version, strict=True)
        kinds.add(doc["kind"])
    assert kinds == {"Deployment", "Service", "PodDisruptionBudget"}


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_the_rollouts_pod_template_is_a_valid_core_pod_template(project, kube_version):
    rollout, _ = rollout_and_analysis(project)
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "rollout-template"},
        "template": rollout["spec"]["template"],
    }
    kubernetes_validate.validate(wrapped, kube_version, strict=True)


def test_the_schema_check_catches_a_mistake(project):
    deployment = k8s.deployment(project, "v1")
    the_container(deployment)["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="'pth' was unexpected"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_deployment_follows_the_config(project):
    cfg = project.config
    deployment = k8s.deployment(project, "20250101-000000-abcd1234")
    spec, container = deployment["spec"], the_container(deployment)
    assert deployment["metadata"]["namespace"] == cfg.kubernetes.namespace
    assert spec["replicas"] == cfg.kubernetes.replicas
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["progressDeadlineSeconds"] == cfg.kubernetes.rollout_timeout_seconds
    assert container["image"] == f"{cfg.project.name}:20250101-000000-abcd1234"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    startup = container["startupProbe"]
    patience = startup["periodSeconds"] * startup["failureThreshold"]
    assert patience >= cfg.serving.ready_timeout_seconds
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == cfg.kubernetes.pre_stop_seconds
    assert container["resources"] == {
        "requests": {"cpu": cfg.kubernetes.cpu_request, "memory": cfg.kubernetes.memory_request},
        "limits": {"memory": cfg.kubernetes.memory_limit},
    }
    assert container["ports"][0]["containerPort"] == cfg.serving.port
    assert {"name": "BENTOML_PORT", "value": str(cfg.serving.port)} in container["env"]


def test_pods_outlive_the_drain_and_the_longest_request(project):
    """terminationGracePeriodSeconds >= preStop + the service's request timeout + 5 s."""
    service_source = (ROOT / "model" / "service.py").read_text()
    timeout = int(re.search(r'traffic=\{"timeout": (\d+)\}', service_source).group(1))
    assert timeout == k8s.REQUEST_TIMEOUT_SECONDS, "model/service.py changed its traffic timeout"
    for workload in (k8s.deployment(project, "v1"), rollout_and_analysis(project)[0]):
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= project.config.kubernetes.pre_stop_seconds + timeout + 5


def test_changing_the_config_changes_the_manifests(tmp_path, project):
    def change(raw: dict) -> None:
        raw["serving"].update(port=8080, image_repository="registry.example.com/ml/bikes")
        raw["serving"].update(max_error_ratio=0.05, ready_timeout_seconds=120)
        raw["kubernetes"].update(
            namespace="ml-serving",
            replicas=4,
            cpu_request="2",
            memory_request="2Gi",
            memory_limit="3Gi",
            pre_stop_seconds=0,
            rollout_timeout_seconds=900,
            prometheus_url="http://prom.example:9090",
        )

    changed = config_copy(tmp_path, change)
    deployment = k8s.deployment(changed, "v7")
    container = the_container(deployment)
    assert container["image"] == "registry.example.com/ml/bikes:v7"
    assert container["ports"][0]["containerPort"] == 8080
    assert k8s.service(changed)["spec"]["ports"][0]["port"] == 8080
    assert deployment["metadata"]["namespace"] == "ml-serving"
    assert deployment["spec"]["replicas"] == 4
    assert deployment["spec"]["progressDeadlineSeconds"] == 900
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "2Gi"}
    assert container["resources"]["limits"] == {"memory": "3Gi"}
    assert "lifecycle" not in container  # no drain configured: no preStop hook
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    rollout, analysis = rollout_and_analysis(changed, "v7")
    metric = analysis["spec"]["metrics"][0]
    assert metric["successCondition"] == "result[0] <= 0.05"
    assert metric["provider"]["prometheus"]["address"] == "http://prom.example:9090"
    assert the_container(rollout)["image"] == "registry.example.com/ml/bikes:v7"
    for doc in core_documents(changed, "v7"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    assert k8s.deployment(project, "v7") != deployment


def test_the_analysis_measures_the_canarys_5xx_ratio_against_the_config_limit(project):
    rollout, analysis = rollout_and_analysis(project, "v9")
    limit = project.config.serving.max_error_ratio
    metric = next(m for m in analysis["spec"]["metrics"] if m["name"] == "error-ratio")
    query = metric["provider"]["prometheus"]["query"]
    assert metric["successCondition"] == f"result[0] <= {limit}"
    assert metric["failureCondition"] == f"result[0] > {limit}"
    assert metric["provider"]["prometheus"]["address"] == project.config.kubernetes.prometheus_url
    # numerator: 5xx answers of this version; denominator: all its answers; probes excluded
    errors, total = query.split("/ clamp_min")
    assert 'http_response_code=~"5.."' in errors and "http_response_code" not in total
    for part in (errors, total):
        assert 'bentoml_service_request_total{service_version="{{args.bento-version}}"' in part
        assert "livez|readyz" in part
    # the Rollout passes the release's version and runs the analysis through its canary steps
    canary = rollout["spec"]["strategy"]["canary"]
    assert canary["analysis"]["templates"] == [{"templateName": analysis["metadata"]["name"]}]
    assert canary["analysis"]["args"] == [{"name": "bento-version", "value": "v9"}]
    assert canary["maxUnavailable"] == 0
    assert [s for s in canary["steps"] if "setWeight" in s]
    assert rollout["spec"]["progressDeadlineAbort"] is True


def test_canary_steps_fit_in_the_rollout_timeout(project):
    rollout, _ = rollout_and_analysis(project)
    pauses = sum(
        int(step["pause"]["duration"].removesuffix("s"))
        for step in rollout["spec"]["strategy"]["canary"]["steps"]
        if "pause" in step
    )
    assert pauses + project.config.serving.ready_timeout_seconds < (
        project.config.kubernetes.rollout_timeout_seconds
    )


def test_committed_files_carry_the_placeholder_and_parse(project):
    for name in ("deployment.yaml", "argo-rollout.yaml"):
        text = (ROOT / "deployments" / "k8s" / name).read_text()
        docs = list(yaml.safe_load_all(text))
        images = {the_container(d)["image"] for d in docs if d["kind"] in ("Deployment", "Rollout")}
        assert images == {f"{project.config.project.name}:{k8s.PLACEHOLDER_VERSION}"}
        assert k8s.PLACEHOLDER_VERSION in text.splitlines()[1]  # the header says what it is


@pytest.mark.parametrize("tag", ["bikeshare", "bikeshare:latest", "bikeshare:", "bikeshare:a/b"])
def test_a_tag_without_an_exact_version_is_refused(tag):
    with pytest.raises(ValueError, match="never :latest"):
        k8s.bento_version(tag)


def test_pods_capture_to_s3_with_credentials_from_a_secret(tmp_path, project):
    def change(raw: dict) -> None:
        raw["capture"].update(path="s3://ml-capture/bikes", sample_rate=0.5, flush_seconds=2.0)
        raw["storage"] = {"endpoint_url": "http://minio.storage:9000"}

    changed = config_copy(tmp_path, change)
    for workload in (k8s.deployment(changed, "v7"), rollout_and_analysis(changed, "v7")[0]):
        env = {e["name"]: e for e in the_container(workload)["env"]}
        assert env["DRIFTLOOP_CAPTURE_DIR"]["value"] == "s3://ml-capture/bikes"
        assert env["DRIFTLOOP_STORAGE_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
        assert env["DRIFTLOOP_CAPTURE_SAMPLE_RATE"]["value"] == "0.5"
        assert env["DRIFTLOOP_CAPTURE_FLUSH_SECONDS"]["value"] == "2.0"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": "bikeshare-storage", "key": key}},
            }
    rendered = "".join(k8s.manifest_files(changed, "note").values())
    assert "kind: Secret" not in rendered  # created by hand, never written to a file
    for doc in core_documents(changed, "v7"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_pods_capture_nothing_to_their_own_disk(project):
    names = {e["name"] for e in the_container(k8s.deployment(project, "v7"))["env"]}
    assert project.config.capture.path == ".driftloop/capture"
    assert names == {"BENTOML_PORT", "OMP_NUM_THREADS"}
