"""The kubernetes backend: apply a release's manifests, wait for it, and undo it if it fails.

Kubernetes never rolls back by itself: a Deployment past its progress deadline only reports
`ProgressDeadlineExceeded`, and an Argo Rollout aborted by its analysis keeps the new template
in its spec. So a release waits for the outcome and, on a stall or a failed analysis, puts the
previous version back, checks that it serves, and raises CommandError saying what happened.
Everything goes through `kubectl`, with `kubernetes.context` and `kubernetes.namespace`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from config.loader import Project
from tasks.commands import CommandError, run
from tasks.render import kubernetes as k8s
from tasks.render.files import rendered_note

FIELD_MANAGER = "driftloop"
POLL_SECONDS = 2.0
IMAGE_PATH = "{.spec.template.spec.containers[0].image}"


@dataclass(frozen=True)
class KubeRelease:
    """What a release left serving in the cluster."""

    image: str
    workload: str  # kubectl's name for it, e.g. deployment/bikeshare
    namespace: str
    manifest: Path  # the applied copy, with the release's image


def release_to_kubernetes(project: Project, bento_tag: str) -> KubeRelease:
    """Roll the bento's image out; on a stall or failed analysis, return to the previous one."""
    try:
        version = k8s.bento_version(bento_tag)
    except ValueError as err:
        raise CommandError(str(err)) from None
    image, workload = k8s.image_name(project, version), workload_name(project)
    previous = current_image(project)  # also proves the cluster answers before anything changes
    manifest = write_manifest(project, version)
    apply(project, manifest)
    if project.config.kubernetes.strategy == "argo":
        failure = wait_for_rollout(project)
    else:
        failure = wait_for_deployment(project)
    if failure is None:
        return KubeRelease(image, workload, project.config.kubernetes.namespace, manifest)
    raise CommandError(roll_back(project, image, previous, failure))


def workload_name(project: Project) -> str:
    kind = "rollout" if project.config.kubernetes.strategy == "argo" else "deployment"
    return f"{kind}/{k8s.app_name(project)}"


# ---------------------------------------------------------------- kubectl


def kubectl(project: Project, *args: str, hint: str, timeout: float = 60) -> str:
    """Run kubectl against the configured context and namespace."""
    exe = shutil.which("kubectl")
    if exe is None:
        raise CommandError(
            "`kubectl` is not installed; serving.backend: kubernetes drives the cluster with it. "
            "Install it (https://kubernetes.io/docs/tasks/tools/) or set serving.backend: local."
        )
    cfg = project.config.kubernetes
    where = ["--namespace", cfg.namespace] + (["--context", cfg.context] if cfg.context else [])
    return run([exe, *args, *where], project.root, hint=hint, timeout=timeout)


def current_image(project: Project) -> str:
    """The image the workload runs now; empty before the first release."""
    kind = workload_name(project).split("/")[0]
    hint = _reach_hint(project)
    if kind == "rollout":
        hint += " If the server has no `rollout` resource, install Argo Rollouts in the cluster."
    return kubectl(
        project,
        "get",
        workload_name(project),
        "--ignore-not-found",
        "--request-timeout=30s",
        "-o",
        f"jsonpath={IMAGE_PATH}",
        hint=hint,
    ).strip()


def write_manifest(project: Project, version: str) -> Path:
    """A copy of the strategy's manifest with the release's version, under the state dir."""
    name = k8s.strategy_file(project)
    text = k8s.manifest_files(project, rendered_note(project), version)[name]
    path = project.state_dir / "k8s" / f"{version}-{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def apply(project: Project, manifest: Path) -> None:
    """Server-side apply: the API server merges and validates; driftloop owns these fields."""
    kubectl(
        project,
        "apply",
        "--server-side",
        "--force-conflicts",
        f"--field-manager={FIELD_MANAGER}",
        "--request-timeout=60s",
        "-f",
        str(manifest),
        hint="The cluster refused the manifests; the previous release keeps serving. "
        + _reach_hint(project),
    )


