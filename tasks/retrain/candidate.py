"""Prefect tasks of the retrain: the training set, `dvc repro`, the gate, the models to compare."""

from __future__ import annotations

import os

import joblib
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from model import artifacts
from model.frames import feature_frame
from tasks.release.package import bentoml_home, register_model
from tasks.release.releases import Release
from tasks.release.shadow import holdout_comparison, save_holdout_comparison
from tasks.retrain.gate import GateResult, gate
from tasks.retrain.training import TrainingResult, push_outputs, reproduce
from tasks.retrain.trainset import build_training_set, git_commit, version_training_set


@task(cache_policy=NO_CACHE)
def new_training_set(project: Project, serving: Release, run_id: str):
    """The new training set by the configured rule, versioned: DVC-pushed and git-committed."""
    frame, info = build_training_set(project, serving)
    md5, commit = version_training_set(project, frame, run_id)
    return info.__class__(**{**info.__dict__, "data_rev": md5, "git_commit": commit})


@task(cache_policy=NO_CACHE)
def train_candidate(project: Project, run_id: str) -> tuple[TrainingResult, str]:
    """`dvc repro` (the pipeline a person runs by hand), dvc.lock committed; the candidate's tag."""
    result = reproduce(project)
    push_outputs(project)
    git_commit(
        project,
        ["dvc.lock", str(artifacts.METRICS), str(artifacts.PREDICTIONS_PLOT)],
        f"retrain {run_id}: dvc repro",
    )
    return result, register_model(project)


@task(cache_policy=NO_CACHE)
def judge_candidate(
    project: Project, champion_tag: str, holdout, candidate_tag: str = ""
) -> GateResult:
    """Champion (the serving model, from the BentoML store) against the candidate just trained;
    with `candidate_tag`, their disagreement on the holdout is kept for the shadow stage."""
    os.environ.setdefault("BENTOML_HOME", str(bentoml_home(project)))
    import bentoml  # after BENTOML_HOME: bentoml reads its store's place once, at import

    champion = bentoml.sklearn.load_model(champion_tag)
    candidate = joblib.load(project.resolve(artifacts.MODEL_FILE))
    if candidate_tag:
        numeric, categorical = project.features
        features = feature_frame(holdout, numeric, categorical)
        seen = holdout_comparison(project.config.data.task, champion, candidate, features)
        save_holdout_comparison(project, candidate_tag, seen)
    return gate(project, champion, candidate, holdout)


def retrain_outcome(
    candidate: str,
    data_rev: str,
    verdict: GateResult,
    decision: str | None = None,
    release: str | None = None,
) -> dict:
    """A retrain run's result, as the Prefect UI and `driftloop` show it: the candidate, its
    data rev, the gate, the decision and the release (None where the run stopped before)."""
    return {
        "candidate": candidate,
        "data_rev": data_rev,
        "gate": verdict.reason,
        "gate_passed": verdict.passed,
        "decision": decision,
        "release": release,
    }
