"""A user's own dataset and estimator, plugged in by editing config/ alone, trained and served.

Each dataset ships inside scikit-learn (no download). The test writes it where a user would put
their file, edits only config/driftloop.yaml, then runs the same commands a user runs.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from tests.support import BIN, copy_project, driftloop, edit_config, free_port, tool_env

pytestmark = pytest.mark.integration


def diabetes(root):
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame["sex"] = frame["sex"].map({1.0: "f", 2.0: "m"})
    frame.to_csv(root / "data/patients.csv", index=False)
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
        "evaluate": {"metrics": ["mae", "rmse"], "primary": "mae"},
        "gate": {"guard_metrics": ["rmse"]},
    }


def breast_cancer(root):
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.iloc[:, :10].copy()
    frame["diagnosis"] = np.where(data.target == 1, "benign", "malignant")
    frame.to_csv(root / "data/tumours.csv", index=False)
    return {  # features inferred from the file
        "project": {"name": "tumours"},
        "data": {"path": "data/tumours.csv", "target": "diagnosis", "task": "binary"},
        "train": {
            "estimator": "sklearn.linear_model.LogisticRegression",
            "params": {"C": 1.0, "max_iter": 500},
        },
        "evaluate": {},
        "gate": {"guard_metrics": []},
    }


def wine(root):
    frame = load_wine(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    frame.to_parquet(root / "data/wine.parquet", index=False)
    return {
        "project": {"name": "wine"},
        "data": {"path": "data/wine.parquet", "target": "target", "task": "multiclass"},
        "train": {
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": {"n_estimators": 50},
        },
        "evaluate": {"primary": "accuracy"},
        "gate": {"guard_metrics": ["f1_macro"]},
    }


@pytest.mark.parametrize("dataset", [diabetes, breast_cancer, wine], ids=lambda f: f.__name__)
def test_own_dataset_by_config_alone(tmp_path, dataset):
    root = copy_project(tmp_path)
    sections = dataset(root)

    def change(raw):
        raw.update({k: v for k, v in sections.items() if k != "gate"})
        raw["gate"].update(sections["gate"])
        raw["serving"]["slot_ports"] = [free_port(), free_port()]

    edit_config(root, change)
    driftloop(root, "config")
    assert "created" not in driftloop(root, "data").stdout  # the user's file, now DVC-tracked
    assert (root / (sections["data"]["path"] + ".dvc")).is_file()
    trained = driftloop(root, "train").stdout
    assert "train" in trained
    built = driftloop(root, "build").stdout
    bento = re.search(r"built (\S+) serving model", built).group(1)
    assert bento.startswith(sections["project"]["name"] + ":")

    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "driftloop"), "serve", bento, "--port", str(port)],
        cwd=root,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        record = first_record(root, sections)
        answer = wait_for_answer(port, record)
        assert len(answer["predictions"]) == 1
        if sections["data"]["task"] == "regression":
            assert isinstance(answer["predictions"][0], float)
        else:
            assert answer["predictions"][0] in answer["classes"]
            assert sum(answer["probabilities"][0]) == pytest.approx(1.0)
        lineage = driftloop(root, "lineage", "--json").stdout
        assert bento in lineage
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert "nothing is serving" in driftloop(root, "lineage", check=False).stdout


def first_record(root, sections):
    from config.loader import load_project
    from tasks.traffic import sample_records

    project = load_project(root / "config/driftloop.yaml")
    return sample_records(project, 1).records[0]


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
