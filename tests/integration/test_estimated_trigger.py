"""A retrain on the estimate alone, on the real stack: the winter model serves behind nginx, April
is replayed with its labels, May and June without; the monitor estimates the model's error on the
two unlabelled months, the policy (`estimated_quality`) starts the retrain on the worker, which
trains on the labelled April rows, gates, and asks for a decision whose evidence says it is an
estimate. Nothing is promoted before the approval; after it, the new bento serves. April, checked
while the request waits, shows its realised error beside the estimate.

The limit sits below what the estimator says for summer: direct loss estimation learns the
model's error on winter rows, so on months far outside them it estimates an error near the
largest it saw in winter, while the realised one is several times that.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest

from tests.fakes.slack_api import FakeSlack
from tests.integration.test_own_model_loop import monitor_outcome
from tests.integration.test_stack import free_endpoints, up
from tests.support import BIN, copy_project, driftloop, edit_config, tool_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

LIMIT = 12.0  # monitor.quality_limit on rmse; the winter model's held-out rmse is about 19
WINTER_ROWS = 1807  # data.source's query: season 1 without December
APRIL, MAY, JUNE = 719, 744, 720  # hours of each month in the bundled data
APRIL_TRAINED = 503  # int(719 * 0.7): the latest 30% of the window's labelled rows held out


@pytest.fixture
def live(tmp_path):
    """A fresh clone whose policy listens to the estimate only, its stack up with a local Slack,
    and the winter model serving behind nginx; returns (project, slack, env, first bento)."""
    root = copy_project(tmp_path)

    def change(raw: dict) -> None:
        free_endpoints(raw)
        raw["monitor"]["quality_limit"] = LIMIT
        raw["policy"].update(triggers=["estimated_quality"], consecutive_windows=2)
        raw["policy"]["cooldown_seconds"] = 0
        raw["retrain"]["window_days"] = 92  # April to June: April's rows are the labelled ones
        raw["serving"]["watch_seconds"] = 6
        raw["serving"]["probe_interval_seconds"] = 0.25
        raw["serving"]["max_p95_latency_seconds"] = 10.0  # a shared 2-core machine

    edit_config(root, change)
    driftloop(root, "data")
    driftloop(root, "train")
    slack = FakeSlack().start()
    env = {"SLACK_BOT_TOKEN": slack.token, "SLACK_API_URL": slack.url}
    up(root, env=env)
    from config.loader import load_project
    from tasks.release.package import build_bento, register_model
    from tasks.release.rollout import go_live

    project = load_project(root / "config/driftloop.yaml")
    first = go_live(project, build_bento(project, register_model(project)))
    yield project, slack, env, first.bento
    slack.stop()
    driftloop(root, "down", check=False)


def cli(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """A driftloop command as a user runs it, with the local Slack's token and URL."""
    return subprocess.run(
        [str(BIN / "driftloop"), *args],
        cwd=root,
        env={**tool_env(), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def replay_month(project, months: list[str], labels: bool) -> int:
    """The months through nginx, their labels at once or never; returns the labels posted.

    Labelled rows go one a request: a label is posted once its event time has been sent, and a
    batch is sent at its first row's time."""
    from tasks.release.traffic import load_traffic, replay

    serving = project.config.serving
    sample = load_traffic(project, query=f"mnth in {months!r}")
    stats = replay(
        f"http://{serving.host}:{serving.port}",
        sample,
        sample.times,
        speed=3600 * 400,
        batch=1 if labels else 16,
        label_delay=timedelta(0) if labels else None,
        max_seconds=180,
    )
    assert stats.failed == 0 and stats.sent == len(sample.records), stats
    return stats.labelled


def monitor(root: Path, env: dict[str, str], start: str, end: str) -> tuple[dict, dict]:
    """`driftloop monitor` on a window: its printed outcome and the record it saved."""
    done = cli(root, env, "monitor", "--start", start, "--end", end)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    history = root / ".driftloop/monitor/history.jsonl"
    run_id = json.loads(history.read_text().splitlines()[-1])["run_id"]
    record = json.loads((root / f".driftloop/monitor/runs/{run_id}.json").read_text())
    return monitor_outcome(done.stdout), record


def primary_estimate(record: dict) -> dict:
    estimated = record["result"]["estimated"]
    assert estimated is not None, f"no estimate in the record: {record['result']['message']}"
    assert (estimated["method"], estimated["primary"]) == ("dle", "rmse")
    assert estimated["confidence"] == pytest.approx(0.9)
    (rmse,) = [m for m in estimated["metrics"] if m["name"] == "rmse"]
    return rmse


def served_rmse(root: Path, month: str) -> float:
    """scikit-learn's rmse of the serving model file on the month's rows, computed here."""
    from config.loader import load_project
    from model.frames import feature_frame

    project = load_project(root / "config/driftloop.yaml")
    pipeline = joblib.load(root / "artifacts/model/model.joblib")
    rows = pd.read_csv(root / "data/bikeshare/bikeshare_hourly_2011.csv").query(
        f"mnth == '{month}'"
    )
    predicted = pipeline.predict(feature_frame(rows, *project.features))
    return float(np.sqrt(np.mean((rows["bikers"].to_numpy() - predicted) ** 2)))


def wait_for_pending(root: Path, env: dict[str, str], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = json.loads(cli(root, env, "pending", "--json").stdout or "[]")
        if waiting:
            return waiting[0]
        time.sleep(3)
    raise AssertionError(f"no approval request within {timeout:.0f} s")


def approval_card(slack: FakeSlack) -> str:
    cards = [
        json.dumps(m.get("blocks", ""))
        for m in slack.posted()
        if m.get("text", "").startswith("Approval needed")
    ]
    assert len(cards) == 1, [m.get("text") for m in slack.posted()]
    return cards[0]


def wait_for_promotion(project, first: str, timeout: float = 300):
    """The roll-forward after the decision: a promoted attempt of a bento other than `first`."""
    from tasks.release.releases import read_attempts

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [a for a in read_attempts(project) if a.release.bento != first]
        if done and done[-1].outcome in ("promoted", "rolled_back", "failed"):
            return done[-1]
        time.sleep(2)
    raise AssertionError(f"no roll-forward within {timeout:.0f} s")


def answered_by(project) -> str:
    from tasks.release.traffic import sample_records

    url = f"http://{project.config.serving.host}:{project.config.serving.port}/predict"
    records = sample_records(project, 1).records
    return httpx.post(url, json={"records": records}, timeout=30).json()["bento"]


def test_unlabelled_windows_retrain_on_the_estimate_through_the_approval(live):
    from model.lineage import file_md5
    from tasks.release.releases import read_attempts, read_serving

    project, slack, env, first = live
    root = project.root
    winter_rmse = served_rmse(root, "April")

    # 1. traffic: April's labels arrive at once, May's and June's never
    assert replay_month(project, ["April"], labels=True) == APRIL
    assert replay_month(project, ["May", "June"], labels=False) == 0

    # 2. two unlabelled windows, each estimated past the limit beyond its band
    may, may_record = monitor(root, env, "2011-05-01", "2011-06-01")
    assert (may["rows"], may["label_coverage"], may["quality"]) == (MAY, 0.0, {})
    assert not may["retrain_triggered"]
    assert may["policy"] == "1 of the last 2 windows bad; 2 in a row trigger"
    june, june_record = monitor(root, env, "2011-06-01", "2011-07-01")
    assert (june["rows"], june["label_coverage"], june["quality"]) == (JUNE, 0.0, {})
    assert june["retrain_triggered"] and june["retrain_run"], june["policy"]
    assert june["policy"] == "2 bad windows in a row (estimated quality)"
    for record, rows in ((may_record, MAY), (june_record, JUNE)):
        rmse = primary_estimate(record)
        assert record["estimated_breached"] and record["result"]["estimated"]["limit_breached"]
        assert record["result"]["estimated"]["rows"] == rows
        assert rmse["lower"] > LIMIT and rmse["lower"] <= rmse["value"] <= rmse["upper"]
        assert (rmse["realised"], rmse["error"]) == (None, None)
        assert not record["quality_breached"]  # no labels: nothing realised to breach

    # 3. the retrain on the worker: April's labelled rows, gated, then a request for a decision
    request = wait_for_pending(root, env)
    assert request["run_id"] == june["retrain_run"]
    evidence = request["evidence"]
    assert "estimated quality" in evidence["reason"]
    assert evidence["estimated_only"] is True and evidence["quality"] == []
    june_rmse = primary_estimate(june_record)
    (shown,) = [e for e in evidence["estimated"] if e["metric"] == "rmse"]
    assert (shown["estimate"], shown["lower"], shown["upper"], shown["realised"]) == (
        june_rmse["value"],
        june_rmse["lower"],
        june_rmse["upper"],
        None,
    )
    assert [g["passed"] for g in evidence["gate"] if g["metric"] == "rmse"] == [True]
    trained = pd.read_csv(root / "data/train.csv")
    assert len(trained) == WINTER_ROWS + APRIL_TRAINED
    assert (trained["mnth"] == "April").sum() == APRIL_TRAINED
    assert file_md5(root / "data/train.csv") == evidence["data_rev"]

    # the card and `driftloop pending` say the evidence is an estimate, with its band
    card = approval_card(slack)
    band = f"90% band {june_rmse['lower']:.4g} to {june_rmse['upper']:.4g}"
    assert "ESTIMATED without labels (the evidence is an estimate)" in card
    assert f"`rmse`: estimated {june_rmse['value']:.4g} ({band}), no labels yet" in card
    listed = cli(root, env, "pending")
    assert listed.returncode == 0, listed.stderr
    assert "estimated" in listed.stdout.lower() and f"{june_rmse['value']:.4g}" in listed.stdout

    # 4. nothing promoted while the request waits; April, its labels in, checked meanwhile
    assert read_serving(project).bento == first
    assert [a.outcome for a in read_attempts(project)] == ["promoted"]  # the first release
    april, april_record = monitor(root, env, "2011-04-01", "2011-05-01")
    assert (april["rows"], april["label_coverage"]) == (APRIL, 1.0)
    assert not april["retrain_triggered"] and "already open" in april["policy"]
    rmse = primary_estimate(april_record)
    assert rmse["realised"] == pytest.approx(winter_rmse, rel=1e-6)
    assert 60 < rmse["realised"] < 110  # the winter model on spring: far past its own 19
    # every April row is labelled: the estimate on the labelled rows is the window's
    assert rmse["error"] == pytest.approx(rmse["value"] - rmse["realised"], rel=1e-6)

    # 5. the approval, then the new bento serves
    approved = cli(
        root,
        env,
        "approve",
        request["run_id"],
        "--evidence",
        request["evidence_hash"],
        "-m",
        "the estimate is enough",
    )
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"approved by {getpass.getuser()} via cli" in approved.stdout
    attempt = wait_for_promotion(project, first)
    assert (attempt.outcome, attempt.reason) == ("promoted", "")
    serving = read_serving(project)
    assert attempt.release.bento == serving.bento != first
    assert serving.model_tag == evidence["candidate"]
    assert answered_by(project) == serving.bento
