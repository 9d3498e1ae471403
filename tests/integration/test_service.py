"""A real `bentoml build` and `bentoml serve`: HTTP answers equal in-process ones, bad input 4xx."""

from __future__ import annotations

import json
import time

import httpx
import joblib
import pandas as pd
import pytest

from config.loader import load_project
from model.frames import feature_frame
from tasks.release.package import bento_info, build_bento, register_model
from tasks.release.serving import start_server, stop_server
from tasks.release.traffic import sample_records
from tests.support import free_port, sh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(trained_project):
    project = load_project(trained_project / "config/driftloop.yaml")
    bento = build_bento(project, register_model(project))
    server = start_server(project, bento.tag, free_port())
    yield project, bento, server
    stop_server(server)


def test_http_predictions_equal_in_process(served):
    project, bento, server = served
    sample = sample_records(project, 50, seed=3)
    answer = httpx.post(f"{server.url}/predict", json={"records": sample.records}).json()
    pipeline = joblib.load(project.root / "artifacts/model/model.joblib")
    numeric, categorical = project.features
    expected = pipeline.predict(feature_frame(pd.DataFrame(sample.records), numeric, categorical))
    assert answer["predictions"] == pytest.approx(expected.tolist(), rel=1e-9)
    assert answer["model"] == bento.model_tag
    assert answer["bento"] == bento.tag


def test_bento_carries_lineage_and_the_exact_model(served):
    project, bento, _ = served
    info = bento_info(project, bento.tag)
    meta = json.loads((project.root / "artifacts/model/meta.json").read_text())
    labels = info["labels"]
    assert labels["data_rev"] == meta["lineage"]["data_rev"]
    assert labels["git_commit"] == sh(["git", "rev-parse", "HEAD"], project.root).stdout.strip()
    assert labels["params_hash"] == meta["lineage"]["params_hash"]
    assert labels["model_tag"] == bento.model_tag
    assert info["args"]["model_tag"] == bento.model_tag
    assert not bento.model_tag.endswith(":latest")


@pytest.mark.parametrize(
    ("mutate", "status", "needle"),
    [
        (lambda r: r.pop("hum"), 400, "missing column(s) ['hum']"),
        (lambda r: r.update(rain=1), 400, "unexpected column(s) ['rain']"),
        (lambda r: r.update(temp="warm"), 400, "column 'temp' must be a number"),
        (lambda r: r.update(temp=None), 400, "column 'temp' is null"),
    ],
)
def test_bad_records_get_4xx_naming_the_column(served, mutate, status, needle):
    project, _, server = served
    record = dict(sample_records(project, 1).records[0])
    mutate(record)
    response = httpx.post(f"{server.url}/predict", json={"records": [record]})
    assert response.status_code == status
    assert needle in response.text


@pytest.mark.parametrize(
    "body",
    [{"records": []}, {"rows": []}, {"records": "x"}, {"records": [3]}],
    ids=["empty", "wrong-field", "not-a-list", "not-objects"],
)
def test_malformed_bodies_get_4xx(served, body):
    _, _, server = served
    response = httpx.post(f"{server.url}/predict", json=body)
    assert 400 <= response.status_code < 500, response.text


def test_predictions_and_labels_are_captured(served):
    from datetime import UTC, datetime, timedelta

    from tasks.capture import read_window

    project, bento, server = served
    sample = sample_records(project, 8, seed=5)
    stamps = [f"2011-06-0{1 + i % 2}T12:00:00Z" for i in range(8)]
    ids = [f"cap-{i}" for i in range(8)]
    answer = httpx.post(
        f"{server.url}/predict", json={"records": sample.records, "ids": ids, "timestamps": stamps}
    ).json()
    assert answer["ids"] == ids
    minted = httpx.post(f"{server.url}/predict", json={"records": sample.records[:2]}).json()["ids"]
    assert len(set(minted)) == 2 and not set(minted) & set(ids)
    probe = {"records": sample.records[:1], "ids": ["probe-1"], "timestamps": stamps[:1]}
    assert httpx.post(f"{server.url}/predict", json={**probe, "probe": True}).status_code == 200
    labels = [
        {"inference_id": i, "label": float(t)}
        for i, t in zip(ids[:4], sample.targets[:4], strict=True)
    ]
    answer_labels = httpx.post(f"{server.url}/feedback", json={"labels": labels}).json()
    assert answer_labels == {"accepted": 4, "unknown": 0, "ignored_relabels": 0}
    start = datetime(2011, 6, 1, tzinfo=UTC)
    deadline = time.monotonic() + 10
    # predictions and labels reach disk on the flush thread's ticks, maybe not the same one
    while (window := read_window(project, start, start + timedelta(days=2))).rows < 8 or (
        window.label_coverage < 0.5
    ):
        assert time.monotonic() < deadline, "capture not flushed within 10 s"
        time.sleep(0.2)
    assert "probe-1" not in set(window.frame["inference_id"])  # health checks are not traffic
    frame = window.frame.set_index("inference_id").loc[ids]
    assert frame["prediction"].tolist() == pytest.approx(answer["predictions"])
    assert frame["bento"].unique().tolist() == [bento.tag]
    assert frame["temp"].tolist() == pytest.approx([r["temp"] for r in sample.records])
    assert window.label_coverage == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"labels": [{"inference_id": "x"}]}, "labels[0]: expected an object with inference_id"),
        ({"labels": [{"inference_id": "x", "label": "many"}]}, "labels[0].label: must be a number"),
    ],
)
def test_bad_labels_get_4xx(served, body, needle):
    _, _, server = served
    response = httpx.post(f"{server.url}/feedback", json=body)
    assert response.status_code == 400 and needle in response.text


def test_mismatched_ids_get_4xx(served):
    project, _, server = served
    records = sample_records(project, 2).records
    response = httpx.post(f"{server.url}/predict", json={"records": records, "ids": ["one"]})
    assert response.status_code == 400 and "ids has 1 entries for 2 records" in response.text


def test_replay_sends_in_event_time_with_delayed_labels(served):
    from datetime import timedelta

    from tasks.capture import read_window
    from tasks.release.traffic import load_traffic, replay

    project, _, server = served
    sample = load_traffic(project, query="mnth == 'Aug' and day <= 214")  # Aug 1-2: 48 rows
    assert len(sample.records) == 48 and sample.times is not None
    began = time.monotonic()
    stats = replay(
        server.url,
        sample,
        sample.times,
        speed=48 * 3600 / 2,
        batch=4,
        label_delay=timedelta(hours=6),
        max_seconds=30,
    )
    assert 1.5 < time.monotonic() - began < 30  # paced by event time, not as fast as possible
    assert (stats.sent, stats.failed) == (48, 0)
    assert stats.labelled == 48 - 6 - 3  # labels due within the replayed span only
    deadline = time.monotonic() + 10
    while (
        window := read_window(project, sample.times[0], sample.times[-1] + timedelta(hours=1))
    ).rows < 48:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert window.frame["label"].notna().sum() == stats.labelled


def test_release_artifact_is_exported_with_its_model(served):
    import tarfile

    from tasks.release.package import export_bento

    project, bento, _ = served
    archive = export_bento(project, bento.tag)
    assert archive.is_absolute() and archive.parent == (project.state_dir / "releases").resolve()
    with tarfile.open(archive) as tar:  # the archive carries the model, unlike the local store
        names = tar.getnames()
    assert any(bento.model_tag.split(":")[1] in name for name in names)
