"""BentoML's adaptive batching (`serving.batching`) and workers from config, on real bentos.

For a regression (Ridge on diabetes: its scaler turns an extreme number into an infinity the
model refuses), a binary (breast cancer, gradient boosting) and a multiclass (wine, random
forest) model: the same bento built with batching off and on answers concurrent requests the
same (predictions, probabilities, ids, model), the batcher really merges them, a bad record
fails only its own request, and with two workers every request is captured exactly once.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_own_model_loop import patients, tumours, wine
from tests.support import copy_project, driftloop, edit_config, free_port, sh

pytestmark = pytest.mark.integration

CONCURRENT = 24  # single-record requests in flight at once: enough for the batcher to merge
STAMP = "2011-06-01T12:00:00Z"


@dataclasses.dataclass
class Served:
    project: object
    records: list[dict]
    unbatched: object  # tasks.release.serving.Server
    batched: object


def trained(root: Path, dataset) -> object:
    """A fresh copy trained on `dataset` by config alone, as the README's own-model steps."""
    from config.loader import load_project

    sections = dataset(root)

    def change(raw: dict) -> None:
        for key in ("project", "data", "train", "evaluate"):
            raw[key] = sections[key]
        raw["gate"].update(sections["gate"])
        raw["monitor"].update(sections["monitor"])

    edit_config(root, change)
    driftloop(root, "data")
    data = sections["data"]["path"]
    sh(["git", "add", f"{data}.dvc", str(Path(data).parent / ".gitignore")], root)
    sh(["git", "commit", "-qm", "track the training data"], root)
    sh(["dvc", "repro"], root)
    return load_project(root / "config/driftloop.yaml")


def variant(project, capture: str, **serving) -> object:
    """The same project with `serving` settings changed and its own capture store."""
    cfg = project.config
    batching = cfg.serving.batching.model_copy(update=serving.pop("batching", {}))
    new_serving = cfg.serving.model_copy(update={**serving, "batching": batching})
    new_capture = cfg.capture.model_copy(update={"path": capture, "flush_seconds": 0.2})
    config = cfg.model_copy(update={"serving": new_serving, "capture": new_capture})
    return dataclasses.replace(project, config=config)


@pytest.fixture(scope="module", params=[patients, tumours, wine], ids=lambda d: d.__name__)
def served(request, tmp_path_factory):
    from tasks.release.package import build_bento, register_model
    from tasks.release.serving import start_server, stop_server
    from tasks.release.traffic import sample_records

    project = trained(copy_project(tmp_path_factory.mktemp(request.param.__name__)), request.param)
    model_tag = register_model(project)
    plain = variant(project, "capture-unbatched")
    batched = variant(
        project, "capture-batched", workers=2, batching={"enabled": True, "max_latency_ms": 5000}
    )
    bento_plain = build_bento(plain, model_tag)
    time.sleep(1.1)  # release versions are stamped to the second
    bento_batched = build_bento(batched, model_tag)
    servers = []
    try:
        servers.append(start_server(plain, bento_plain.tag, free_port()))
        servers.append(start_server(batched, bento_batched.tag, free_port()))
        records = sample_records(project, CONCURRENT, seed=7).records
        yield Served(project=batched, records=records, unbatched=servers[0], batched=servers[1])
    finally:
        for server in servers:
            stop_server(server)


def concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: client.post(f"{url}/predict", json=body), bodies))


def one_each(records: list[dict], prefix: str) -> list[dict]:
    return [
        {"records": [r], "ids": [f"{prefix}-{i}"], "timestamps": [STAMP]}
        for i, r in enumerate(records)
    ]


def merged_batches(url: str) -> tuple[float, float]:
    """(calls, rows) the adaptive batcher has made to the model, from its histogram."""
    text = httpx.get(f"{url}/metrics").text
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "driftloop_batch_rows":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    count += sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
    return count, total


