"""Request validation: each bad input names its record and column instead of a 500."""

from __future__ import annotations

import pytest

from model.schema import FeatureSchema, InputError, validate_records

SCHEMA = FeatureSchema(
    task="regression",
    target="y",
    numeric=["temp", "hr"],
    categorical=["season"],
    nullable=["hr"],
)
GOOD = {"temp": 0.3, "hr": 8, "season": "winter"}


def test_good_records_pass():
    validate_records([GOOD, {**GOOD, "hr": None, "season": 2}], SCHEMA, max_batch=10)


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
        validate_records(records, SCHEMA, max_batch=10)
    assert message in str(info.value)
