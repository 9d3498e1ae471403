"""Putting a bento into service behind the stack's nginx, blue/green, with automatic rollback.

The order is the promise: the candidate starts in the idle slot and must be ready (with a
deadline) and pass the smoke test before any client request reaches it; then nginx mirrors live
traffic to it for `shadow.seconds` and its answers are judged against the champion's
(tasks/release/shadow.py); then nginx switches with a checked reload; then a watch window judges
errors and latency on real traffic; only then is it recorded as serving and the old slot
stopped. A failure at any step puts traffic back on the previous release (or leaves it there),
stops the candidate, logs the attempt as failed or rolled back, and raises `RolloutFailed` with
the step and the reason.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Literal

from config.loader import Project
from model.capture import MIRROR_SECRET_ENV
from tasks.commands import CommandError
from tasks.metrics import push_rollout_counts, push_serving_info
from tasks.release.health import offline_sample, smoke, watch
from tasks.release.image import build_image, push_image
from tasks.release.kubernetes import release_to_kubernetes
from tasks.release.package import Bento
from tasks.release.releases import (
    Attempt,
    Release,
    append_attempt,
    now_iso,
    previous_release,
    read_serving,
    record_serving,
    rollout_counts,
)
from tasks.release.serving import SLOTS, slot_port, slot_url, start_slot, stop_slot, switch_traffic
from tasks.release.shadow import run_shadow, shadow_env
from tasks.stack.nginx import upstream_port
from tasks.stack.paths import stack_dir
from tasks.stack.supervisor import supervisor_pid

DRAIN_SECONDS = 2.0  # nginx's old workers finish their requests to a slot before it stops

Progress = Callable[[str], None]


class RolloutFailed(CommandError):
    """The release did not take over; `attempt` says at which step and why."""

    def __init__(self, attempt: Attempt, message: str) -> None:
        super().__init__(message)
        self.attempt = attempt


def idle_slot(current: Release | None) -> str:
    if current is None or current.slot not in SLOTS:
        return SLOTS[0]
    return SLOTS[1 - SLOTS.index(current.slot)]


def client_url(project: Project) -> str:
    serving = project.config.serving
    return f"http://{serving.host}:{serving.port}"


def go_live(
    project: Project,
    bento: Bento,
    *,
    action: Literal["promote", "rollback", "release"] = "promote",
    released_by: str = "",
    progress: Progress = lambda _: None,
) -> Release:
    """Serve `bento` through nginx; on any failure the previous release keeps serving.

    `action` says how it came (an approved promotion, a rollback, a release by hand) and
    `released_by` who ran it by hand; both go to serving.json, the release log and lineage."""
    reconcile(project)  # an earlier attempt that died half-way is undone first
    current = read_serving(project)
    slot = idle_slot(current)
    release = Release(
        bento=bento.tag,
        model_tag=bento.model_tag,
        labels=bento.labels,
        slot=slot,
        url=client_url(project),
        how=action,
        released_by=released_by,
    )
    stage, switched, seen = "smoke sample", False, ""
    mirror = shadow_wanted(project, current, slot, action)
    try:
        sample = offline_sample(project, bento.model_tag)
        stage = "start"
        progress(f"starting {bento.tag} in slot {slot}")
        start_slot(project, slot, bento.tag, mirror)
        stage = "smoke"
        progress(f"smoke test: {len(sample.records)} rows against the offline predictions")
        smoke(slot_url(project, slot), sample, bento.tag)
        if mirror is not None and current is not None and current.slot is not None:
            stage = "shadow"
            secret = mirror[MIRROR_SECRET_ENV]
            seen = run_shadow(project, slot, current.slot, secret, bento.model_tag, progress)
            progress(seen)
        elif action != "rollback":
            seen = "shadow: off (shadow.seconds 0) or nothing serving to mirror"
        stage = "switch"
        switch_traffic(project, slot)
        switched = True
        stage = "watch"
        progress(f"watching {project.config.serving.watch_seconds:.0f} s of traffic")
        watch(project, slot_url(project, slot), client_url(project), sample, bento.tag, progress)
    except Exception as exc:  # every failure, whatever its kind, ends in a rollback
        restored = restore(project, current, slot, switched)
        attempt = Attempt(
            at=now_iso(),
            release=release,
            outcome="rolled_back" if switched else "failed",
            action=action,
            stage=stage,
            reason=str(exc),
            previous=current.bento if current else None,
            shadow=seen,
        )
        finish(project, attempt)
        raise RolloutFailed(
            attempt, f"{bento.tag} was not put into service (failed at {stage}): {exc}\n{restored}"
        ) from None

    release = record_serving(project, release)
    if current is not None and current.slot in SLOTS and current.slot != slot:
        time.sleep(DRAIN_SECONDS)
        stop_slot(project, current.slot)
    return promoted(project, release, current, action, seen)


def shadow_wanted(
    project: Project, current: Release | None, slot: str, action: str
) -> dict[str, str] | None:
    """The candidate's environment for a shadow stage, or None: the stage is off, nothing
    serves behind nginx to mirror, or this is a rollback (back to a release that served)."""
    if project.config.shadow.seconds <= 0 or action == "rollback":
        return None
    if current is None or current.slot not in SLOTS:
        return None
    return shadow_env(project, slot)


def promoted(
    project: Project,
    release: Release,
    current: Release | None,
    action: Literal["promote", "rollback", "release"],
    shadow: str = "",
) -> Release:
    """Log the attempt as promoted and export what serves now."""
    finish(
        project,
        Attempt(
            at=release.started_at,
            release=release,
            outcome="promoted",
            action=action,
            previous=current.bento if current else None,
            shadow=shadow,
        ),
    )
    push_serving_info(project, release)
    return release


def restore(project: Project, current: Release | None, slot: str, switched: bool) -> str:
    """Traffic back to `current` (if it had moved), the candidate stopped; says what serves."""
    notes = []
    if switched and current is not None and current.slot in SLOTS:
        try:
            switch_traffic(project, current.slot)
        except CommandError as exc:
            notes.append(f"TRAFFIC COULD NOT BE SWITCHED BACK to {current.bento}: {exc}")
    if switched:
        time.sleep(DRAIN_SECONDS)
    try:
        stop_slot(project, slot)
    except CommandError as exc:
        notes.append(f"the candidate in slot {slot} could not be stopped: {exc}")
    if current is None:
        notes.append("nothing was serving before; nothing serves now")
    else:
        notes.append(f"{current.bento} keeps serving")
    return "; ".join(notes)


def reconcile(project: Project) -> str | None:
    """Make nginx and the slots agree with serving.json again after a roll-forward's process
    died half-way (killed, host lost): traffic back on the recorded release, the stray slot
    stopped and its attempt logged as rolled back. Returns what it did, or None."""

    current = read_serving(project)
    if current is None or current.slot not in SLOTS or supervisor_pid(project) is None:
        return None
    stray = idle_slot(current)
    stray_bento = slot_bento(project, stray)
    moved = upstream_port(project) != slot_port(project, current.slot)
    if not moved and stray_bento is None:
        return None
    done = []
    if moved:
        switch_traffic(project, current.slot)
        done.append(f"traffic back on {current.bento}")
    if stray_bento is not None:
        time.sleep(DRAIN_SECONDS)
        stop_slot(project, stray)
        done.append(f"{stray_bento} stopped in slot {stray}")
    what = "; ".join(done)
    if stray_bento is not None and stray_bento != current.bento:
        finish(
            project,
            Attempt(
                at=now_iso(),
                release=Release(
                    bento=stray_bento, model_tag="", url=client_url(project), labels={}, slot=stray
                ),
                outcome="rolled_back" if moved else "failed",
                stage="interrupted",
                reason=f"the roll-forward's process died before it finished; {what}",
                previous=current.bento,
            ),
        )
    return what


def slot_bento(project: Project, slot: str) -> str | None:
    """The bento a slot's supervisord program serves, if the slot is configured."""

    conf = stack_dir(project) / "slots" / f"{slot}.conf"
    if not conf.exists():
        return None
    match = re.search(r" serve (\S+) ", conf.read_text())
    return match.group(1) if match else "?"


