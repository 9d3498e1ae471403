"""Request validation: each bad input names its record and column instead of a 500."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.frames import feature_frame
from model.schema import FeatureSchema, InputError, records_frame

SCHEMA = FeatureSchema(
    task="regression",
    target="y",
    numeric=["temp", "hr"],
    categorical=["season"],
    nullable=["hr"],
)
GOOD = {"temp": 0.3, "hr": 8, "season": "winter"}


def test_good_records_pass():
    records_frame([GOOD, {**GOOD, "hr": None, "season": 2}], SCHEMA, max_batch=10)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "empty batch"),
        ([{"temp": 0.3, "hr": 8}], "record 0: missing column(s) ['season']"),
        ([GOOD, {**GOOD, "wind": 1}], "record 1: unexpected column(s) ['wind']"),
        ([{**GOOD, "temp": "hot"}], "record 0: column 'temp' must be a number, got str 'hot'"),
        ([{**GOOD, "temp": True}], "record 0: column 'temp' must be a number"),
        ([{**GOOD, "temp": None}], "record 0: column 'temp' is null (or NaN) but is not nullable"),
        ([{**GOOD, "temp": float("nan")}], "column 'temp' is null (or NaN)"),
        ([{**GOOD, "temp": float("inf")}], "record 0: column 'temp' is infinite"),
        ([{**GOOD, "season": ["a"]}], "column 'season' must be a string or number"),
        ([GOOD] * 11, "batch of 11 records exceeds the limit of 10"),
    ],
)
def test_bad_records_are_named(records, message):
    with pytest.raises(InputError) as info:
        records_frame(records, SCHEMA, max_batch=10)
    assert message in str(info.value)


def test_the_frame_is_built_from_the_records_with_written_types():
    frame = records_frame(
        [GOOD, {"temp": 1, "hr": None, "season": 2}, {"temp": -0.5, "hr": 3, "season": True}],
        SCHEMA,
        max_batch=10,
    )
    assert list(frame.columns) == ["temp", "hr", "season"]
    assert [str(t) for t in frame.dtypes] == ["float64", "float64", "object"]
    assert frame["temp"].tolist() == [0.3, 1.0, -0.5]
    assert frame["hr"].tolist()[0] == 8.0 and math.isnan(frame["hr"].tolist()[1])
    assert frame["season"].tolist() == ["winter", "2", "True"]


def test_a_category_is_the_same_string_alone_or_beside_a_null():
    nullable = SCHEMA.model_copy(update={"nullable": ["hr", "season"]})
    alone = records_frame([{**GOOD, "season": 1}], nullable, max_batch=10)
    beside = records_frame([{**GOOD, "season": 1}, {**GOOD, "season": None}], nullable, 10)
    assert alone["season"].tolist() == ["1"] and beside["season"].tolist()[0] == "1"
    assert math.isnan(beside["season"].tolist()[1])


@pytest.mark.parametrize(
    ("records", "message"),
    [
        # the first bad record wins, whichever column is bad
        ([{**GOOD, "season": ["a"]}, {**GOOD, "temp": "hot"}], "record 0: column 'season'"),
        # in one record, the first bad column in schema order wins
        ([GOOD, {**GOOD, "season": ["a"], "temp": "hot"}], "record 1: column 'temp' must be"),
        # a bad value before a misshapen record is named first, and the other way round
        ([{**GOOD, "temp": "hot"}, {"temp": 1}], "record 0: column 'temp' must be a number"),
        ([{"temp": 1}, {**GOOD, "temp": "hot"}], "record 0: missing column(s) ['hr', 'season']"),
        ([GOOD, "not an object"], "record 1: expected an object of feature columns"),
    ],
)
def test_the_first_problem_is_named_as_a_reader_finds_it(records, message):
    with pytest.raises(InputError) as info:
        records_frame(records, SCHEMA, max_batch=10)
    assert message in str(info.value)


numbers = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32)
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(numbers, st.one_of(st.none(), numbers), st.text(max_size=8)),
        min_size=1,
        max_size=20,
    )
)
def test_the_frame_equals_the_training_path_on_the_same_records(rows):
    """The training path (`feature_frame` over a pandas frame) is the oracle for numbers, nulls
    and string categories: both give the model the same values."""
    records = [{"temp": t, "hr": h, "season": s} for t, h, s in rows]
    served = records_frame(records, SCHEMA, max_batch=100)
    trained = feature_frame(pd.DataFrame.from_records(records), SCHEMA.numeric, SCHEMA.categorical)
    pd.testing.assert_frame_equal(served, trained, check_dtype=True)
