"""A user's own dataset and estimator through the whole loop, by editing the config alone and
running the CLI commands the README lists ("Your own model, the whole loop"), as subprocesses.

Each dataset ships inside scikit-learn (no download). The binary one closes the loop: release,
shifted traffic with labels, two monitor runs, the policy's retrain, a CLI approval whose
promotion fails at start (the idle slot's port is held by another process), `driftloop promote
RUN` on retry, and lineage naming the new model, its data rev and the approver. The regression
and multiclass ones stop after their first monitor run. Every configured quality metric on
traffic must equal scikit-learn's on the same rows.
"""

from __future__ import annotations

import getpass
import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from tests.integration.test_stack import free_endpoints
from tests.support import BIN, copy_project, driftloop, edit_config, free_port, sh, tool_env

pytestmark = pytest.mark.integration

TRAFFIC = "traffic.csv"


def tumours(root: Path) -> dict:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.iloc[:, :10].copy()
    frame["diagnosis"] = np.where(data.target == 1, "benign", "malignant")
    frame.to_csv(root / "data/tumours.csv", index=False)
    # traffic: four features far beyond anything seen, and the label's meaning reversed
    shifted = shift(frame, ["mean radius", "mean texture", "mean perimeter", "mean area"])
    shifted["diagnosis"] = shifted["diagnosis"].map({"benign": "malignant", "malignant": "benign"})
    shifted.to_csv(root / TRAFFIC, index=False)
    return {
        "project": {"name": "tumours"},
        "data": {"path": "data/tumours.csv", "target": "diagnosis", "task": "binary"},
        "train": {
            "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
            "params": {"max_iter": 100},
        },
        "evaluate": {"metrics": ["roc_auc", "log_loss", "f1", "accuracy"], "primary": "roc_auc"},
        "gate": {"guard_metrics": []},
        "monitor": {"quality_limit": 0.8},
    }