def finish(project: Project, attempt: Attempt) -> None:
    append_attempt(project, attempt)
    push_rollout_counts(project, rollout_counts(project))


def put_into_service(
    project: Project,
    bento: Bento,
    progress: Progress = lambda _: None,
    *,
    action: Literal["promote", "release"] = "promote",
    released_by: str = "",
) -> Release:
    """The release on the configured backend: local slots (with an OCI image for
    `containerize`), or a Kubernetes rollout that is undone when it stalls or fails analysis.

    Raises RolloutFailed, with the attempt logged, whatever the backend."""
    backend = project.config.serving.backend
    how = {"action": action, "released_by": released_by, "progress": progress}
    if backend == "local":
        return go_live(project, bento, **how)

    try:
        image = build_image(project, bento.tag)
    except CommandError as exc:
        raise RolloutFailed(attempt_failed(project, bento, "image", exc), str(exc)) from None
    bento = Bento(tag=bento.tag, model_tag=bento.model_tag, labels={**bento.labels, "image": image})
    if backend == "containerize":
        return go_live(project, bento, **how)
    if backend == "kubernetes":
        return kubernetes_release(project, bento, image, push_image, action, released_by)
    raise CommandError(f"serving.backend {backend!r} is not one of local, containerize, kubernetes")


def kubernetes_release(
    project: Project,
    bento: Bento,
    image: str,
    push_image: Callable[[Project, str], object],
    action: Literal["promote", "rollback", "release"] = "promote",
    released_by: str = "",
) -> Release:
    """The image pushed, then the cluster rolled to it (undone there on a stall or a failed
    analysis); recorded as serving only once the rollout is healthy."""
    current = read_serving(project)
    stage = "push"
    try:
        push_image(project, image)
        stage = "kubernetes"
        kube = release_to_kubernetes(project, bento.tag)
    except CommandError as exc:
        attempt = attempt_failed(project, bento, stage, exc, rolled_back=stage == "kubernetes")
        raise RolloutFailed(attempt, str(exc)) from None
    release = record_serving(
        project,
        Release(
            bento=bento.tag,
            model_tag=bento.model_tag,
            labels=bento.labels,
            url=f"kubernetes {kube.namespace}/{kube.workload}",
            how=action,
            released_by=released_by,
        ),
    )
    return promoted(project, release, current, action)


