"""The real `dvc repro` pipeline in a fresh clone with a local remote."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support import copy_project, driftloop, edit_config, sh

pytestmark = pytest.mark.integration


def test_fresh_clone_trains_and_reruns_only_what_changed(tmp_path):
    root = copy_project(tmp_path)
    first = driftloop(root, "data")
    assert "data/train.csv: created" in first.stdout  # nothing pulled: the remote was empty
    recorded = yaml.safe_load((root / "data/train.csv.dvc").read_text())["outs"][0]["md5"]
    assert sh(["git", "status", "--porcelain", "data/train.csv.dvc"], root).stdout == ""

    out = sh(["dvc", "repro"], root).stdout
    # a clone has no cached outputs: prepare and train must run (evaluate may be up to date when
    # the retrained model is byte-identical to the one dvc.lock records: training is seeded)
    assert "Running stage 'prepare'" in out and "Running stage 'train'" in out
    assert "Running stage 'estimate'" in out  # its out is fitted for the model just trained
    assert "estimate: dle for rmse, mae" in out and "r2 not estimated" in out
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], root).stdout
    metrics = json.loads((root / "artifacts/metrics.json").read_text())
    assert metrics["primary"] == "rmse" and metrics["rmse"] > 0
    meta = json.loads((root / "artifacts/model/meta.json").read_text())
    head = sh(["git", "rev-parse", "HEAD"], root).stdout.strip()
    assert meta["lineage"]["data_rev"] == recorded
    assert meta["lineage"]["git_commit"] == head
    assert meta["lineage"]["git_dirty"] is False and meta["lineage"]["data_dirty"] is False

    again = sh(["dvc", "repro"], root).stdout
    assert "Running stage" not in again

    edit_config(root, lambda raw: raw["train"]["params"].update(max_iter=50))
    changed = sh(["dvc", "repro"], root).stdout
    assert "Running stage 'prepare'" not in changed
    assert "Running stage 'train'" in changed and "Running stage 'evaluate'" in changed
    assert "Running stage 'estimate'" in changed

    edit_config(root, lambda raw: raw["estimate"].update(confidence=0.8))
    only_estimate = sh(["dvc", "repro"], root).stdout
    assert "Running stage 'estimate'" in only_estimate
    assert "Running stage 'train'" not in only_estimate


def test_data_is_pulled_back_from_the_remote(tmp_path):
    root = copy_project(tmp_path)
    driftloop(root, "data")
    (root / "data/train.csv").unlink()
    sh(["rm", "-rf", ".dvc/cache"], root)
    sh(["dvc", "pull", "data/train.csv.dvc"], root)
    assert (root / "data/train.csv").is_file()
    assert "data/train.csv: present" in driftloop(root, "data").stdout


def test_stage_with_bad_config_exits_2_with_the_key(tmp_path):
    root = copy_project(tmp_path)
    driftloop(root, "data")
    edit_config(root, lambda raw: raw["data"]["numeric"].append("tmp"), commit=False)
    done = sh(["python", "-m", "model.prepare"], root, check=False)
    assert done.returncode == 2
    assert "data.numeric: column 'tmp' is not in train.csv; did you mean 'temp'?" in done.stderr
    assert "Traceback" not in done.stderr
