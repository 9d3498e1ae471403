"""The retrain flow on a real Prefect server, DVC and BentoML store: a candidate that does not
beat the champion by the configured margin is recorded and never reaches approval."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.support import copy_project, driftloop, edit_config, sh

pytestmark = pytest.mark.integration


def capture_labelled_traffic(project, months: list[str]) -> int:
    """Predictions and labels in the capture store, as the service would have written them."""
    from model.capture import (
        LABELS,
        PREDICTIONS,
        CaptureWriter,
        capture_schema,
        label_rows,
        prediction_rows,
    )
    from tasks.release.traffic import load_traffic

    numeric, categorical = project.features
    writer = CaptureWriter(
        project.resolve(project.config.capture.path),
        capture_schema(numeric, categorical, "regression"),
        flush_seconds=60,
    )
    sample = load_traffic(project, query=f"mnth in {months!r}")
    typed = [
        {c: (float(r[c]) if c in numeric else str(r[c])) for c in numeric + categorical}
        for r in sample.records
    ]
    ids = [f"id-{i}" for i in range(len(typed))]
    writer.add(
        PREDICTIONS,
        prediction_rows(
            typed, [0.0] * len(typed), None, ids, sample.times, "bikeshare:v0", "bikeshare:m0"
        ),
    )
    writer.add(
        LABELS,
        label_rows(
            [
                {"inference_id": i, "label": float(t)}
                for i, t in zip(ids, sample.targets, strict=True)
            ],
            datetime.now(UTC),
        ),
    )
    writer.close()
    return len(typed)


def test_a_candidate_failing_the_gate_asks_no_one(tmp_path, prefect_server):
    from config.loader import load_project
    from flows.retrain import retrain
    from tasks.approval.pending import pending_requests
    from tasks.release.package import bento_info, build_bento, register_model
    from tasks.release.releases import Release, record_serving

    root = copy_project(tmp_path)
    edit_config(root, lambda raw: raw["gate"].update(min_relative_improvement=0.99))
    driftloop(root, "data")
    driftloop(root, "train")
    project = load_project(root / "config/driftloop.yaml")
    bento = build_bento(project, register_model(project))
    labels = bento_info(project, bento.tag)["labels"]
    record_serving(
        project, Release(bento=bento.tag, model_tag=bento.model_tag, url="-", labels=labels)
    )
    assert capture_labelled_traffic(project, ["April", "May"]) > 1000
    head_before = sh(["git", "rev-parse", "HEAD"], root).stdout.strip()

    outcome = retrain(reason="test: gate", config=str(project.path))

    assert outcome["gate_passed"] is False and "fails the gate" in outcome["gate"]
    assert outcome["decision"] is None and outcome["release"] is None
    assert not [
        p for p in pending_requests(project) if p.evidence.candidate == outcome["candidate"]
    ]
    # the candidate's data rev is still versioned: committed, and pushed to the DVC remote
    log = sh(["git", "log", "--format=%s", f"{head_before}..HEAD"], root).stdout
    assert "training data" in log and "dvc repro" in log
    assert "Cache and remote 'local' are in sync" in sh(["dvc", "status", "-c"], root).stdout
    from tasks.release.releases import read_serving

    assert read_serving(project).bento == bento.tag  # nothing was promoted
