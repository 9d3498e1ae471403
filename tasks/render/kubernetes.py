"""The same bento image past one machine: Kubernetes manifests rendered from the config.

Two variants of one pod template: a plain Deployment (rolling update that never drops below the
desired replicas) and an Argo Rollouts canary whose AnalysisTemplate asks Prometheus for the new
version's 5xx ratio and for the drift of its predictions against the stable version's (which the
monitor publishes per version). Both come with a Service and a PodDisruptionBudget. The
functions return plain dicts; `manifest_files` turns them into the texts that `driftloop render`
commits under `deployments/k8s/` (with a placeholder version) and that a release applies.

Pods share no disk, so they capture only to an S3-API store: with `capture.path` an s3:// URL
they get the store, its endpoint and the capture settings as plain values and its credentials
from the Secret `<app>-storage`, which is never rendered (the README's `kubectl create secret`).
"""

from __future__ import annotations

import math
import re

from config.loader import Project
from model.store import is_url
from tasks.capture import server_settings
from tasks.render.files import yaml_text
from tasks.render.names import API_CALLS, MONITOR_JOB, format_number

# The committed files carry this tag; a release replaces it with its bento version.
PLACEHOLDER_VERSION = "BENTO_VERSION"
CONTAINER = "bento"
PORT_NAME = "http"
# model/service.py's traffic timeout: the longest request a pod must finish before it exits.
REQUEST_TIMEOUT_SECONDS = 30
PROBE_PERIOD_SECONDS = 5
ANALYSIS_INTERVAL = "30s"
ANALYSIS_FAILURE_LIMIT = 2  # the third failed measurement fails the analysis
CANARY_STEPS = [
    {"setWeight": 25},
    {"pause": {"duration": "60s"}},
    {"setWeight": 50},
    {"pause": {"duration": "60s"}},
]
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")  # in the storage Secret
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def app_name(project: Project) -> str:
    """The workload, Service and label name: the project name as a DNS-1123 label."""
    return re.sub(r"[^a-z0-9-]", "-", project.config.project.name.lower()).strip("-")[:63]


def bento_version(bento_tag: str) -> str:
    """The version part of `name:version`; it becomes the image tag, so it must be one."""
    version = bento_tag.partition(":")[2]
    if not _TAG.match(version) or version == "latest":
        raise ValueError(
            f"bento tag {bento_tag!r} has no usable version: pass the exact tag "
            "`bentoml build` printed (name:version), never :latest"
        )
    return version


def image_name(project: Project, version: str) -> str:
    """`<serving.image_repository or project name>:<bento version>`, as `bentoml containerize`
    tags it."""
    repository = project.config.serving.image_repository or project.config.project.name
    return f"{repository}:{version}"


def storage_secret(project: Project) -> str:
    """The Secret holding the capture store's credentials (created by hand, never rendered)."""
    return f"{app_name(project)}-storage"


def labels(project: Project) -> dict[str, str]:
    return {"app.kubernetes.io/name": app_name(project), "app.kubernetes.io/part-of": "driftloop"}


def _metadata(project: Project, name: str | None = None) -> dict:
    return {
        "name": name or app_name(project),
        "namespace": project.config.kubernetes.namespace,
        "labels": labels(project),
    }


# ---------------------------------------------------------------- the pod


