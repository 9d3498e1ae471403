"""Promote on the real stack: bentoml serve in blue/green slots behind nginx, load from a second
process on loopback, and every way a roll-forward can fail ending with the old release serving."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

from bench.load import Requests, finish, start_load
from tests.fakes.approval_stub import record_approval
from tests.fakes.slack_api import FakeSlack
from tests.faults.conftest import (
    deploy,
    flow_pids,
    flow_run,
    kill_run,
    kill_tree,
    start_worker,
    stop_worker,
    wait_until,
)
from tests.integration.test_stack import free_endpoints, up
from tests.support import BIN, copy_project, driftloop, edit_config, sh, tool_env

pytestmark = pytest.mark.integration

LOAD_RATE = 25  # requests/s, batch 1, 4 in flight


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A fresh clone with its stack up and the first release serving behind nginx."""
    root = copy_project(tmp_path_factory.mktemp("promote"))

    def change(raw):
        free_endpoints(raw)
        raw["serving"]["watch_seconds"] = 6
        raw["serving"]["probe_interval_seconds"] = 0.25
        raw["serving"]["max_p95_latency_seconds"] = 10.0  # a shared 2-core machine, not a bench

    edit_config(root, change)
    driftloop(root, "data")
    driftloop(root, "train")
    up(root)
    supervisorctl(root, "stop", "prefect-worker")  # only the runs this test starts
    project = load(root)
    from tasks.release.package import build_bento, register_model
    from tasks.release.rollout import go_live

    go_live(project, build_bento(project, register_model(project)))
    yield project
    sh([str(BIN / "driftloop"), "down"], root, check=False)


def load(root: Path):
    from config.loader import load_project

    return load_project(root / "config/driftloop.yaml")


def supervisorctl(root: Path, *args: str):
    conf = root / ".driftloop/stack/supervisord.conf"
    return sh([str(BIN / "supervisorctl"), "-c", str(conf), *args], root)


def client_url(project) -> str:
    return f"http://{project.config.serving.host}:{project.config.serving.port}/predict"


def traffic(project, tmp_path: Path, rows: int = 1, seconds: float = 180) -> subprocess.Popen:
    from tasks.release.traffic import sample_records

    body = json.dumps({"records": sample_records(project, rows).records}).encode()
    return start_load(
        client_url(project),
        body,
        tmp_path / "load.json",
        concurrency=4,
        max_requests=int(LOAD_RATE * seconds),
        max_seconds=seconds,
        rate=LOAD_RATE,
    )


def stop_traffic(process: subprocess.Popen, tmp_path: Path) -> Requests:
    return finish(process, tmp_path / "load.json", timeout=60, stop=True)


def failures(requests: Requests) -> str:
    return f"{requests.failed} of {len(requests.status)} failed ({requests.describe_failures()})"


def answered_by(project) -> str:
    return httpx.post(client_url(project), json={"records": sample(project)}).json()["bento"]


def sample(project) -> list[dict]:
    from tasks.release.traffic import sample_records

    return sample_records(project, 1).records


def after_switch_all_new(requests: Requests, old: str, new: str) -> bool:
    """Once a request has been answered by `new`, no request started later reaches `old`."""
    order = sorted(range(len(requests.bento)), key=lambda i: requests.start[i])
    first_new_end = min(
        (requests.start[i] + requests.seconds[i] for i in order if requests.bento[i] == new),
        default=None,
    )
    assert first_new_end is not None, f"no request reached {new}"
    late = [i for i in order if requests.start[i] > first_new_end]
    return all(requests.bento[i] == new for i in late) and old in requests.bento


