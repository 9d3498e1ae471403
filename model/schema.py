"""The feature contract a trained model carries into serving: columns, types, known categories."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from pydantic import BaseModel


class FeatureSchema(BaseModel):
    task: str
    target: str
    numeric: list[str]
    categorical: list[str]
    nullable: list[str] = []
    categories: dict[str, list[str]] = {}
    classes: list[Any] | None = None

    @property
    def columns(self) -> list[str]:
        return self.numeric + self.categorical

    @classmethod
    def from_training(
        cls,
        frame: pd.DataFrame,
        *,
        task: str,
        target: str,
        numeric: list[str],
        categorical: list[str],
        nullable: list[str],
        classes: list[Any] | None,
    ) -> FeatureSchema:
        categories = {c: sorted(frame[c].dropna().astype(str).unique()) for c in categorical}
        return cls(
            task=task,
            target=target,
            numeric=numeric,
            categorical=categorical,
            nullable=nullable,
            categories=categories,
            classes=classes,
        )


class InputError(ValueError):
    """A request the model cannot answer; the message names the column and the problem."""


def validate_records(records: list[dict[str, Any]], schema: FeatureSchema, max_batch: int) -> None:
    """Reject what would otherwise surface as a 500 deep inside scikit-learn."""
    if not records:
        raise InputError("empty batch: send at least one record")
    if len(records) > max_batch:
        raise InputError(f"batch of {len(records)} records exceeds the limit of {max_batch}")
    expected = set(schema.columns)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"record {i}: expected an object of feature columns")
        missing = [c for c in schema.columns if c not in record]
        if missing:
            raise InputError(f"record {i}: missing column(s) {missing}")
        extra = sorted(set(record) - expected)
        if extra:
            raise InputError(f"record {i}: unexpected column(s) {extra}; expected {schema.columns}")
        for column in schema.columns:
            _check_value(i, column, record[column], schema)


def _check_value(i: int, column: str, value: Any, schema: FeatureSchema) -> None:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if missing:
        if column not in schema.nullable:
            raise InputError(f"record {i}: column {column!r} is null (or NaN) but is not nullable")
        return
    if column in schema.numeric:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(
                f"record {i}: column {column!r} must be a number, got {type(value).__name__} "
                f"{value!r}"
            )
        if math.isinf(value):
            raise InputError(f"record {i}: column {column!r} is infinite")
    elif not isinstance(value, str | int | float | bool):
        raise InputError(
            f"record {i}: column {column!r} must be a string or number (a category), "
            f"got {type(value).__name__}"
        )