def patients(root: Path) -> dict:
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame["sex"] = frame["sex"].map({1.0: "f", 2.0: "m"})
    frame.to_csv(root / "data/patients.csv", index=False)
    shift(frame, ["bmi", "bp", "s5", "age"]).to_csv(root / TRAFFIC, index=False)
    return {
        "project": {"name": "diabetes"},
        "data": {
            "path": "data/patients.csv",
            "target": "target",
            "task": "regression",
            "numeric": ["age", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"],
            "categorical": ["sex"],
        },
        "train": {"estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 0.5}},
        "evaluate": {"metrics": ["mae", "rmse", "r2"], "primary": "mae"},
        "gate": {"guard_metrics": ["rmse"]},
        "monitor": {"quality_limit": 80},
    }


def wine(root: Path) -> dict:
    frame = load_wine(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    frame.to_parquet(root / "data/wine.parquet", index=False)
    shifted = shift(frame, ["alcohol", "malic_acid", "ash", "magnesium", "proline"])
    shifted.to_csv(root / TRAFFIC, index=False)
    return {
        "project": {"name": "wine"},
        "data": {"path": "data/wine.parquet", "target": "target", "task": "multiclass"},
        "train": {
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": {"n_estimators": 50},
        },
        "evaluate": {"metrics": ["f1_macro", "accuracy", "log_loss"], "primary": "accuracy"},
        "gate": {"guard_metrics": ["f1_macro"]},
        "monitor": {"quality_limit": 0.6},
    }


def shift(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The same rows with `columns` moved by five standard deviations."""
    out = frame.copy()
    for column in columns:
        out[column] = out[column] + 5 * out[column].std()
    return out


def configure(root: Path, sections: dict) -> None:
    """The user's edit of config/driftloop.yaml: their data, estimator, metrics, limits."""

    def change(raw: dict) -> None:
        free_endpoints(raw)
        for key in ("project", "data", "train", "evaluate"):
            raw[key] = sections[key]
        raw["gate"].update(sections["gate"])
        raw["monitor"].update(min_rows=100, min_labels=50, **sections["monitor"])
        raw["policy"]["cooldown_seconds"] = 0

    edit_config(root, change)


def start_loop(root: Path, sections: dict) -> str:
    """README's commands from a fresh clone to the first release; returns its bento."""
    driftloop(root, "config")
    driftloop(root, "data")
    data = sections["data"]["path"]
    sh(["git", "add", f"{data}.dvc", str(Path(data).parent / ".gitignore")], root)
    sh(["git", "commit", "-qm", "track the training data"], root)
    sh(["dvc", "repro"], root)
    bento = re.search(r"built (\S+) serving model", driftloop(root, "build").stdout).group(1)
    driftloop(root, "up", timeout=400)
    released = driftloop(root, "release", bento).stdout
    assert f"released by hand by {getpass.getuser()}" in released
    return bento


def replay_and_monitor(root: Path) -> dict:
    replayed = driftloop(root, "replay", TRAFFIC, "--label-delay-hours", "0", "--batch", "50")
    rows = len(pd.read_csv(root / TRAFFIC))
    assert f"sent {rows} rows, 0 failed, {rows} labels posted" in replayed.stdout
    return monitor_outcome(driftloop(root, "monitor", check=False).stdout)


def monitor_outcome(stdout: str) -> dict:
    start = stdout.rindex("\n{\n") + 1 if "\n{\n" in stdout else stdout.index("{")
    return json.loads(stdout[start : stdout.rindex("}") + 1])


def expected_quality(root: Path, sections: dict) -> dict[str, float]:
    """scikit-learn's metrics of the released model on the replayed rows, computed here."""
    from config.loader import load_project
    from model.frames import feature_frame

    project = load_project(root / "config/driftloop.yaml")
    pipeline = joblib.load(root / "artifacts/model/model.joblib")
    traffic = pd.read_csv(root / TRAFFIC)
    features = feature_frame(traffic, *project.features)
    y_true = traffic[sections["data"]["target"]]
    y_pred = pipeline.predict(features)
    if sections["data"]["task"] == "regression":
        return {
            "mae": skm.mean_absolute_error(y_true, y_pred),
            "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
            "r2": skm.r2_score(y_true, y_pred),
        }
    proba = pipeline.predict_proba(features)
    classes = pipeline.classes_
    every = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "log_loss": skm.log_loss(y_true, proba, labels=classes),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro"),
    }
    if len(classes) == 2:
        every["roc_auc"] = skm.roc_auc_score(y_true == classes[1], proba[:, 1])
        every["f1"] = skm.f1_score(y_true, y_pred, pos_label=classes[1])
    return {name: every[name] for name in sections["evaluate"]["metrics"]}


def assert_quality(outcome: dict, expected: dict[str, float]) -> None:
    assert outcome["verdict"] != "empty", outcome
    for name, value in expected.items():
        got = outcome["quality"].get(name)
        assert got is not None, f"{name} missing on traffic: {outcome['quality']}"
        assert got == pytest.approx(value, rel=2e-3, abs=1e-4), name


def wait_for_request(root: Path, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = json.loads(driftloop(root, "pending", "--json").stdout)
        if waiting:
            return waiting[0]
        time.sleep(3)
    raise AssertionError(f"no approval request within {timeout:.0f} s")


def wait_for_attempt(root: Path, outcome: str, timeout: float = 300) -> dict:
    log = root / ".driftloop/audit/releases.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            attempts = [json.loads(line) for line in log.read_text().splitlines()]
            found = [a for a in attempts if a["outcome"] == outcome]
            if found:
                return found[-1]
        time.sleep(2)
    raise AssertionError(f"no {outcome} release attempt within {timeout:.0f} s")


@pytest.fixture
def loop_project(tmp_path):
    root = copy_project(tmp_path)
    yield root
    driftloop(root, "down", check=False)


def test_binary_model_closes_the_loop(loop_project):
    root = loop_project
    sections = tumours(root)
    configure(root, sections)
    first = start_loop(root, sections)
    expected = expected_quality(root, sections)

    # shifted traffic with labels, twice: drift and a quality breach, so the policy retrains
    outcome = replay_and_monitor(root)
    assert outcome["rows"] == len(pd.read_csv(root / TRAFFIC))  # the default window holds it
    assert_quality(outcome, expected)
    assert outcome["quality_breached"] and outcome["dataset_drift"]
    second = replay_and_monitor(root)
    assert second["retrain_triggered"], second["policy"]

    request = wait_for_request(root)
    run_id, candidate = request["run_id"], request["evidence"]["candidate"]
    assert candidate != json.loads(driftloop(root, "lineage", "--json").stdout)["model_tag"]

    # the approval's promotion fails at start: another process holds the idle slot's port
    serving = json.loads(driftloop(root, "lineage", "--json").stdout)
    idle_port = idle_slot_port(root, serving["slot"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", idle_port))
        squatter.listen()
        evidence = request["evidence_hash"]
        driftloop(root, "approve", run_id, "--evidence", evidence, "-m", "the labels flipped")
        failed = wait_for_attempt(root, "failed")
    assert failed["stage"] == "start", failed  # the port is taken: it cannot start there
    assert json.loads(driftloop(root, "lineage", "--json").stdout)["bento"] == first

    # promote RUN: the recorded decision, through the same checks, now that the port is free
    promoted = driftloop(root, "promote", run_id, timeout=600).stdout
    assert f"approved by {getpass.getuser()} via cli" in promoted
    lineage = json.loads(driftloop(root, "lineage", "--json").stdout)
    assert lineage["bento"] != first
    assert lineage["model_tag"] == candidate
    assert lineage["lineage"]["data_rev"] == request["evidence"]["data_rev"]
    assert lineage["lineage"]["approver"] == getpass.getuser()
    assert lineage["lineage"]["approval_channel"] == "cli"
    assert lineage["lineage"]["retrain_run"] == run_id
    shown = driftloop(root, "lineage").stdout
    assert candidate.split(":")[0] in shown and getpass.getuser() in shown

    # a second promote of the same run is refused, saying why
    again = driftloop(root, "promote", run_id, check=False)
    assert again.returncode == 2
    assert "already promoted" in again.stderr + again.stdout


@pytest.mark.parametrize("dataset", [patients, wine], ids=lambda f: f.__name__)
def test_regression_and_multiclass_to_their_first_monitor(loop_project, dataset):
    root = loop_project
    sections = dataset(root)
    configure(root, sections)
    bento = start_loop(root, sections)
    outcome = replay_and_monitor(root)
    assert outcome["rows"] == len(pd.read_csv(root / TRAFFIC))
    assert outcome["dataset_drift"]
    assert_quality(outcome, expected_quality(root, sections))
    development_server_leaves_the_loop_alone(root, bento, sections)


def development_server_leaves_the_loop_alone(root: Path, bento: str, sections: dict) -> None:
    """`driftloop serve` answers, but is never recorded as serving nor captured, and keeps off
    the stack's serving ports."""
    import yaml

    slot_port = yaml.safe_load((root / "config/driftloop.yaml").read_text())["serving"][
        "slot_ports"
    ][0]
    refused = driftloop(root, "serve", bento, "--port", str(slot_port), check=False)
    assert refused.returncode == 2 and f"port {slot_port}" in refused.stderr
    before = json.loads(driftloop(root, "lineage", "--json").stdout)
    captured = sorted((root / ".driftloop/capture").rglob("*.parquet"))
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "driftloop"), "serve", bento, "--port", str(port)],
        cwd=root,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        record = pd.read_csv(root / TRAFFIC).drop(columns=[sections["data"]["target"]]).iloc[0]
        answer = wait_for_answer(port, json.loads(record.to_json()))
        assert len(answer["predictions"]) == 1 and answer["bento"] == bento
        time.sleep(2)  # longer than capture.flush_seconds: a capture would have been written
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert json.loads(driftloop(root, "lineage", "--json").stdout) == before
    assert sorted((root / ".driftloop/capture").rglob("*.parquet")) == captured


def wait_for_answer(port: int, record: dict, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": [record]})
            response.raise_for_status()
            return response.json()
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def idle_slot_port(root: Path, slot: str) -> int:
    import yaml

    ports = yaml.safe_load((root / "config/driftloop.yaml").read_text())["serving"]["slot_ports"]
    return ports[1] if slot == "blue" else ports[0]