def pod_template(project: Project, version: str) -> dict:
    """One bento container, shared by the Deployment and the Rollout."""
    pre_stop = project.config.kubernetes.pre_stop_seconds
    return {
        "metadata": {
            "labels": {**labels(project), "app.kubernetes.io/version": version},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(project.config.serving.port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            # after the preStop drain, in-flight requests get their full timeout
            "terminationGracePeriodSeconds": pre_stop + REQUEST_TIMEOUT_SECONDS + 5,
            "containers": [container(project, version)],
        },
    }


def container(project: Project, version: str) -> dict:
    cfg = project.config
    spec: dict = {
        "name": CONTAINER,
        "image": image_name(project, version),
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "BENTOML_PORT", "value": str(cfg.serving.port)},
            {"name": "OMP_NUM_THREADS", "value": str(cfg.serving.threads)},
            *capture_env(project),
        ],
        "ports": [{"name": PORT_NAME, "containerPort": cfg.serving.port, "protocol": "TCP"}],
        **probes(project),
        "resources": {
            "requests": {
                "cpu": cfg.kubernetes.cpu_request,
                "memory": cfg.kubernetes.memory_request,
            },
            # no CPU limit: throttling a model mid-request costs latency, not safety
            "limits": {"memory": cfg.kubernetes.memory_limit},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if cfg.kubernetes.pre_stop_seconds:
        # endpoints are removed while SIGTERM is sent: keep serving until they are gone
        spec["lifecycle"] = {"preStop": {"sleep": {"seconds": cfg.kubernetes.pre_stop_seconds}}}
    return spec


def capture_env(project: Project) -> list[dict]:
    """The capture settings of a pod (`server_settings`): nothing unless `capture.path` is an
    s3:// URL, since a pod's own disk is neither shared nor kept."""
    if not is_url(project.config.capture.path):
        return []
    secret = storage_secret(project)
    return [{"name": k, "value": v} for k, v in server_settings(project).items() if v] + [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key in CREDENTIAL_KEYS
    ]


def probes(project: Project) -> dict[str, dict]:
    """Readiness gates traffic, liveness restarts a hung server, and the startup probe gives a
    slow model load `serving.ready_timeout_seconds` before liveness may restart it."""

    def probe(path: str, failures: int) -> dict:
        return {
            "httpGet": {"path": path, "port": PORT_NAME},
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    startup = math.ceil(project.config.serving.ready_timeout_seconds / PROBE_PERIOD_SECONDS)
    return {
        "startupProbe": probe("/readyz", max(startup, 1)),
        "readinessProbe": probe("/readyz", 2),
        "livenessProbe": probe("/livez", 3),
    }


# ---------------------------------------------------------------- plain Deployment


def deployment(project: Project, version: str) -> dict:
    """Rolling update that adds one pod at a time and removes none before its successor is
    ready; a stall is reported after `rollout_timeout_seconds` (the release then undoes it)."""
    k8s = project.config.kubernetes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(project),
        "spec": {
            "replicas": k8s.replicas,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": k8s.rollout_timeout_seconds,
            "selector": {"matchLabels": labels(project)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": pod_template(project, version),
        },
    }


def service(project: Project) -> dict:
    port = project.config.serving.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(project),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(project),
            "ports": [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME}],
        },
    }