def slot_answers(project, slot: str) -> bool:
    from tasks.release.serving import slot_url

    try:
        return httpx.get(f"{slot_url(project, slot)}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def attempts(project):
    from tasks.release.releases import read_attempts

    return read_attempts(project)


# ---------------------------------------------------------------- the happy path


def test_promote_under_load_then_lineage_and_rollback(live, prefect_server, tmp_path, monkeypatch):
    from flows.promote import promote
    from tasks.release.releases import read_serving

    project = live
    slack = FakeSlack().start()
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
    monkeypatch.setenv("SLACK_API_URL", slack.url)
    before = read_serving(project)
    run_id, hash_ = record_approval(project, before.model_tag, "alice")

    load = traffic(project, tmp_path)
    try:
        bento = promote(
            candidate=before.model_tag,
            retrain_run=run_id,
            evidence_hash=hash_,
            config=str(project.path),
        )
    finally:
        requests = stop_traffic(load, tmp_path)
        slack.stop()
    assert requests.failed == 0, failures(requests)
    assert after_switch_all_new(requests, before.bento, bento)
    assert answered_by(project) == bento
    assert not slot_answers(project, before.slot), "the old slot still runs"
    assert attempts(project)[-1].outcome == "promoted"
    assert any(bento in m["text"] and "now serving" in m["text"] for m in slack.posted())

    # lineage: bento -> model -> data rev -> commit -> run -> approver and time -> evidence
    shown = json.loads(driftloop(project.root, "lineage", "--json").stdout)
    meta = json.loads((project.root / "artifacts/model/meta.json").read_text())["lineage"]
    sh(["git", "cat-file", "-e", meta["git_commit"]], project.root)  # a commit of this repo
    approved_at = shown["lineage"].pop("approved_at")
    assert shown["lineage"] == {
        "bento": bento,
        "model_tag": before.model_tag,
        "data_rev": meta["data_rev"],
        "git_commit": meta["git_commit"],
        "retrain_run": run_id,
        "approver": "alice",
        "approval_channel": "cli",
        "evidence_hash": hash_,
    }
    assert approved_at.startswith(datetime.now(UTC).strftime("%Y-%m-%d"))

    # rollback: the previous release again, through the same checks, under load
    load = traffic(project, tmp_path)
    try:
        done = driftloop(project.root, "rollback", check=False)
    finally:
        requests = stop_traffic(load, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert requests.failed == 0, failures(requests)
    assert answered_by(project) == before.bento
    assert read_serving(project).bento == before.bento
    assert attempts(project)[-1].action == "rollback"


# ---------------------------------------------------------------- failures roll back


def test_a_candidate_never_ready_is_stopped_within_its_deadline(live, tmp_path):
    from tasks.release.package import build_bento
    from tasks.release.releases import read_serving
    from tasks.release.rollout import RolloutFailed, go_live, idle_slot

    before = read_serving(live)
    serving = live.config.serving.model_copy(update={"ready_timeout_seconds": 1.0})
    hasty = dataclasses.replace(live, config=live.config.model_copy(update={"serving": serving}))
    bento = build_bento(live, before.model_tag)

    load = traffic(live, tmp_path)
    started = time.monotonic()
    try:
        with pytest.raises(RolloutFailed, match="not ready after 1 s") as failed:
            go_live(hasty, bento)
        took = time.monotonic() - started
    finally:
        requests = stop_traffic(load, tmp_path)
    assert took < 30, f"the rollback took {took:.0f} s"
    assert requests.failed == 0, failures(requests)
    assert set(requests.bento) == {before.bento}
    assert failed.value.attempt.outcome == "failed" and failed.value.attempt.stage == "start"
    assert read_serving(live) == before
    assert not slot_answers(live, idle_slot(before)), "the candidate still runs"
    assert attempts(live)[-1].release.bento == bento.tag


def test_a_candidate_answering_5xx_is_rolled_back_and_reported(
    live, prefect_server, tmp_path, monkeypatch
):
    """A service change that passes the smoke test (20 rows) but fails clients' two-row batches.

    The shadow stage would refuse it before the switch (its mirrored two-row batches fail too):
    it is off here, so the watch after the switch is what catches it."""
    from flows.promote import promote
    from tasks.release.releases import read_serving

    project = live
    config = project.path.read_text()
    edit_config(project.root, lambda raw: raw["shadow"].update(seconds=0), commit=False)
    before = read_serving(project)
    service = project.root / "model/service.py"
    original = service.read_text()
    anchor = (
        "        try:\n            features = records_frame(records, self.schema, ARGS.max_batch)"
    )
    assert anchor in original
    fault = '        if len(records) == 2:\n            raise RuntimeError("fault")\n'
    service.write_text(original.replace(anchor, fault + anchor))
    slack = FakeSlack().start()
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
    monkeypatch.setenv("SLACK_API_URL", slack.url)
    load = traffic(project, tmp_path, rows=2)
    try:
        with pytest.raises(Exception, match="5xx"):
            run_id, hash_ = record_approval(project, before.model_tag, "bob")
            promote(
                candidate=before.model_tag,
                retrain_run=run_id,
                evidence_hash=hash_,
                config=str(project.path),
            )
    finally:
        requests = stop_traffic(load, tmp_path)
        slack.stop()
        service.write_text(original)
        project.path.write_text(config)
    failed = attempts(project)[-1]
    assert failed.outcome == "rolled_back" and failed.stage == "watch", failed
    assert failed.shadow.startswith("shadow: off")  # the stage did not run
    assert answered_by(project) == before.bento and read_serving(project) == before
    assert not slot_answers(project, failed.release.slot)
    assert requests.failed > 0 and requests.bento[-1] == before.bento
    (notice,) = [m for m in slack.posted() if "was not promoted" in m["text"]]
    assert "rolled back at watch" in notice["text"] and "5xx" in notice["text"]
    assert f"{before.bento} keeps serving" in notice["text"]
    pushed = httpx.get(f"{project.config.endpoints.pushgateway}/metrics").text
    assert any(
        'job="driftloop_rollouts"' in line
        and 'outcome="rolled_back"' in line
        and not line.endswith(" 0")
        for line in pushed.splitlines()
        if line.startswith("driftloop_rollouts_total{")
    ), pushed


def test_promote_killed_mid_build_leaves_serving_unchanged(live, prefect_server, tmp_path):
    from tasks.release.releases import read_serving

    project = live
    before = read_serving(project)
    tried = len(attempts(project))
    archives = set((project.state_dir / "releases").glob("*"))
    load = traffic(project, tmp_path)
    try:
        flow = promote_process(project, before.model_tag, "carol")
        assert wait_for_child(flow.pid, "build", 120), "bentoml build never started"
        os.killpg(flow.pid, signal.SIGKILL)  # the flow and its build, mid-way
        flow.wait(10)
        time.sleep(2)
    finally:
        requests = stop_traffic(load, tmp_path)
    assert requests.failed == 0, failures(requests)
    assert set(requests.bento) == {before.bento}
    assert read_serving(project) == before
    assert answered_by(project) == before.bento
    assert len(attempts(project)) == tried, "a killed build was recorded as a release"
    assert set((project.state_dir / "releases").glob("*")) == archives


def promote_process(project, candidate: str, approver: str) -> subprocess.Popen:
    """The promote flow in a process of its own (its own group, so it can be killed whole),
    reporting to the test's Prefect server; its log comes back on stdout."""
    run_id, hash_ = record_approval(project, candidate, approver)
    code = (
        "from flows.promote import promote; "
        f"promote(candidate={candidate!r}, retrain_run={run_id!r}, evidence_hash={hash_!r}, "
        f"config={str(project.path)!r})"
    )
    return subprocess.Popen(
        [sys.executable, "-u", "-c", code],
        cwd=project.root,
        env={**tool_env(), "PREFECT_API_URL": os.environ["PREFECT_API_URL"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_child(pid: int, word: str, seconds: float) -> bool:
    """Until a descendant of `pid` runs a command line containing `word`."""
    deadline = time.monotonic() + seconds
    parent = psutil.Process(pid)
    while time.monotonic() < deadline:
        for child in parent.children(recursive=True):
            try:
                if word in child.cmdline():
                    return True
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    return False


MARKERS = {"start": " in slot ", "smoke": "smoke test:", "watch": "watch: "}
PROMOTE_POOL = "driftloop-promote-tests"


@pytest.fixture(scope="module")
def promote_deployment(live, prefect_server):
    """The promote flow deployed on a process pool of its own, as `driftloop up` deploys it."""
    from prefect import get_client

    deployment_id = deploy(
        live.root, "promote", "flows/promote.py:promote", {"config": str(live.path)}, PROMOTE_POOL
    )
    yield deployment_id
    with get_client(sync_client=True) as client:
        client.delete_deployment(deployment_id)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("step", list(MARKERS))
def test_promote_killed_at_a_step_is_undone_by_its_crash_hook(
    live, prefect_server, promote_deployment, tmp_path, step
):
    """kill -9 of the process a real worker started for a promote run, mid-roll-forward: the
    worker marks the run Crashed and runs the flow's on_crashed hook, which puts traffic back on
    the recorded release, stops the stray slot, logs the attempt and says so in Slack."""
    from prefect import get_client

    from tasks.release.releases import read_serving
    from tasks.release.rollout import idle_slot

    project = live
    before = read_serving(project)
    interrupted = sum(a.stage == "interrupted" for a in attempts(project))
    run_id, hash_ = record_approval(project, before.model_tag, "dave")
    slack = FakeSlack().start()
    log = tmp_path / "worker.log"
    worker = start_worker(
        project.root,
        slack,
        os.environ["PREFECT_API_URL"],
        os.environ["PREFECT_HOME"],
        PROMOTE_POOL,
        log,
    )
    load = traffic(project, tmp_path)
    try:
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(
                promote_deployment,
                parameters={
                    "candidate": before.model_tag,
                    "retrain_run": run_id,
                    "evidence_hash": hash_,
                    "config": str(project.path),
                },
            )
        flow_run_id = str(run.id)
        wait_until(lambda: MARKERS[step] in log.read_text(errors="replace"), 240, step, 0.05)
        slot_conf = project.state_dir / "stack" / "slots" / f"{idle_slot(before)}.conf"
        wait_until(slot_conf.exists, 30, "the candidate's slot program", 0.05)
        victims = flow_pids(flow_run_id)
        assert victims, "no process runs the flow"
        started = {child.pid for child in psutil.Process(worker.pid).children(recursive=True)}
        assert set(victims) <= started, "the flow runs outside the test's worker"
        for pid in victims:  # the run's own process, started by the test's worker
            kill_tree(pid)
        kill_run(flow_run_id)  # and any child it started just then
        # nothing undone yet: only the crash handling that follows can do it
        assert sum(a.stage == "interrupted" for a in attempts(project)) == interrupted

        state = wait_until(
            lambda: (s := flow_run(flow_run_id).state) is not None and s.is_final() and s,
            120,
            "the killed run reaching a final state",
        )
        assert state.is_crashed(), state

        def crash_notice():
            return [m for m in slack.posted() if "crashed" in m.get("text", "")]

        (notice,) = wait_until(crash_notice, 90, "the on_crashed hook's notice")
    finally:
        requests = stop_traffic(load, tmp_path)
        stop_worker(worker)
        slack.stop()
    assert run.name in notice["text"] and f"{before.bento} is serving" in notice["text"]
    assert requests.failed == 0, failures(requests)
    assert read_serving(project) == before
    assert answered_by(project) == before.bento
    assert not slot_answers(project, idle_slot(before)), "the stray candidate still runs"
    last = attempts(project)[-1]
    assert last.stage == "interrupted" and last.release.bento != before.bento
    assert sum(a.stage == "interrupted" for a in attempts(project)) == interrupted + 1
    assert flow_pids(flow_run_id) == []


def test_after_interrupted_promotes_the_next_one_goes_live(live, tmp_path):
    from tasks.release.package import build_bento
    from tasks.release.releases import read_serving
    from tasks.release.rollout import go_live

    before = read_serving(live)
    bento = build_bento(live, before.model_tag)
    load = traffic(live, tmp_path)
    try:
        release = go_live(live, bento)
    finally:
        requests = stop_traffic(load, tmp_path)
    assert requests.failed == 0, failures(requests)
    assert release.bento == bento.tag == answered_by(live) == read_serving(live).bento


# ---------------------------------------------------------------- the shadow stage


def test_shadow_stage_refuses_live_disagreement_and_passes_agreement(live, tmp_path):
    """Under load, the candidate is mirrored live traffic before the switch: one that answers
    far from the champion (where its holdout said they agree) is refused with no failed client
    request; one that agrees goes live; no mirrored request is captured."""
    import joblib

    from config.schema import ShadowConfig
    from model import artifacts
    from tasks.capture import read_window
    from tasks.release.package import build_bento, register_model
    from tasks.release.releases import read_serving
    from tasks.release.rollout import RolloutFailed, go_live
    from tasks.release.shadow import Comparison, save_holdout_comparison

    shadow = ShadowConfig(seconds=4, min_rows=20)
    project = dataclasses.replace(live, config=live.config.model_copy(update={"shadow": shadow}))
    before = read_serving(project)
    # a candidate that learned almost nothing: its first 3 boosting rounds of the 200
    model_file = project.resolve(artifacts.MODEL_FILE)
    kept = model_file.read_bytes()
    pipeline = joblib.load(model_file)
    pipeline[-1]._predictors = pipeline[-1]._predictors[:3]
    joblib.dump(pipeline, model_file)
    try:
        stranger = register_model(project)
    finally:
        model_file.write_bytes(kept)
    agreed = Comparison(rows=200, difference=0.01, drift=0.01)  # what its approver saw
    save_holdout_comparison(project, stranger, agreed)
    save_holdout_comparison(project, before.model_tag, agreed)
    refused, same = build_bento(project, stranger), build_bento(project, before.model_tag)

    started = datetime.now(UTC)
    load = traffic(project, tmp_path)
    try:
        with pytest.raises(RolloutFailed, match="shadow stage: live answers") as failed:
            go_live(project, refused)
        assert read_serving(project).bento == before.bento
        release = go_live(project, same)
    finally:
        requests = stop_traffic(load, tmp_path)
    assert requests.failed == 0, failures(requests)
    assert failed.value.attempt.stage == "shadow"
    assert (
        attempts(project)[-2].outcome == "failed"
        and "holdout 0.010" in attempts(project)[-2].reason
    )
    assert release.bento == same.tag and attempts(project)[-1].shadow.startswith("shadow: passed")
    time.sleep(project.config.capture.flush_seconds + 1)
    captured = read_window(project, started, datetime.now(UTC)).frame
    assert set(captured["bento"]) <= {before.bento, same.tag}  # never the refused candidate
    assert len(captured) <= len(requests.status)  # client requests only, not their mirrors
