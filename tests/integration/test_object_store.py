"""The loop with an S3-API store as its only storage: a real moto server on a loopback port.

Two `bentoml serve` processes capture to the same `s3://` prefix, each into its own files; a
label sent to one server for a prediction the other answered is matched through the store; the
window reads back every request exactly once with its label. The monitor flow checks a window
read from the store and writes its report; the retrain builds its training set from the labelled
window there and pushes it to a DVC remote on the same store; nothing lands in the local capture
directory. The training data goes to a DVC remote on the store and comes back into a fresh clone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.s3_server import S3Server
from tests.support import (
    copy_project,
    driftloop,
    edit_config,
    free_port,
    sh,
    stop_group,
    wait_answering,
)

pytestmark = pytest.mark.integration

STAMP = "2011-06-01T12:00:00Z"
PER_SERVER = 12
LATER = "2011-07-01T12:00:00Z"  # the monitor's and the retrain's window: a day of its own
WINDOW_PER_SERVER = 80
LABELLED_PER_SERVER = 60


def on_store(raw: dict, server: S3Server, capture: str, remote: str, pushgateway: str) -> None:
    """The project's config with its capture and its DVC remote on `server`; small windows are
    enough for the monitor and the retrain."""
    raw["capture"].update(path=capture, flush_seconds=0.2)
    raw["data"]["remote"] = remote
    raw.setdefault("storage", {})["endpoint_url"] = server.url
    raw["endpoints"]["pushgateway"] = pushgateway
    raw["monitor"]["min_rows"] = 100
    raw["retrain"].update(window_days=1, min_labelled_rows=20)


def run_state(folder: str, names: list[str]) -> set[str]:
    """What a copy of the trained project leaves out: its runs' state (slots link back into the
    original; capture and logs belong to it)."""
    return {"slots", "capture", "logs"} & set(names) if folder.endswith("/.driftloop") else set()


@pytest.fixture(scope="module")
def two_servers(trained_project, s3_server, tmp_path_factory):
    """A copy of the trained project whose config puts capture and DVC remote on the store,
    serving one bento from two processes; the release is recorded as serving."""
    from config.loader import load_project
    from tasks.release.package import bento_info, build_bento, register_model
    from tasks.release.releases import Release, record_serving
    from tasks.release.serving import start_server, stop_server

    root = tmp_path_factory.mktemp("on-store") / "project"
    shutil.copytree(trained_project, root, symlinks=True, ignore=run_state)
    url = s3_server.prefix("capture")
    remote = s3_server.prefix("dvc-retrain")
    gateway = f"http://127.0.0.1:{free_port()}"
    edit_config(root, lambda raw: on_store(raw, s3_server, url, remote, gateway))
    project = load_project(root / "config/driftloop.yaml")
    bento = build_bento(project, register_model(project))
    servers = []
    try:
        servers.append(start_server(project, bento.tag, free_port()))
        servers.append(start_server(project, bento.tag, free_port()))
        labels = bento_info(project, bento.tag)["labels"]
        release = Release(bento=bento.tag, model_tag=bento.model_tag, url="-", labels=labels)
        record_serving(project, release)
        yield project, url, servers
    finally:
        for server in servers:
            stop_server(server)


def predict(server, records: list[dict], prefix: str, stamp: str = STAMP) -> list[float]:
    ids = [f"{prefix}-{i}" for i in range(len(records))]
    body = {"records": records, "ids": ids, "timestamps": [stamp] * len(records)}
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


def test_monitor_report_and_retrain_read_their_window_from_the_store(
    two_servers, s3_server, prefect_server, slack
):
    from flows.monitor import monitor
    from tasks.capture import read_window
    from tasks.monitor.reports import reports_dir
    from tasks.release.releases import read_serving
    from tasks.release.traffic import sample_records
    from tasks.retrain.trainset import build_training_set, version_training_set

    project, url, (first, second) = two_servers
    local = project.root / ".driftloop" / "capture"
    sample = sample_records(project, WINDOW_PER_SERVER, seed=23)
    predict(first, sample.records, "m-one", LATER)
    predict(second, sample.records, "m-two", LATER)
    crossed = {"m-one": second, "m-two": first}  # labels again to the server that did NOT answer
    start = datetime(2011, 7, 1, tzinfo=UTC)
    end = start + timedelta(days=1)
    deadline = time.monotonic() + 20
    while read_window(project, start, end).rows < 2 * WINDOW_PER_SERVER:
        assert time.monotonic() < deadline, "predictions not flushed to the store"
        time.sleep(0.2)
    for prefix, server in crossed.items():
        labels = [
            {"inference_id": f"{prefix}-{i}", "label": float(sample.targets[i])}
            for i in range(LABELLED_PER_SERVER)
        ]
        answer = httpx.post(f"{server.url}/feedback", json={"labels": labels}, timeout=30)
        assert answer.json()["accepted"] == LABELLED_PER_SERVER
    deadline = time.monotonic() + 20
    while read_window(project, start, end).frame["label"].notna().sum() < 120:
        assert time.monotonic() < deadline, "labels not flushed to the store"
        time.sleep(0.2)

    # the monitor flow, on a real Prefect server and Pushgateway, reads the window from the store
    with pushgateway(project.config.endpoints.pushgateway):
        result = monitor(start=start, end=end, report=True, config=str(project.path))
    assert result["rows"] == 160 and result["rows_total"] == 160 and not result["sampled"]
    assert result["label_coverage"] == 0.75  # 120 of the 160 rows labelled
    assert result["verdict"] in ("drift", "no_drift")  # a usable window, checked
    report = next(u for u in result["report"] if u.endswith(".html"))
    assert "windspeed" in (reports_dir(project) / report.rsplit("/", 1)[1]).read_text()

    # the retrain's training set: the labelled window from the store, pushed to the store's remote
    frame, info = build_training_set(project, read_serving(project))
    assert info.window_rows + len(info.holdout) == 120  # every label sent, and nothing else
    assert len(info.holdout) == 36  # its latest 30%, kept for the gate
    assert info.window.startswith("2011-06-30 12:00 to 2011-07-01 12:00")
    md5, _ = version_training_set(project, frame, "store-test")
    remote = project.config.data.remote.removeprefix("s3://")
    assert f"{remote}/files/md5/{md5[:2]}/{md5[2:]}" in s3_server.keys(project.config.data.remote)

    day = [key for key in s3_server.keys(url) if "/dt=2011-07-01/" in key]
    assert len(writers(day)) == 2  # the window came from both server processes' own files
    assert local_files(local) == set()  # the store was the only storage of capture


@contextmanager
def pushgateway(url: str) -> Iterator[None]:
    """A real Pushgateway listening at `url` (a loopback address) while the block runs."""
    address = url.removeprefix("http://")
    process = subprocess.Popen(
        ["prometheus-pushgateway", f"--web.listen-address={address}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_answering(f"{url}/-/ready", process, 20, "the Pushgateway")
        yield
    finally:
        stop_group(process)


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
    pushed = " ".join(driftloop(root, "data").stdout.split())  # the console wraps long lines
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
    pulled = " ".join(driftloop(clone, "data").stdout.split())
    assert f"data data/train.csv: pulled, DVC md5 {md5}" in pulled
    assert (clone / "data" / "train.csv").read_bytes() == (root / "data" / "train.csv").read_bytes()
