"""Config errors name the key path and the fix; the CLI exits 2 without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from config.loader import ConfigError, check_columns, load_project
from driftloop.cli import app

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = yaml.safe_load((ROOT / "config" / "driftloop.yaml").read_text())


def write(tmp_path: Path, change) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "driftloop.yaml").read_text())
    change(raw)
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "pyproject.toml").touch()  # marks the project root
    path = tmp_path / "config" / "driftloop.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(tmp_path: Path, change) -> str:
    with pytest.raises(ConfigError) as info:
        load_project(write(tmp_path, change))
    return str(info.value)


def test_default_config_loads():
    project = load_project(ROOT / "config" / "driftloop.yaml")
    assert project.root == ROOT
    assert project.config.primary_metric == "rmse"
    assert project.features[0] == DEFAULT["data"]["numeric"]


def test_unknown_key_suggests_the_right_one(tmp_path):
    def change(raw):
        raw["data"]["targt"] = raw["data"].pop("target")

    msg = error_of(tmp_path, change)
    assert "data.targt: unknown key. Did you mean 'target'?" in msg
    assert "data.target: required key is missing" in msg


def test_wrong_type_names_key_and_value(tmp_path):
    msg = error_of(tmp_path, lambda raw: raw["prepare"].update(test_size="a fifth"))
    assert "prepare.test_size: Input should be a valid number" in msg
    assert "(got 'a fifth')" in msg


def test_out_of_range_value(tmp_path):
    msg = error_of(tmp_path, lambda raw: raw["prepare"].update(test_size=1.5))
    assert "prepare.test_size: Input should be less than 1 (got 1.5)" in msg


def test_bad_task_lists_the_choices(tmp_path):
    msg = error_of(tmp_path, lambda raw: raw["data"].update(task="ranking"))
    assert "data.task: Input should be 'regression', 'binary' or 'multiclass'" in msg


def test_unknown_estimator_module(tmp_path):
    msg = error_of(tmp_path, lambda raw: raw["train"].update(estimator="sklearn.nope.Forest"))
    assert msg.startswith("train.estimator: cannot import module 'sklearn.nope'")


def test_unknown_estimator_class(tmp_path):
    msg = error_of(tmp_path, lambda raw: raw["train"].update(estimator="sklearn.ensemble.Nope"))
    assert msg.startswith("train.estimator: 'sklearn.ensemble.Nope' is not an estimator class")


def test_estimator_must_suit_the_task(tmp_path):
    def change(raw):
        raw["train"].update(estimator="sklearn.linear_model.LogisticRegression", params={})

    msg = error_of(tmp_path, change)
    assert "is not a regressor but data.task is 'regression'" in msg


def test_unknown_hyperparameter_suggests_one(tmp_path):
    msg = error_of(tmp_path, lambda raw: raw["train"]["params"].update(max_iters=10))
    assert msg.startswith("train.params.max_iters: sklearn.ensemble.HistGradientBoostingRegressor")
    assert "did you mean 'max_iter'?" in msg


def test_metric_must_suit_the_task(tmp_path):
    msg = error_of(tmp_path, lambda raw: raw["evaluate"].update(metrics=["roc_auc"], primary=None))
    assert "evaluate.metrics: 'roc_auc' does not apply to task 'regression'" in msg


def as_binary(raw, limit):
    raw["data"]["task"] = "binary"
    raw["train"].update(estimator="sklearn.linear_model.LogisticRegression", params={})
    raw["evaluate"].update(metrics=["roc_auc", "accuracy"], primary="roc_auc")
    raw["gate"]["guard_metrics"] = []
    raw["monitor"]["quality_limit"] = limit


def test_a_quality_limit_outside_the_primary_metrics_range_names_key_value_and_range(tmp_path):
    msg = error_of(tmp_path, lambda raw: as_binary(raw, 60))  # left from the rmse config
    assert "monitor.quality_limit: 60 is outside the range of roc_auc" in msg
    assert "set a value from 0 to 1" in msg
    assert "Higher roc_auc is better: the monitor alerts when roc_auc" in msg
    assert "falls below the limit" in msg


def test_a_quality_limit_within_the_range_is_accepted(tmp_path):
    project = load_project(write(tmp_path, lambda raw: as_binary(raw, 0.7)))
    assert (project.config.primary_metric, project.config.monitor.quality_limit) == ("roc_auc", 0.7)


@pytest.mark.parametrize(
    ("primary", "limit", "expected"),
    [
        ("rmse", -1, "set a value >= 0. Lower rmse is better"),
        ("r2", 1.5, "set a value <= 1. Higher r2 is better"),
    ],
)
def test_regression_limits_are_checked_against_their_metric(tmp_path, primary, limit, expected):
    def change(raw):
        raw["evaluate"]["primary"] = primary
        raw["monitor"]["quality_limit"] = limit

    msg = error_of(tmp_path, change)
    assert f"monitor.quality_limit: {limit:g} is outside the range of {primary}" in msg
    assert expected in msg


def test_the_bundled_regression_limit_stays_valid():
    config = load_project(ROOT / "config" / "driftloop.yaml").config
    assert (config.primary_metric, config.monitor.quality_limit) == ("rmse", 60)


def test_feature_lists_must_come_together(tmp_path):
    msg = error_of(tmp_path, lambda raw: raw["data"].pop("categorical"))
    assert "give both data.numeric and data.categorical" in msg


def test_bad_endpoint_url(tmp_path):
    msg = error_of(tmp_path, lambda raw: raw["endpoints"].update(prometheus="localhost"))
    assert "endpoints.prometheus: must be an http(s) URL with host and port" in msg


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("capture", "path", "gs://bucket/capture", "use a directory or an s3://bucket/prefix URL"),
        ("capture", "path", "s3://", "names no bucket; write s3://BUCKET/PREFIX"),
        ("data", "remote", "https://example.org/dvc", "use a directory or an s3://bucket/prefix"),
    ],
)
def test_a_store_the_loop_cannot_reach_is_refused_at_load(tmp_path, section, key, value, expected):
    msg = error_of(tmp_path, lambda raw: raw[section].update({key: value}))
    assert f"{section}.{key}: {value!r}" in msg and expected in msg


def test_missing_column_names_key_and_nearest_column(tmp_path):
    path = write(tmp_path, lambda raw: raw["data"]["numeric"].append("tmp"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text(
        (ROOT / "data/bikeshare/bikeshare_hourly_2011.csv").read_text()[:5000]
    )
    with pytest.raises(ConfigError) as info:
        check_columns(load_project(path))
    assert str(info.value).startswith(
        "data.numeric: column 'tmp' is not in train.csv; did you mean 'temp'?"
    )


def test_missing_data_file_says_how_to_get_it(tmp_path):
    path = write(tmp_path, lambda raw: None)
    with pytest.raises(ConfigError, match=r"data.path: .* does not exist; run `dvc pull`"):
        check_columns(load_project(path))


def test_features_inferred_when_omitted(tmp_path):
    def change(raw):
        del raw["data"]["numeric"], raw["data"]["categorical"]
        raw["data"].update(target="y", drop=[], timestamp_column=None)

    path = write(tmp_path, change)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("a,b,c,y\n1,x,2.5,3\n2,y,3.5,4\n")
    numeric, categorical = load_project(path).features
    assert (numeric, categorical) == (["a", "c"], ["b"])


@pytest.mark.parametrize(
    "change",
    [
        lambda raw: raw["data"].update(targt="x"),
        lambda raw: raw["train"].update(estimator="nope"),
    ],
)
def test_cli_exits_2_without_traceback(tmp_path, change):
    path = write(tmp_path, change)
    result = CliRunner().invoke(app, ["config", "--config", str(path)])
    assert result.exit_code == 2
    assert "config error:" in result.output
    assert "Traceback" not in result.output


def test_cli_reads_config_from_environment(tmp_path):
    path = write(tmp_path, lambda raw: raw["data"].update(task="ranking"))
    result = CliRunner().invoke(app, ["config"], env={"DRIFTLOOP_CONFIG": str(path)})
    assert result.exit_code == 2
    assert "data.task" in result.output


def test_cli_reports_missing_config_file(tmp_path):
    result = CliRunner().invoke(app, ["config", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "not found: pass --config PATH or set DRIFTLOOP_CONFIG" in result.output