def answer_fields(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    return {k: body.get(k) for k in ("predictions", "probabilities", "classes", "ids", "model")}


def approx(values):
    """Numbers equal to 1e-12: a linear model's BLAS sums rows of a bigger matrix in another
    order (a last-bit difference); classes, ids and model names are compared exactly."""
    return pytest.approx(values, rel=1e-12, abs=1e-15)


def same_predictions(got: list, expected: list) -> bool:
    if all(isinstance(p, float) for p in expected):
        return got == approx(expected)
    return got == expected


def same_answers(got: list[dict], expected: list[dict]) -> bool:
    for a, b in zip(got, expected, strict=True):
        assert {k: v for k, v in a.items() if k not in ("predictions", "probabilities")} == {
            k: v for k, v in b.items() if k not in ("predictions", "probabilities")
        }
        assert same_predictions(a["predictions"], b["predictions"])
        assert (a["probabilities"] is None) == (b["probabilities"] is None)
        for x, y in zip(a["probabilities"] or [], b["probabilities"] or [], strict=True):
            assert x == approx(y)
    return True


def test_batched_answers_equal_unbatched_ones(served):
    bodies = one_each(served.records, "same")
    plain = [answer_fields(r) for r in concurrently(served.unbatched.url, bodies)]
    batched = [answer_fields(r) for r in concurrently(served.batched.url, bodies)]
    assert same_answers(batched, plain)
    assert [a["ids"] for a in batched] == [[f"same-{i}"] for i in range(CONCURRENT)]
    whole = httpx.post(f"{served.batched.url}/predict", json={"records": served.records}).json()
    assert same_predictions(whole["predictions"], [p for a in plain for p in a["predictions"]])
    assert merges(served.batched.url, bodies), "the batcher never merged two requests"


def merges(url: str, bodies: list[dict], rounds: int = 6) -> bool:
    """Whether a round of concurrent requests reaches the model in fewer calls than requests.
    BentoML's dispatcher first sends calls one by one to learn their cost, so a few rounds may
    pass before it merges."""
    for _ in range(rounds):
        calls, rows = merged_batches(url)
        assert all(r.status_code == 200 for r in concurrently(url, bodies))
        more_calls, more_rows = merged_batches(url)
        if more_rows - rows == len(bodies) and more_calls - calls < len(bodies):
            return True
    return False


def test_a_bad_record_fails_only_its_own_request(served):
    numeric = served.project.config.data.numeric or [
        c for c in served.records[0] if isinstance(served.records[0][c], float)
    ]
    column = numeric[0]
    bodies = one_each(served.records, "bad")
    bodies[5] = {"records": [{**served.records[5], column: "warm"}]}
    responses = concurrently(served.batched.url, bodies)
    statuses = [r.status_code for r in responses]
    assert statuses == [400 if i == 5 else 200 for i in range(CONCURRENT)]
    assert f"record 0: column {column!r} must be a number" in responses[5].text


@pytest.mark.parametrize("served", [patients], indirect=True, ids=["patients"])
def test_a_value_the_model_refuses_fails_only_its_own_request(served):
    """Only the scaled linear model refuses a finite number (the trees bin it): a row the model
    refuses inside a merged call is found row by row and fails its own request alone."""
    # the narrowest column: 1e308 over its small standard deviation is past float64
    numeric = served.project.config.data.numeric
    column = min(numeric, key=lambda c: statistics.pstdev(r[c] for r in served.records))
    bodies = one_each(served.records, "huge")
    bodies[3] = {"records": [{**served.records[3], column: 1e308}]}
    responses = concurrently(served.batched.url, bodies)
    assert [r.status_code for r in responses] == [400 if i == 3 else 200 for i in range(CONCURRENT)]
    assert "the model cannot use these values" in responses[3].text


def test_two_workers_capture_every_request_exactly_once(served):
    from tasks.capture import read_window

    bodies = one_each(served.records, "once") + one_each(served.records, "twice")
    assert all(r.status_code == 200 for r in concurrently(served.batched.url, bodies))
    start = datetime(2011, 6, 1, tzinfo=UTC)
    sent = {body["ids"][0] for body in bodies}
    deadline = time.monotonic() + 20
    while True:
        frame = read_window(served.project, start, start + timedelta(days=1)).frame
        captured = [i for i in frame["inference_id"] if i in sent]
        if len(captured) >= len(sent) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(captured) == sorted(sent)  # each once: none lost, none twice
    assert len(service_workers(served.batched.process.pid)) == 2  # the model runs in each


def service_workers(pid: int) -> list[str]:
    """The BentoML worker processes under a `bentoml serve` (one per service worker)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "_bentoml_impl.worker.service" in line:
            found.append(line)
    return found
