"""Packaging: the trained model into BentoML's store, then a bento pinned to that exact model."""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cloudpickle
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from model.performance import ESTIMATOR_KEY, PerformanceEstimator
from tasks.commands import CommandError, bin_path, run


@dataclass(frozen=True)
class Bento:
    tag: str
    model_tag: str
    labels: dict[str, str]


def bentoml_home(project: Project) -> Path:
    return project.state_dir / "bentoml"


def bentoml_env(project: Project) -> dict[str, str]:
    return {"BENTOML_HOME": str(bentoml_home(project)), "BENTOML_DO_NOT_TRACK": "true"}


def register_model(project: Project) -> str:
    """The trained pipeline saved into the project's BentoML store; returns its exact tag.

    Runs in a subprocess so the store is the project's own whatever this process imported.
    """
    out = run(
        [sys.executable, "-m", "model.register"],
        project.root,
        env=bentoml_env(project),
        hint="is the model trained (`dvc repro`) and the store writable?",
    )
    match = re.search(r"__model_tag__:(\S+)", out)
    if not match:
        raise CommandError(f"model registration printed no tag:\n{out[-500:]}")
    return match.group(1)


@dataclass(frozen=True)
class StoredModel:
    """What the monitor reads of a stored model: its class order and held-out metrics."""

    tag: str
    classes: list[Any] | None = None  # the order of its predict_proba columns
    held_out: dict[str, float] = field(default_factory=dict)
    held_out_rows: int | None = None


def stored_model(project: Project, model_tag: str) -> StoredModel:
    """The metadata `model.register` stored with `model_tag`, read back from the store."""
    out = run(
        [bin_path("bentoml"), "models", "get", model_tag, "-o", "json"],
        project.root,
        env=bentoml_env(project),
        hint=f"is {model_tag} in the store? `bentoml models list`",
    )
    metadata = json.loads(out).get("metadata") or {}
    meta = json.loads(metadata.get("driftloop_meta") or "{}")
    return StoredModel(
        tag=model_tag,
        classes=(meta.get("schema") or {}).get("classes"),
        held_out={k: float(v) for k, v in (metadata.get("held_out_metrics") or {}).items()},
        held_out_rows=metadata.get("held_out_rows"),
    )


@task(cache_policy=NO_CACHE)
def read_model(project: Project, model_tag: str) -> StoredModel:
    """The serving model's metadata; an unreadable store leaves the monitor without it
    (logged), never without its drift check."""
    try:
        return stored_model(project, model_tag)
    except CommandError as exc:
        logging.getLogger("driftloop.package").warning("model metadata not read: %s", exc)
        return StoredModel(tag=model_tag)


def load_estimator(project: Project, model_tag: str) -> PerformanceEstimator | None:
    """The performance estimator `model.register` stored with `model_tag`, read in process
    (BentoML keeps custom objects as one cloudpickled dict beside the model); None, with the
    reason logged, when there is none or it cannot be read: the monitor then goes without."""
    log = logging.getLogger("driftloop.package")
    name, _, version = model_tag.partition(":")
    path = bentoml_home(project) / "models" / name / version / "custom_objects.pkl"
    if not version or not path.is_file():
        log.warning("no performance estimator stored with %s (%s not found)", model_tag, path)
        return None
    try:
        with path.open("rb") as file:
            objects = cloudpickle.load(file)
    except Exception as exc:  # a pickle can fail in many ways; the monitor must not
        log.warning("performance estimator of %s not read: %s: %s", model_tag, type(exc), exc)
        return None
    estimator = objects.get(ESTIMATOR_KEY) if isinstance(objects, dict) else None
    if not isinstance(estimator, PerformanceEstimator):
        log.warning("model %s was stored without a performance estimator", model_tag)
        return None
    return estimator


def release_version(model_tag: str) -> str:
    """A sortable, unique bento version: UTC time plus the model version it serves."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{model_tag.split(':', 1)[1][:8]}"


def build_bento(
    project: Project, model_tag: str, extra_labels: dict[str, str] | None = None
) -> Bento:
    """`bentoml build` with lineage labels and the exact model tag as a build argument.

    The lineage comes from the stored model itself, not from whatever `dvc repro` left in
    artifacts/, so a candidate promoted later still carries its own data rev and commit."""
    stored = model_labels(project, model_tag)
    labels = {
        "model_tag": model_tag,
        **{key: stored.get(key, "") for key in LINEAGE_KEYS},
        **(extra_labels or {}),
    }
    args = [
        bin_path("bentoml"),
        "build",
        "-f",
        "bentofile.yaml",
        "--name",
        project.config.project.name,
        "--version",
        release_version(model_tag),
        "--arg",
        f"model_tag={model_tag}",
        "--arg",
        f"max_batch={project.config.serving.max_batch}",
        "--arg",
        f"workers={project.config.serving.workers}",
        *batching_args(project),
        "-o",
        "tag",
    ]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    out = run(
        args,
        project.root,
        env=bentoml_env(project),
        hint="see the build output above; the previous release keeps serving",
    )
    match = re.search(r"__tag__:(\S+)", out)
    if not match:
        raise CommandError(f"`bentoml build` printed no tag:\n{out[-500:]}")
    return Bento(tag=match.group(1), model_tag=model_tag, labels=labels)


def batching_args(project: Project) -> list[str]:
    """The adaptive-batching build arguments of model/service.py, from `serving.batching`."""
    batching = project.config.serving.batching
    values = {
        "batching": str(batching.enabled).lower(),
        "max_batch_size": batching.max_batch_size,
        "max_latency_ms": batching.max_latency_ms,
    }
    return [part for key, value in values.items() for part in ("--arg", f"{key}={value}")]


LINEAGE_KEYS = ("data_rev", "git_commit", "git_dirty", "params_hash")


def model_labels(project: Project, model_tag: str) -> dict[str, str]:
    """The labels `model.register` stored with the model: its data rev, commit and params."""
    out = run(
        [bin_path("bentoml"), "models", "get", model_tag, "-o", "json"],
        project.root,
        env=bentoml_env(project),
        hint=f"is {model_tag} in the store? `bentoml models list`",
    )
    return {str(k): str(v) for k, v in (json.loads(out).get("labels") or {}).items()}


def bento_info(project: Project, tag: str) -> dict:
    out = run(
        [bin_path("bentoml"), "get", tag, "-o", "json"],
        project.root,
        env=bentoml_env(project),
        hint=f"is {tag} in the store? `bentoml list`",
    )
    return json.loads(out)


def export_bento(project: Project, tag: str) -> Path:
    """The release artifact: `bentoml export` to an absolute path (a relative one lands in /)."""
    target = (project.state_dir / "releases" / f"{tag.replace(':', '-')}.bento").resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial.bento")  # a killed export leaves no archive
    run(
        [bin_path("bentoml"), "export", tag, str(partial)],
        project.root,
        env=bentoml_env(project),
        hint="is the bento in the store? `bentoml list`",
    )
    partial.replace(target)
    return target
