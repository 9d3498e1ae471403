"""Training through DVC: `dvc repro` runs only the stages whose inputs changed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from config.loader import Project
from model import artifacts
from tasks.commands import bin_path, run
from tasks.data import verify_data
from tasks.dvc_remote import use_remote


@dataclass(frozen=True)
class TrainingResult:
    stages_run: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def reproduce(project: Project) -> TrainingResult:
    """`dvc repro`, after checking the training data is the rev DVC records (never partial)."""

    verify_data(project)
    out = run(
        [bin_path("dvc"), "repro"],
        project.root,
        hint="fix the failing stage above, then run `dvc repro` again",
        timeout=3600,
    )
    stages = re.findall(r"Running stage '([^']+)'", out)
    return TrainingResult(stages_run=stages, metrics=read_metrics(project))


def read_metrics(project: Project) -> dict[str, float]:
    path = project.resolve(artifacts.METRICS)
    if not path.is_file():
        return {}
    payload = json.loads(path.read_text())
    return {k: v for k, v in payload.items() if k in project.config.metric_names}


def push_outputs(project: Project) -> None:
    """`dvc push`: the candidate's model and prepared data reach the remote with its data."""
    use_remote(project)
    run(
        [bin_path("dvc"), "push", "-q"],
        project.root,
        hint="check the DVC remote (data.remote); the candidate stays in the local cache",
    )