def disruption_budget(project: Project) -> dict:
    """Drains evict one pod at a time (a minimum of all replicas would block drains forever)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(project),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(project)}},
    }


# ---------------------------------------------------------------- Argo Rollouts


def analysis_name(project: Project) -> str:
    """Named for its first check (the 5xx ratio); it also checks the prediction drift."""
    return f"{app_name(project)}-error-ratio"


def error_ratio_query(project: Project) -> str:
    """5xx share of prediction requests answered by one bento version over the last minute.

    No traffic counts as no errors (0), not as a failed measurement: readiness already proved
    the pods answer, and a quiet hour must not block a release.
    """
    sel = f'service_version="{{{{args.bento-version}}}}",{API_CALLS}'
    errors = f'sum(rate(bentoml_service_request_total{{{sel},http_response_code=~"5.."}}[1m]))'
    total = f"sum(rate(bentoml_service_request_total{{{sel}}}[1m]))"
    return f"(\n  {errors}\n  or vector(0)\n)\n/ clamp_min(\n  {total}\n  or vector(0), 1e-9\n)"


def prediction_drift_query(project: Project) -> str:
    """The drift of one bento version's predictions against the stable version's, as the
    monitor last measured it on a window both answered (`tasks/monitor/versions.py`).

    No measurement counts as no drift (0): until a monitor run has seen enough of the canary's
    answers there is nothing to judge, and a quiet window must not block a release.
    """
    name = project.config.project.name
    sel = f'job="{MONITOR_JOB}",model="{name}",version="{{{{args.bento-version}}}}"'
    return f"max(\n  driftloop_version_prediction_drift{{{sel}}}\n)\nor vector(0)"


def analysis_metric(project: Project, name: str, limit: float, query: str, failures: int) -> dict:
    bound = format_number(limit)
    return {
        "name": name,
        "interval": ANALYSIS_INTERVAL,
        "initialDelay": ANALYSIS_INTERVAL,
        "failureLimit": failures,
        "successCondition": f"result[0] <= {bound}",
        "failureCondition": f"result[0] > {bound}",
        "provider": {
            "prometheus": {"address": project.config.kubernetes.prometheus_url, "query": query}
        },
    }


def analysis_template(project: Project) -> dict:
    """Fails the canary when its 5xx ratio passes `serving.max_error_ratio` three times, or
    once when the monitor finds its predictions drifted from the stable version's past
    `monitor.version_drift_threshold` (one window's verdict, not a noisy instant: the same
    measurement stands until the next monitor run)."""
    cfg = project.config
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": _metadata(project, analysis_name(project)),
        "spec": {
            "args": [{"name": "bento-version"}],
            "metrics": [
                analysis_metric(
                    project,
                    "error-ratio",
                    cfg.serving.max_error_ratio,
                    error_ratio_query(project),
                    ANALYSIS_FAILURE_LIMIT,
                ),
                analysis_metric(
                    project,
                    "prediction-drift",
                    cfg.monitor.version_drift_threshold,
                    prediction_drift_query(project),
                    0,
                ),
            ],
        },
    }


def rollout(project: Project, version: str) -> dict:
    """Canary in replica steps with the analysis in the background; Argo aborts on a
    failed analysis or a stall (`progressDeadlineAbort`), and the release reverts the spec."""
    k8s = project.config.kubernetes
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": _metadata(project),
        "spec": {
            "replicas": k8s.replicas,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": k8s.rollout_timeout_seconds,
            "progressDeadlineAbort": True,
            "selector": {"matchLabels": labels(project)},
            "template": pod_template(project, version),
            "strategy": {
                "canary": {
                    "maxSurge": 1,
                    "maxUnavailable": 0,
                    "analysis": {
                        "templates": [{"templateName": analysis_name(project)}],
                        "args": [{"name": "bento-version", "value": version}],
                    },
                    "steps": CANARY_STEPS,
                }
            },
        },
    }


# ---------------------------------------------------------------- files


def manifests(project: Project, version: str = PLACEHOLDER_VERSION) -> dict[str, list[dict]]:
    """File name -> its documents: one self-contained file per strategy."""
    shared = [service(project), disruption_budget(project)]
    return {
        "deployment.yaml": [deployment(project, version), *shared],
        "argo-rollout.yaml": [analysis_template(project), rollout(project, version), *shared],
    }


def strategy_file(project: Project) -> str:
    return {"deployment": "deployment.yaml", "argo": "argo-rollout.yaml"}[
        project.config.kubernetes.strategy
    ]


def manifest_files(project: Project, note: str, version: str = PLACEHOLDER_VERSION) -> dict:
    """File name -> multi-document YAML text headed by `note`."""
    usage = (
        f"The image tag {PLACEHOLDER_VERSION} stands for a bento version: the kubernetes "
        "backend applies a copy with the release's version."
        if version == PLACEHOLDER_VERSION
        else f"Release {version}."
    )
    return {
        name: yaml_text(docs[0], f"{note}\n{usage}")
        + "".join(f"---\n{yaml_text(d, '')}" for d in docs[1:])
        for name, docs in manifests(project, version).items()
    }