def _reach_hint(project: Project) -> str:
    cfg = project.config.kubernetes
    context = cfg.context or "kubectl's current context"
    return (
        f"Can kubectl reach the cluster ({context}) and does namespace {cfg.namespace} exist? "
        f"`kubectl get namespace {cfg.namespace}`; nothing was changed."
    )


# ---------------------------------------------------------------- waiting


def wait_for_deployment(project: Project) -> str | None:
    """`kubectl rollout status` until ready; its error (deadline, timeout) is the failure."""
    seconds = project.config.kubernetes.rollout_timeout_seconds
    try:
        kubectl(
            project,
            "rollout",
            "status",
            workload_name(project),
            f"--timeout={seconds}s",
            hint="",
            timeout=seconds + 30,
        )
    except CommandError as err:
        return _kubectl_words(err)
    return None


def wait_for_rollout(project: Project, seconds: float | None = None) -> str | None:
    """Poll the Rollout's phase as Argo reports it: Healthy, or Degraded (failed analysis,
    progress deadline), or still not Healthy when the timeout ends."""
    seconds = seconds or project.config.kubernetes.rollout_timeout_seconds
    deadline = time.monotonic() + seconds
    while True:
        phase, message = rollout_phase(project)
        if phase == "Healthy":
            return None
        if phase == "Degraded":
            return message or "the rollout is Degraded"
        if time.monotonic() > deadline:
            return f"still {phase} after {seconds:.0f}s ({message or 'no message'})"
        time.sleep(POLL_SECONDS)


def rollout_phase(project: Project) -> tuple[str, str]:
    """(phase, message) of the Rollout, Progressing until Argo has seen the latest spec."""
    out = kubectl(
        project,
        "get",
        workload_name(project),
        "--request-timeout=30s",
        "-o",
        "json",
        hint=_reach_hint(project),
    )
    rollout = json.loads(out)
    status = rollout.get("status") or {}
    observed = str(status.get("observedGeneration", ""))
    generation = str(rollout["metadata"].get("generation", ""))
    if observed.isdigit() and observed != generation:
        return "Progressing", "waiting for the rollout spec update to be observed"
    return status.get("phase") or "Progressing", status.get("message", "")


# ---------------------------------------------------------------- rolling back


def roll_back(project: Project, image: str, previous: str, failure: str) -> str:
    """Put `previous` back and prove it serves; returns the message for the CommandError."""
    cfg, workload = project.config.kubernetes, workload_name(project)
    look = (
        f"Look at `kubectl -n {cfg.namespace} describe {workload}` and the new pods' logs "
        f"(`kubectl -n {cfg.namespace} logs -l app.kubernetes.io/version="
        f"{image.rpartition(':')[2]}`), fix, and release again."
    )
    what = f"Release {image} failed in {workload}: {failure}."
    if cfg.strategy == "argo":
        abort_rollout(project)
    if not previous or previous == image:
        return f"{what} There is no earlier release to return to. {look}"
    if cfg.strategy == "argo":
        apply(project, write_manifest(project, previous.rpartition(":")[2]))
        after = wait_for_rollout(project)
    else:
        kubectl(project, "rollout", "undo", workload, hint="the undo failed: run it by hand")
        after = wait_for_deployment(project)
    now = current_image(project)
    if after is not None or now != previous:
        return (
            f"{what} Rolling back to {previous} did not finish either ({after or now}); "
            f"the cluster may serve a mix. {look}"
        )
    how = "re-applied" if cfg.strategy == "argo" else "`kubectl rollout undo`"
    return f"{what} Rolled back ({how}): {previous} serves again. {look}"


def abort_rollout(project: Project) -> None:
    """What `kubectl argo rollouts abort` does: scale the canary down, stable takes all traffic."""
    kubectl(
        project,
        "patch",
        workload_name(project),
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"abort":true}}',
        "--request-timeout=30s",
        hint="the abort failed: run `kubectl argo rollouts abort` by hand",
    )


def _kubectl_words(err: CommandError) -> str:
    """kubectl's own reason, without the command line run() puts in front of it."""
    lines = [line for line in str(err).splitlines()[1:] if line.strip()]
    return " ".join(lines) or str(err)
