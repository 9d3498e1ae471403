"""The loop with an S3-API store as its only storage: a real moto server on a loopback port.

Two `bentoml serve` processes capture to the same `s3://` prefix, each into its own files; a
label sent to one server for a prediction the other answered is matched through the store; the
window reads back every request exactly once with its label. The training data goes to a DVC
remote on the same store and comes back into a fresh clone.
"""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.s3_server import S3Server
from tests.support import copy_project, driftloop, edit_config, free_port, sh

pytestmark = pytest.mark.integration

STAMP = "2011-06-01T12:00:00Z"
PER_SERVER = 12


def on_store(project, server: S3Server, url: str):
    """The same project with its capture store at `url` on `server`."""
    cfg = project.config
    capture = cfg.capture.model_copy(update={"path": url, "flush_seconds": 0.2})
    storage = cfg.storage.model_copy(update={"endpoint_url": server.url})
    config = cfg.model_copy(update={"capture": capture, "storage": storage})
    return dataclasses.replace(project, config=config)


@pytest.fixture(scope="module")
def two_servers(trained_project, s3_server):
    from config.loader import load_project
    from tasks.release.package import build_bento, register_model
    from tasks.release.serving import start_server, stop_server

    url = s3_server.prefix("capture")
    project = on_store(load_project(trained_project / "config/driftloop.yaml"), s3_server, url)
    bento = build_bento(project, register_model(project))
    servers = []
    try:
        servers.append(start_server(project, bento.tag, free_port()))
        servers.append(start_server(project, bento.tag, free_port()))
        yield project, url, servers
    finally:
        for server in servers:
            stop_server(server)


def predict(server, records: list[dict], prefix: str) -> list[float]:
    ids = [f"{prefix}-{i}" for i in range(len(records))]
    body = {"records": records, "ids": ids, "timestamps": [STAMP] * len(records)}
    answer = httpx.post(f"{server.url}/predict", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["ids"] == ids
    return answer.json()["predictions"]


def test_two_servers_capture_to_s3_and_match_each_others_labels(two_servers, s3_server):
    from tasks.capture import read_window
    from tasks.release.traffic import sample_records

    project, url, (first, second) = two_servers
    sample = sample_records(project, PER_SERVER, seed=11)
    local = project.root / ".driftloop" / "capture"  # other tests' servers may capture there
    before = local_files(local)
    predict(first, sample.records, "one")
    predict(second, sample.records, "two")

    # each server's flush reaches the store on its own tick; then labels cross over
    deadline = time.monotonic() + 20
    while len(writers(s3_server.keys(url))) < 2:
        assert time.monotonic() < deadline, s3_server.keys(url)
        time.sleep(0.2)
    crossed = {"one": second, "two": first}  # a label goes to the server that did NOT answer
    for prefix, server in crossed.items():
        labels = [{"inference_id": f"{prefix}-{i}", "label": 7.0} for i in range(PER_SERVER)]
        answer = httpx.post(f"{server.url}/feedback", json={"labels": labels}, timeout=30)
        assert answer.json() == {"accepted": PER_SERVER, "unknown": 0, "ignored_relabels": 0}

    start = datetime(2011, 6, 1, tzinfo=UTC)
    deadline = time.monotonic() + 20
    while (window := read_window(project, start, start + timedelta(days=1))).label_coverage < 1:
        assert time.monotonic() < deadline, f"labels not read back: {window.label_coverage}"
        time.sleep(0.3)
    ids = sorted(window.frame["inference_id"])
    assert ids == sorted(f"{p}-{i}" for p in ("one", "two") for i in range(PER_SERVER))
    assert window.frame["label"].tolist() == [7.0] * (2 * PER_SERVER)
    keys = s3_server.keys(url)
    assert len(writers(keys)) == 2  # two processes, each writing its own files
    assert any("/labels/dt=" in key for key in keys)
    assert local_files(local) == before  # nothing went to the local disk


def local_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def writers(keys: list[str]) -> set[str]:
    """The process ids in the names of the prediction part files."""
    return {m.group(1) for k in keys if (m := re.search(r"/predictions/.*/part-(\d+)-", k))}


def test_dvc_push_and_pull_through_an_s3_remote(tmp_path: Path, s3_server):
    root = copy_project(tmp_path / "pusher")
    remote = s3_server.prefix("dvc")

    def on_s3(raw: dict) -> None:
        raw["data"]["remote"] = remote
        raw.setdefault("storage", {})["endpoint_url"] = s3_server.url

    edit_config(root, on_s3)
    pushed = driftloop(root, "data").stdout
    md5 = re.search(r"DVC md5 ([0-9a-f]{32})", pushed).group(1)
    objects = s3_server.keys(remote)
    expected = f"{remote.removeprefix('s3://')}/files/md5/{md5[:2]}/{md5[2:]}"
    assert objects == [expected]  # the data is on the store, not in the local directory
    assert not any((root / ".driftloop" / "dvc-remote").iterdir())
    assert "s3://" not in (root / ".dvc" / "config").read_text()  # nothing machine-specific
    assert (
        "nothing to commit" in sh(["git", "status"], root).stdout
    )  # the .dvc file is as committed

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    pulled = driftloop(clone, "data").stdout
    assert f"data data/train.csv: pulled, DVC md5 {md5}" in pulled
    assert (clone / "data" / "train.csv").read_bytes() == (root / "data" / "train.csv").read_bytes()
