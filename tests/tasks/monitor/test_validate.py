"""Every bad-input class gets its named verdict, with shares and examples; nothing raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from config.loader import Project
from config.schema import DriftloopConfig
from model.schema import FeatureSchema
from tasks.monitor.validate import VERDICTS, validate_window

NUMERIC = ["temp", "hum"]
CATEGORICAL = ["season"]


def make_project(**monitor) -> Project:
    cfg = DriftloopConfig.model_validate(
        {
            "data": {
                "path": "data/train.csv",
                "target": "bikers",
                "task": "regression",
                "numeric": NUMERIC,
                "categorical": CATEGORICAL,
                "nullable": ["hum"],
                "drop": ["casual"],
            },
            "train": {"estimator": "sklearn.linear_model.LinearRegression"},
            "monitor": {"min_rows": 50, **monitor},
        }
    )
    return Project(config=cfg, path=Path("config/driftloop.yaml"), root=Path("."))


def window(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "temp": rng.normal(15, 5, rows),
            "hum": rng.uniform(0, 1, rows),
            "season": rng.choice(["1", "2", "3", "4"], rows),
            "bikers": rng.poisson(100, rows),
            "casual": rng.poisson(10, rows),
            "prediction": rng.normal(100, 10, rows),
        }
    )


KNOWN = {"season": ["1", "2", "3", "4"]}


def test_clean_window_is_ok():
    verdict = validate_window(window(), make_project(), known_categories=KNOWN)
    assert verdict.verdict == "ok"
    assert verdict.usable
    assert verdict.findings == []
    assert verdict.extra_columns == []  # target, prediction and dropped columns are known


def test_empty_window():
    verdict = validate_window(window().iloc[:0], make_project())
    assert (verdict.verdict, verdict.usable) == ("empty", False)
    no_columns = validate_window(pd.DataFrame(), make_project())
    assert no_columns.verdict == "empty"


def test_too_small_window_is_insufficient_data():
    verdict = validate_window(window(49), make_project())
    assert (verdict.verdict, verdict.usable) == ("insufficient_data", False)
    assert "at least 50" in verdict.summary()
    assert validate_window(window(50), make_project()).usable


def test_missing_column_is_a_schema_mismatch_with_a_rename_hint():
    frame = window().rename(columns={"temp": "temp_c"})
    verdict = validate_window(frame, make_project())
    assert (verdict.verdict, verdict.usable) == ("schema_mismatch", False)
    assert verdict.missing_columns == ["temp"]
    assert verdict.renamed == {"temp": "temp_c"}
    assert "temp_c" in verdict.summary()


def test_extra_columns_are_reported_but_do_not_block():
    verdict = validate_window(window().assign(request_id="r"), make_project())
    assert verdict.usable
    assert verdict.verdict == "ok"
    assert verdict.extra_columns == ["request_id"]
    assert [f.severity for f in verdict.findings] == ["info"]


def test_non_numeric_values_are_wrong_dtype():
    frame = window()
    frame["temp"] = frame["temp"].astype(object)
    frame.loc[:29, "temp"] = "warm"
    verdict = validate_window(frame, make_project())
    assert (verdict.verdict, verdict.usable) == ("wrong_dtype", False)
    finding = verdict.findings[0]
    assert finding.column == "temp"
    assert finding.share == pytest.approx(30 / 300)
    assert finding.examples == ["warm"]


def test_datetime_in_a_numeric_column_is_wrong_dtype():
    frame = window().assign(temp=pd.Timestamp("2024-01-01"))
    assert validate_window(frame, make_project()).verdict == "wrong_dtype"


def test_all_nan_column_blocks_the_window():
    frame = window().assign(temp=np.nan)
    verdict = validate_window(frame, make_project())
    assert (verdict.verdict, verdict.usable) == ("all_nan", False)
    assert verdict.nan_shares["temp"] == 1.0
    # all inf is as useless as all NaN
    assert validate_window(window().assign(temp=np.inf), make_project()).verdict == "all_nan"


def test_nan_share_above_the_limit_is_named_with_shares():
    frame = window()
    frame.loc[:59, "temp"] = np.nan  # 20%
    frame.loc[:5, "season"] = None  # 2%, under the 5% limit
    verdict = validate_window(frame, make_project())
    assert (verdict.verdict, verdict.usable) == ("nan_values", True)
    assert verdict.nan_shares == {"temp": pytest.approx(0.2), "season": pytest.approx(0.02)}
    assert [f.column for f in verdict.findings if f.verdict == "nan_values"] == ["temp"]


def test_nullable_columns_may_be_null():
    frame = window()
    frame.loc[:150, "hum"] = np.nan
    verdict = validate_window(frame, make_project())
    assert verdict.verdict == "ok"
    assert verdict.nan_shares["hum"] == pytest.approx(151 / 300)


def test_nan_limit_is_a_parameter():
    frame = window()
    frame.loc[:59, "temp"] = np.nan
    assert validate_window(frame, make_project(), max_nan_share=0.25).verdict == "ok"


def test_infinite_values_are_named():
    frame = window()
    frame.loc[:2, "temp"] = np.inf
    frame.loc[3, "temp"] = -np.inf
    verdict = validate_window(frame, make_project())
    assert (verdict.verdict, verdict.usable) == ("inf_values", True)
    assert verdict.inf_shares == {"temp": pytest.approx(4 / 300)}


def test_unseen_categories_carry_share_and_examples():
    frame = window()
    frame.loc[:29, "season"] = "5"
    frame.loc[30:32, "season"] = "winter"
    verdict = validate_window(frame, make_project(), known_categories=KNOWN)
    assert (verdict.verdict, verdict.usable) == ("unseen_categories", True)
    unseen = verdict.unseen["season"]
    assert unseen.share == pytest.approx(33 / 300)
    assert unseen.rows == 33
    assert unseen.examples == ["5", "winter"]  # most frequent first


def test_integer_categories_are_compared_as_strings():
    frame = window().assign(season=lambda f: f["season"].astype(int))
    assert validate_window(frame, make_project(), known_categories=KNOWN).verdict == "ok"


def test_feature_schema_brings_the_known_categories():
    schema = FeatureSchema(
        task="regression",
        target="bikers",
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        nullable=["hum"],
        categories={"season": ["1", "2"]},
    )
    verdict = validate_window(window(), schema, min_rows=10)
    assert verdict.verdict == "unseen_categories"
    assert set(verdict.unseen["season"].examples) == {"3", "4"}


def test_the_most_severe_finding_is_the_verdict_and_all_are_listed():
    frame = window()
    frame.loc[:59, "temp"] = np.nan
    frame.loc[60, "temp"] = np.inf
    frame.loc[:9, "season"] = "9"
    verdict = validate_window(frame, make_project(), known_categories=KNOWN)
    assert verdict.verdict == "nan_values"
    assert verdict.verdicts == ["nan_values", "inf_values", "unseen_categories"]
    assert verdict.usable


def test_a_column_with_too_few_values_is_flagged_but_the_window_stays_usable():
    frame = window(300)
    frame.loc[:260, "hum"] = np.nan  # nullable, 39 values left < 50
    verdict = validate_window(frame, make_project())
    assert verdict.usable
    assert verdict.verdict == "insufficient_data"
    assert verdict.findings[0].column == "hum"


@pytest.mark.parametrize("bad", ["empty", "schema", "dtype", "small", "all_nan", "nan", "inf"])
def test_verdicts_are_json_serialisable_and_named(bad):
    frame = window()
    if bad == "empty":
        frame = frame.iloc[:0]
    elif bad == "schema":
        frame = frame.drop(columns="hum")
    elif bad == "dtype":
        frame["hum"] = "x"
    elif bad == "small":
        frame = frame.iloc[:3]
    elif bad == "all_nan":
        frame["season"] = None
    elif bad == "nan":
        frame.loc[:100, "temp"] = np.nan
    elif bad == "inf":
        frame.loc[:1, "temp"] = -np.inf
    verdict = validate_window(frame, make_project())
    assert verdict.verdict in VERDICTS
    again = type(verdict).model_validate_json(verdict.model_dump_json())
    assert again == verdict
