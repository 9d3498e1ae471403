"""`driftloop check REFERENCE CURRENT`: a verdict table, --json, --report; exit 0, 1 or 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from driftloop.check_cmd import check

app = typer.Typer()
app.command("check")(check)


@app.callback()
def _root() -> None:
    """Keep `check` a subcommand, as in the real app."""


runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    config = {
        "data": {
            "path": "train.csv",
            "target": "y",
            "task": "regression",
            "numeric": ["a", "b", "c"],
            "categorical": ["kind"],
        },
        "train": {"estimator": "sklearn.linear_model.LinearRegression"},
        "evaluate": {"metrics": ["rmse", "mae"]},
        "monitor": {"min_rows": 100, "drift_share": 0.5},
    }
    (tmp_path / "driftloop.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(0)

    def frame(rows: int, shift: float) -> pd.DataFrame:
        out = pd.DataFrame(
            {
                "a": rng.normal(shift, 1, rows),
                "b": rng.exponential(1, rows) + shift,
                "c": rng.uniform(0, 1, rows),
                "kind": rng.choice(["x", "y", "z"], rows, p=[0.6, 0.3, 0.1]),
            }
        )
        out["y"] = 2 * out["a"] + rng.normal(size=rows)
        out["prediction"] = 2 * out["a"]
        return out

    frame(3000, 0).to_csv(tmp_path / "reference.csv", index=False)
    frame(1500, 0).to_parquet(tmp_path / "same.parquet", index=False)
    frame(1500, 1.0).to_csv(tmp_path / "shifted.csv", index=False)
    frame(1500, 0).drop(columns="b").to_csv(tmp_path / "no_b.csv", index=False)
    frame(20, 0).to_csv(tmp_path / "tiny.csv", index=False)
    return {p.stem: p for p in tmp_path.iterdir()}


def run(files, *args: str):
    return runner.invoke(app, ["check", *args, "--config", str(files["driftloop"])])


def test_no_drift_exits_0_with_a_verdict_table(files):
    result = run(files, str(files["reference"]), str(files["same"]))
    assert result.exit_code == 0, result.output
    assert "drift per column" in result.stdout
    assert "wasserstein" in result.stdout
    assert "no_drift" in result.stdout
    assert "rmse" in result.stdout  # model quality on the labelled rows


def test_drift_exits_1(files):
    result = run(files, str(files["reference"]), str(files["shifted"]))
    assert result.exit_code == 1, result.output
    assert "drift:" in result.stdout


def test_json_is_the_full_result(files):
    result = run(files, str(files["reference"]), str(files["shifted"]), "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["verdict"] == "drift"
    assert payload["dataset_drift"] is True
    columns = {c["column"]: c for c in payload["columns"]}
    assert columns["a"]["drifted"] and columns["a"]["method"] == "wasserstein"
    assert not columns["c"]["drifted"]
    assert payload["quality"]["labelled_rows"] == 1500


@pytest.mark.parametrize(
    ("current", "verdict"), [("no_b", "schema_mismatch"), ("tiny", "insufficient_data")]
)
def test_bad_input_exits_2_with_its_name(files, current, verdict):
    result = run(files, str(files["reference"]), str(files[current]), "--json")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert (payload["verdict"], payload["bad_input"]) == (verdict, "current")
    plain = run(files, str(files["reference"]), str(files[current]))
    assert plain.exit_code == 2
    assert verdict in plain.stdout
    assert "Traceback" not in plain.output


def test_a_missing_or_unreadable_file_exits_2(files, tmp_path):
    missing = run(files, str(files["reference"]), str(tmp_path / "nope.csv"), "--json")
    assert missing.exit_code == 2
    assert json.loads(missing.stdout)["verdict"] == "unreadable"
    assert "does not exist" in missing.stderr
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    unreadable = run(files, str(files["reference"]), str(broken))
    assert unreadable.exit_code == 2
    assert "cannot be read" in unreadable.stderr


def test_report_writes_evidentlys_html(files, tmp_path):
    target = tmp_path / "out" / "report.html"
    result = run(files, str(files["reference"]), str(files["shifted"]), "--report", str(target))
    assert result.exit_code == 1
    assert target.is_file()
    assert "Dataset Drift" in target.read_text()
    assert str(target) in result.stderr


def test_a_config_error_exits_2(files, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {}\n")
    result = runner.invoke(
        app, ["check", str(files["reference"]), str(files["same"]), "--config", str(bad)]
    )
    assert result.exit_code == 2
    assert "config error" in result.stderr
