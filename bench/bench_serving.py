"""Serving through nginx against in-process `predict`, the roll-forward under load, and the
time from an approval to the new version answering; all on a fresh copy with its real stack.

Cases, one JSON line each:

* `serving` (per batch size 1 and 64): requests/s, rows/s, p50/p99 of the driftloop bento on
  its slot's own port, with capture on (blue slot, as configured) and off (green slot,
  `capture.sample_rate: 0`), against the peer a user would otherwise write, a plain BentoML
  service around the same pipeline (`bench/plain_service.py`, same threads, same port kind),
  and against `predict` on the same model file and rows in this process (one thread, the frame
  built beforehand: the model's own cost; `..._from_records` adds building the feature frame
  from the JSON records, as the service does). Load comes from a second process (`bench.load`,
  closed loop, 8 in flight); the variants run back to back in each repeat, each repeat starting
  with another one. Throughput ratios are the median of the per-repeat pairs; a p99 is over
  every request of all repeats. Beside throughput, each server's own CPU per answered request
  (all its processes, from /proc): on a shared machine throughput moves with the neighbours,
  CPU per request hardly does, and it is what bounds throughput on cores of the server's own.
* `batching` (8 and 32 batch-1 requests in flight): the bento built with adaptive batching
  (`serving.batching`, capture on) on a port of its own, against the plain peer.
* `rollforward`: a steady paced load (half the batch-1 capacity just measured) through nginx
  while `tasks.release.rollout.go_live` puts a new bento into service: failed requests, and the p99
  from the start of the switch to two seconds after it against the p99 of the steady seconds
  before it.
* `approval_to_serving`: from the approval (the moment `build_bento` is called) until nginx
  answers with the new bento, against the sum of the unavoidable parts measured right after it
  in this run: `bentoml build` of the same model, and a `bentoml serve` of it until `/readyz`.

Usage: python bench/bench_serving.py [--size small|full]
       [--cases serving,batching,rollforward,approval]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, goal, median, pin_threads, ratio, timed

pin_threads()

import numpy as np  # noqa: E402

from bench.live import Live, live_stack  # noqa: E402
from bench.load import finish, start_load  # noqa: E402
from bench.server_cpu import cpu_seconds, server_pids  # noqa: E402

SETTINGS = {
    "small": {"seconds": 2.0, "repeats": 1, "steady_s": 3.0, "tail_s": 2.0},
    "full": {"seconds": 5.0, "repeats": 6, "steady_s": 8.0, "tail_s": 3.0},
}
BATCHES = (1, 64)
CONCURRENCY = 8  # requests in flight for throughput (closed loop)
BATCHING_CONCURRENCY = (8, 32)  # batch-1 requests in flight against the adaptive batcher
ROLL_SHARE = 0.5  # the roll-forward's load: this share of the measured batch-1 capacity
ROLL_RATE = 20.0  # requests/s when capacity was not measured in this run
SWITCH_TAIL_S = 2.0  # the switch window ends this long after go_live returns
MAX_REQUESTS = 1_000_000


# ---------------------------------------------------------------- pieces
def feature_records(live: Live, n: int) -> list[dict]:
    from tasks.release.traffic import sample_records

    return sample_records(live.project, n, seed=0).records


def inprocess(live: Live, records: list[dict], seconds: float) -> dict:
    """`predict` on the served model file, one thread, for `seconds`: the serving limit."""
    import joblib

    from model import artifacts
    from model.schema import FeatureSchema, records_frame

    pipeline = joblib.load(live.project.resolve(artifacts.MODEL_FILE))
    meta = json.loads(live.project.resolve(artifacts.MODEL_META).read_text())
    schema = FeatureSchema.model_validate(meta["schema"])
    frame = records_frame(records, schema, len(records))
    pipeline.predict(frame)  # warm-up
    calls = _loop(lambda: pipeline.predict(frame), seconds / 2)
    # the service's own path without HTTP: records to a feature frame, then predict
    served = _loop(
        lambda: pipeline.predict(records_frame(records, schema, len(records))), seconds / 2
    )
    return {
        "rows_per_s": len(records) / float(np.mean(calls)),
        "p50_ms": float(np.percentile(calls, 50)) * 1000,
        "p99_ms": float(np.percentile(calls, 99)) * 1000,
        "records_rows_per_s": len(records) / float(np.mean(served)),
    }


def _loop(fn, seconds: float) -> list[float]:
    """Seconds per call of `fn`, called back to back for `seconds`."""
    calls: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        calls.append(timed(fn)[0])
    return calls


def under_load(
    url: str, records: list[dict], seconds: float, tmp: Path, concurrency: int = CONCURRENCY
) -> dict:
    """Closed-loop load from a second process; requests/s, rows/s, p50/p99, failures."""
    body = json.dumps({"records": records}).encode()
    out = tmp / f"load-{time.monotonic_ns()}.json"
    pids = server_pids(urlsplit(url).port)
    cpu_began = cpu_seconds(pids)
    process = start_load(
        f"{url}/predict",
        body,
        out,
        concurrency=concurrency,
        max_requests=MAX_REQUESTS,
        max_seconds=seconds,
    )
    done = finish(process, out, timeout=seconds + 60)
    server_cpu_s = cpu_seconds(pids) - cpu_began
    rps = done.per_second()
    answered = int((done.status == 200).sum())
    return {
        "requests_per_s": rps,
        "rows_per_s": rps * len(records),
        "p50_ms": done.percentile_ms(50),
        "p99_ms": done.percentile_ms(99),
        "failed": done.failed,
        "load_cpu_ms": done.cpu_ms_per_request(),
        # the server's own CPU per answered request: steady where throughput is not
        "server_cpu_ms": round(server_cpu_s / answered * 1000, 3) if answered else None,
        "ok_seconds": done.seconds[done.status == 200],  # pooled over repeats for the p99
    }


def paired(runs: list[dict], peers: list[dict], key: str = "rows_per_s") -> list[float | None]:
    """Per repeat, this server's value over its peer's, measured back to back: a slow spell of
    the shared machine moves both sides of a pair, so the median of the pairs resolves a few
    per cent where the spread between repeats is larger."""
    return [ratio(r[key], p[key]) for r, p in zip(runs, peers, strict=True)]


def pooled_p99_ms(runs: list[dict]) -> float | None:
    """The p99 of every answered request of all repeats (one repeat holds too few for it)."""
    seconds = np.concatenate([r["ok_seconds"] for r in runs]) if runs else np.array([])
    return round(float(np.percentile(seconds, 99)) * 1000, 2) if len(seconds) else None


def median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(median(known), 3) if known else None


def batching_on(project, capture: Path):
    """The same project with adaptive batching built in, capturing to its own store."""
    cfg = project.config
    batching = cfg.serving.batching.model_copy(update={"enabled": True})
    serving = cfg.serving.model_copy(update={"batching": batching})
    store = cfg.capture.model_copy(update={"path": str(capture)})
    config = cfg.model_copy(update={"serving": serving, "capture": store})
    return dataclasses.replace(project, config=config)


def capture_off(project):
    """The same project with capture sampling nothing: what a user sets to turn it off."""
    cfg = project.config
    capture = cfg.capture.model_copy(update={"sample_rate": 0.0})
    return dataclasses.replace(project, config=cfg.model_copy(update={"capture": capture}))


def wait_closed(port: int, timeout: float = 30) -> None:
    """Until nothing listens on `port`: a slot's workers can outlive its stop for a moment, and
    the next roll-forward starts its candidate on that port."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.2)