def attempt_failed(
    project: Project,
    bento: Bento | None,
    stage: str,
    exc: Exception,
    *,
    model_tag: str = "",
    labels: dict[str, str] | None = None,
    rolled_back: bool = False,
) -> Attempt:
    """Log an attempt that ended before (or without) the local roll-forward's own bookkeeping."""
    current = read_serving(project)
    attempt = Attempt(
        at=now_iso(),
        release=Release(
            bento=bento.tag if bento else "",
            model_tag=bento.model_tag if bento else model_tag,
            labels=bento.labels if bento else labels or {},
            url=client_url(project),
        ),
        outcome="rolled_back" if rolled_back else "failed",
        stage=stage,
        reason=str(exc),
        previous=current.bento if current else None,
    )
    finish(project, attempt)
    return attempt


def rollback(
    project: Project, released_by: str = "", progress: Progress = lambda _: None
) -> Release:
    """Return to the release that served before this one, through the same checks."""
    target = previous_release(project)
    if target is None:
        raise CommandError(
            "there is no earlier release to return to; `driftloop lineage` shows what serves"
        )
    bento = Bento(tag=target.bento, model_tag=target.model_tag, labels=target.labels)
    if project.config.serving.backend == "kubernetes":  # the cluster goes back, not a local slot
        progress(f"rolling the cluster back to {bento.tag}")
        image = target.labels.get("image", "")
        return kubernetes_release(project, bento, image, already_pushed, "rollback", released_by)
    return go_live(project, bento, action="rollback", released_by=released_by, progress=progress)


def already_pushed(project: Project, image: str) -> None:
    """A rollback's image: the registry has held it since its own release."""