@contextlib.contextmanager
def plain_service(live: Live) -> Iterator[str]:
    """The peer: `bentoml serve bench.plain_service:Plain` on a free loopback port, with the
    slots' math-library threads; its URL. Stopped by its process group when done."""
    from model import artifacts
    from tasks.commands import bin_path, tool_env
    from tasks.release.serving import Server, stop_server, thread_env, wait_ready
    from tests.support import free_port

    port, root = free_port(), Path(__file__).resolve().parents[1]
    log = live.project.state_dir / "logs" / f"plain-{port}.log"
    env = tool_env(
        {
            "PLAIN_MODEL_FILE": str(live.project.resolve(artifacts.MODEL_FILE)),
            "BENTOML_HOME": str(live.project.state_dir / "plain-bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            **thread_env(live.project),
        }
    )
    command = [bin_path("bentoml"), "serve", "bench.plain_service:Plain", "--host", "127.0.0.1"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(bento="bench.plain_service:Plain", port=port, process=process, log=log)
    try:
        wait_ready(server, 120)
        yield server.url
    finally:
        stop_server(server)


# ---------------------------------------------------------------- cases
def serving_cases(live: Live, size: str, tmp: Path) -> float:
    """Emit the serving lines; returns the batch-1 capacity (requests/s, capture on)."""
    from tasks.release.serving import slot_port, slot_url, start_slot, stop_slot

    s = SETTINGS[size]
    start_slot(capture_off(live.project), "green", live.bento.tag)  # blue: capture on
    rows = {b: feature_records(live, b) for b in BATCHES}
    runs: dict[tuple[int, str], list[dict]] = {}
    try:
        with plain_service(live) as plain:
            urls = {
                "on": slot_url(live.project, "blue"),
                "off": slot_url(live.project, "green"),
                "plain": plain,
            }
            names = list(urls)
            for repeat in range(s["repeats"]):
                for batch in BATCHES:
                    runs.setdefault((batch, "inproc"), []).append(
                        inprocess(live, rows[batch], min(s["seconds"], 4.0))
                    )
                    # each repeat starts with another server, so a slow spell of the shared
                    # machine does not always land on the same one
                    for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                        url = urls[name]
                        result = under_load(url, rows[batch], s["seconds"], tmp)
                        runs.setdefault((batch, name), []).append(result)
    finally:
        stop_slot(live.project, "green")
        wait_closed(slot_port(live.project, "green"))
    lines = [serving_line(batch, s, runs) for batch in BATCHES]
    for line in lines:
        emit(line)
    return lines[0]["requests_per_s_capture_on"] or ROLL_RATE / ROLL_SHARE


def batching_case(live: Live, size: str, tmp: Path) -> None:
    """Batch-1 requests, 8 and 32 in flight, against a bento built with adaptive batching
    (capture on) and the plain peer; one line per concurrency."""
    from tasks.release.package import build_bento
    from tasks.release.serving import start_server, stop_server
    from tests.support import free_port

    s = SETTINGS[size]
    project = batching_on(live.project, tmp / "batched-capture")
    time.sleep(1.1)  # release versions are stamped to the second
    bento = build_bento(project, live.bento.model_tag)
    server = start_server(project, bento.tag, free_port())
    records = feature_records(live, 1)
    runs: dict[tuple[int, str], list[dict]] = {}
    try:
        with plain_service(live) as plain:
            for repeat in range(s["repeats"]):
                pair = [("batched", server.url), ("plain", plain)]
                for concurrency in BATCHING_CONCURRENCY:
                    for name, url in pair[repeat % 2 :] + pair[: repeat % 2]:
                        result = under_load(url, records, s["seconds"], tmp, concurrency)
                        runs.setdefault((concurrency, name), []).append(result)
    finally:
        stop_server(server)
    for concurrency in BATCHING_CONCURRENCY:
        batched, plain_runs = runs[(concurrency, "batched")], runs[(concurrency, "plain")]
        failed = sum(r["failed"] for r in batched)  # a 503 the batcher sheds counts here
        per_repeat = paired(batched, plain_runs)
        over_plain = median_of(per_repeat)
        p99_batched, p99_plain = pooled_p99_ms(batched), pooled_p99_ms(plain_runs)
        p99_over_plain = ratio(p99_batched or 0.0, p99_plain or 0.0)
        plain_cpu_over_batched = median_of(paired(plain_runs, batched, "server_cpu_ms"))
        emit(
            {
                "bench": "batching",
                "case": f"batch1-inflight{concurrency}",
                "concurrency": concurrency,
                "max_batch_size": project.config.serving.batching.max_batch_size,
                "max_latency_ms": project.config.serving.batching.max_latency_ms,
                "requests_per_s_batched": _med(batched, "requests_per_s"),
                "requests_per_s_plain": _med(plain_runs, "requests_per_s"),
                "p99_ms_batched": p99_batched,
                "p99_ms_plain": p99_plain,
                "load_cpu_ms_per_request": _med(batched + plain_runs, "load_cpu_ms"),
                "failed": failed,
                "failed_plain": sum(r["failed"] for r in plain_runs),
                "batched_over_plain_per_repeat": per_repeat,
                "server_cpu_ms_per_request_batched": _med(batched, "server_cpu_ms"),
                "server_cpu_ms_per_request_plain": _med(plain_runs, "server_cpu_ms"),
                "batched_over_plain_cpu": plain_cpu_over_batched,
                "batched_over_plain": over_plain,
                "p99_over_plain": p99_over_plain,
                "goals": {
                    "batched_over_plain": goal(over_plain, ">=", 2.0),
                    "p99_over_plain": goal(p99_over_plain, "<=", 1.0),
                    "failed": goal(failed, "==", 0),
                },
            }
        )


def _med(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return round(median(values), 3) if values else None


def serving_line(batch: int, s: dict, runs: dict) -> dict:
    inproc, on, off, plain = (runs[(batch, k)] for k in ("inproc", "on", "off", "plain"))
    rows_on, rows_off = _med(on, "rows_per_s"), _med(off, "rows_per_s")
    rows_inproc, rows_plain = _med(inproc, "rows_per_s"), _med(plain, "rows_per_s")
    on_over_plain, on_over_off = paired(on, plain), paired(on, off)
    over_plain, on_off = median_of(on_over_plain), median_of(on_over_off)
    capture_cost = None if on_off is None else round(1 - on_off, 3)
    over_inproc = ratio(rows_on, rows_inproc)
    p99_on, p99_off, p99_plain = (pooled_p99_ms(r) for r in (on, off, plain))
    p99_over_plain = ratio(p99_on or 0.0, p99_plain or 0.0)
    # the same two goals in server CPU per request: what bounds throughput on cores of its own
    plain_cpu_over_on = median_of(paired(plain, on, "server_cpu_ms"))
    off_cpu_over_on = median_of(paired(off, on, "server_cpu_ms"))
    capture_cost_cpu = None if off_cpu_over_on is None else round(1 - off_cpu_over_on, 3)
    goals = {
        "capture_cost": goal(capture_cost, "<=", 0.03),
        "served_over_plain": goal(over_plain, ">=", 0.95),
        "p99_over_plain": goal(p99_over_plain, "<=", 1.1),
        "capture_cost_cpu": goal(capture_cost_cpu, "<=", 0.03),
        "served_over_plain_cpu": goal(plain_cpu_over_on, ">=", 0.95),
    }
    return {
        "bench": "serving",
        "case": f"batch{batch}",
        "batch": batch,
        "concurrency": CONCURRENCY,
        "seconds_per_run": s["seconds"],
        "repeats": s["repeats"],
        "requests_per_s_capture_on": _med(on, "requests_per_s"),
        "requests_per_s_capture_off": _med(off, "requests_per_s"),
        "rows_per_s_capture_on": rows_on,
        "rows_per_s_capture_off": rows_off,
        "rows_per_s_plain": rows_plain,
        "rows_per_s_inprocess": rows_inproc,
        "rows_per_s_inprocess_from_records": _med(inproc, "records_rows_per_s"),
        "p50_ms_capture_on": _med(on, "p50_ms"),
        "p99_ms_capture_on": p99_on,
        "p50_ms_capture_off": _med(off, "p50_ms"),
        "p99_ms_capture_off": p99_off,
        "p50_ms_plain": _med(plain, "p50_ms"),
        "p99_ms_plain": p99_plain,
        "p50_ms_inprocess": _med(inproc, "p50_ms"),
        "p99_ms_inprocess": _med(inproc, "p99_ms"),
        "load_cpu_ms_per_request": _med(on + off + plain, "load_cpu_ms"),
        "server_cpu_ms_per_request_capture_on": _med(on, "server_cpu_ms"),
        "server_cpu_ms_per_request_capture_off": _med(off, "server_cpu_ms"),
        "server_cpu_ms_per_request_plain": _med(plain, "server_cpu_ms"),
        "capture_cost_cpu": capture_cost_cpu,
        "served_over_plain_cpu": plain_cpu_over_on,
        "failed": sum(r["failed"] for r in on + off + plain),
        "on_over_plain_per_repeat": on_over_plain,
        "on_over_off_per_repeat": on_over_off,
        "capture_cost": capture_cost,
        "served_over_plain": over_plain,
        "p99_over_plain": p99_over_plain,
        "served_over_inprocess": over_inproc,
        "goals": goals,
    }


def rollforward_case(live: Live, size: str, tmp: Path, rate: float) -> None:
    """go_live of a new bento while a paced load (below capacity) runs through nginx."""
    from tasks.release.package import build_bento
    from tasks.release.rollout import go_live

    s = SETTINGS[size]
    new = build_bento(live.project, live.bento.model_tag)
    body = json.dumps({"records": feature_records(live, 1)}).encode()
    out = tmp / "rollforward.json"
    began = time.time()
    process = start_load(
        f"{live.url}/predict",
        body,
        out,
        concurrency=32,
        max_requests=MAX_REQUESTS,
        max_seconds=s["steady_s"] + s["tail_s"] + 300,
        rate=rate,
    )
    time.sleep(s["steady_s"])
    switch_start = time.time()
    go_live(live.project, new)
    switch_end = time.time()
    time.sleep(s["tail_s"])
    done = finish(process, out, timeout=120, stop=True)
    live.bento = new
    steady = done.window(began + 1.0, switch_start)
    switch = done.window(switch_start, switch_end + SWITCH_TAIL_S)
    p99_ratio = ratio(switch.percentile_ms(99) or 0.0, steady.percentile_ms(99) or 0.0)
    emit(
        {
            "bench": "rollforward",
            "case": "batch1",
            "rate_per_s": round(rate, 1),
            "requests": len(done.status),
            "failed": done.failed,
            "failures": done.errors,  # by kind: HTTP status or exception
            "switch_s": round(switch_end - switch_start, 3),
            "steady_requests": len(steady.status),
            "switch_requests": len(switch.status),
            "p50_ms_steady": steady.percentile_ms(50),
            "p99_ms_steady": steady.percentile_ms(99),
            "p50_ms_switch": switch.percentile_ms(50),
            "p99_ms_switch": switch.percentile_ms(99),
            "max_ms_switch": round(float(switch.seconds.max()) * 1000, 2)
            if len(switch.seconds)
            else None,
            "p99_switch_over_steady": p99_ratio,
            "new_bento_answering": bool(done.bento) and done.bento[-1] == new.tag,
            "goals": {
                "failed": goal(done.failed, "==", 0),
                "p99_switch_over_steady": goal(p99_ratio, "<=", 1.5),
            },
        }
    )


class FirstAnswer:
    """Polls nginx from a thread; notes when a response first comes from `bento`."""

    def __init__(self, url: str, bento: str, records: list[dict]) -> None:
        self.url, self.bento, self.records = url, bento, records
        self.seen_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> FirstAnswer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.seen_at is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def _poll(self) -> None:
        import httpx

        from model.capture import auth_headers

        with httpx.Client(timeout=5, headers=auth_headers()) as client:
            while not self._stop.is_set() and self.seen_at is None:
                try:
                    answer = client.post(f"{self.url}/predict", json={"records": self.records})
                    if answer.status_code == 200 and answer.json().get("bento") == self.bento:
                        self.seen_at = time.perf_counter()
                except Exception:  # the proxy mid-reload: keep polling
                    pass
                self._stop.wait(0.05)


def approval_case(live: Live) -> None:
    """Approval to the new version answering, then its unavoidable parts on their own."""
    from tasks.release.package import build_bento, release_version
    from tasks.release.rollout import go_live
    from tasks.release.serving import start_server, stop_server
    from tests.support import free_port

    project, model_tag = live.project, live.bento.model_tag
    records = feature_records(live, 1)
    time.sleep(1.1)  # release versions are stamped to the second
    expected = f"{project.config.project.name}:{release_version(model_tag)}"
    approved = time.perf_counter()
    build_s, bento = timed(lambda: build_bento(project, model_tag))
    if bento.tag != expected:  # the second ticked over: watch for the tag actually built
        expected = bento.tag
    with FirstAnswer(live.url, expected, records) as probe:
        go_live_s, _ = timed(lambda: go_live(project, bento))
        probe.wait(60)
    latency = None if probe.seen_at is None else probe.seen_at - approved
    live.bento = bento

    time.sleep(1.1)
    build_alone_s, spare = timed(lambda: build_bento(project, model_tag))
    ready_alone_s, server = timed(lambda: start_server(project, spare.tag, free_port()))
    stop_server(server)
    parts = build_alone_s + ready_alone_s
    emit(
        {
            "bench": "approval_to_serving",
            "case": "build+go_live",
            "latency_s": None if latency is None else round(latency, 3),
            "build_s": round(build_s, 3),
            "go_live_s": round(go_live_s, 3),
            "build_alone_s": round(build_alone_s, 3),
            "ready_alone_s": round(ready_alone_s, 3),
            "parts_s": round(parts, 3),
            "latency_minus_parts_s": None if latency is None else round(latency - parts, 3),
            "goals": {
                "latency_minus_parts_s": goal(
                    None if latency is None else round(latency - parts, 3), "<=", 10.0
                )
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--cases", default="serving,batching,rollforward,approval")
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        loads = Path(tmp) / "loads"
        loads.mkdir()
        with live_stack(Path(tmp) / "project") as live:
            rate = ROLL_RATE
            if "serving" in cases:
                rate = ROLL_SHARE * serving_cases(live, args.size, loads)
            if "batching" in cases:
                batching_case(live, args.size, loads)
            if "rollforward" in cases:
                rollforward_case(live, args.size, loads, rate)
            if "approval" in cases:
                approval_case(live)


if __name__ == "__main__":
    main()
