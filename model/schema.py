"""The feature contract a trained model carries into serving: columns, types, known categories."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
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


MAX_ID_CHARS = 256  # an inference id
MAX_TEXT_CHARS = 1024  # a category or a class label


def _short(value: Any) -> str:
    """A value for an error message, cut so a hostile one cannot fill the answer."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def as_finite_float(value: Any) -> float | None:
    """A JSON number as a finite float64; None for anything else (bool, NaN, inf, a number too
    large for a float, a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def validate_ids(ids: list[Any] | None, n: int) -> list[str] | None:
    """The caller's inference ids: one non-empty string of at most MAX_ID_CHARS per record."""
    if ids is None:
        return None
    if len(ids) != n:
        raise InputError(f"ids has {len(ids)} entries for {n} records")
    for i, value in enumerate(ids):
        _check_id(f"ids[{i}]", value)
    return list(ids)


def _check_id(field: str, value: Any) -> None:
    if not isinstance(value, str):
        raise InputError(f"{field}: an inference id must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_ID_CHARS:
        raise InputError(f"{field}: an inference id has 1 to {MAX_ID_CHARS} characters")


def validate_labels(
    labels: list[Any], schema: FeatureSchema, max_batch: int
) -> list[dict[str, Any]]:
    """Labels as stored: `{inference_id, label}` with a finite float (regression) or the string
    form of one of the model's classes. The message names `labels[i]` and the field."""
    if len(labels) > max_batch:
        raise InputError(f"batch of {len(labels)} labels exceeds the limit of {max_batch}")
    return [_label(i, item, schema) for i, item in enumerate(labels)]


def _label(i: int, item: Any, schema: FeatureSchema) -> dict[str, Any]:
    if not isinstance(item, dict) or "inference_id" not in item or "label" not in item:
        raise InputError(f"labels[{i}]: expected an object with inference_id and label")
    extra = sorted(set(item) - {"inference_id", "label"})
    if extra:
        raise InputError(f"labels[{i}]: unexpected field(s) {[_short(k) for k in extra[:5]]}")
    _check_id(f"labels[{i}].inference_id", item["inference_id"])
    label = item["label"]
    if schema.task == "regression":
        number = as_finite_float(label)
        if number is None:
            raise InputError(
                f"labels[{i}].label: must be a number, finite and within float64, for a "
                f"regression model; got {type(label).__name__} {_short(label)}"
            )
        return {"inference_id": item["inference_id"], "label": number}
    return {"inference_id": item["inference_id"], "label": _class_of(i, label, schema.classes)}


def _class_of(i: int, label: Any, classes: list[Any] | None) -> str:
    """The stored (string) form of the class `label` names, by value or by its string form."""
    field = f"labels[{i}].label"
    if label is None or isinstance(label, dict | list):
        raise InputError(f"{field}: must be a class of the model, got {_short(label)}")
    if isinstance(label, str) and len(label) > MAX_TEXT_CHARS:
        raise InputError(f"{field}: a class label has at most {MAX_TEXT_CHARS} characters")
    if classes is None:  # a model stored without its classes: any short string or number
        if isinstance(label, float) and not math.isfinite(label):
            raise InputError(f"{field}: must be a class of the model, got {_short(label)}")
        return str(label)
    for known in classes:
        same_kind = isinstance(label, bool) == isinstance(known, bool)
        if (same_kind and not isinstance(label, str) and label == known) or (
            isinstance(label, str) and label == str(known)
        ):
            return str(known)
    raise InputError(
        f"{field}: {_short(label)} is not a class of the model; classes: "
        f"{[_short(c) for c in classes[:20]]}"
    )


def records_frame(
    records: list[dict[str, Any]], schema: FeatureSchema, max_batch: int
) -> pd.DataFrame:
    """The feature frame of a request's JSON records, validated and built column by column in one
    pass over the values: numbers as float64 (null and NaN as NaN), categories as strings.

    Raises InputError naming the first bad record (then its first bad column, in schema order):
    what would otherwise surface as a 500 deep inside scikit-learn. A category's string depends
    on its own value only (`1` is "1", `1.5` is "1.5"), never on the other records of the batch,
    so a record gets the same answer alone or batched with others.
    """
    if not records:
        raise InputError("empty batch: send at least one record")
    if len(records) > max_batch:
        raise InputError(f"batch of {len(records)} records exceeds the limit of {max_batch}")
    shape_error = _first_misshapen(records, schema)
    usable = records if shape_error is None else records[: shape_error[0]]
    columns: dict[str, Any] = {}
    value_error: tuple[int, int, str] | None = None  # (record, column order, message)
    for order, column in enumerate(schema.columns):
        numeric = column in schema.numeric
        plain = _plain_column([record[column] for record in usable], numeric)
        if plain is not None:
            columns[column] = plain
            continue
        convert = _number if numeric else _category
        nullable = column in schema.nullable
        values = []
        for i, record in enumerate(usable):
            try:
                values.append(convert(i, column, record[column], nullable))
            except InputError as exc:
                if value_error is None or (i, order) < value_error[:2]:
                    value_error = (i, order, str(exc))
                break
        columns[column] = values
    if value_error is not None:
        raise InputError(value_error[2])
    if shape_error is not None:
        raise InputError(shape_error[1])
    return pd.DataFrame(
        {c: np.asarray(columns[c], dtype="float64") for c in schema.numeric}
        | {c: np.asarray(columns[c], dtype=object) for c in schema.categorical},
        columns=[*schema.numeric, *schema.categorical],
    )


def _plain_column(values: list[Any], numeric: bool) -> np.ndarray | None:
    """The column converted at once when every value is plainly valid (finite numbers; strings
    and integers short enough for a category), the values a well-behaved caller sends; None
    sends the column through the value-by-value checks, which name what is wrong."""
    if not values:
        return None
    kinds = set(map(type, values))
    if numeric:
        if not kinds <= {float, int}:  # bool is its own type: refused value by value
            return None
        try:
            array = np.array(values, dtype="float64")
        except OverflowError:  # an integer beyond float64
            return None
        return array if np.isfinite(array).all() else None  # NaN: nullable or not, checked below
    if not kinds <= {str, int}:
        return None
    texts = [str(value) for value in values]
    return np.array(texts, dtype=object) if max(map(len, texts)) <= MAX_TEXT_CHARS else None


def _first_misshapen(records: list[Any], schema: FeatureSchema) -> tuple[int, str] | None:
    """The first record that is not an object of exactly the schema's columns, and why."""
    expected = set(schema.columns)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            return i, f"record {i}: expected an object of feature columns"
        if record.keys() == expected:
            continue
        missing = [c for c in schema.columns if c not in record]
        if missing:
            return i, f"record {i}: missing column(s) {missing}"
        extra = sorted(set(record) - expected)
        shown = [k if len(k) <= 40 else _short(k) for k in extra[:10]]
        return i, f"record {i}: unexpected column(s) {shown}; expected {schema.columns}"
    return None


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(i: int, column: str, value: Any, nullable: bool) -> float:
    if _is_missing(value):
        return _null(i, column, nullable, math.nan)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(
            f"record {i}: column {column!r} must be a number, got {type(value).__name__} "
            f"{_short(value)}"
        )
    number = as_finite_float(value)
    if number is None:
        what = "infinite" if isinstance(value, float) else "too large for a float64"
        raise InputError(f"record {i}: column {column!r} is {what}")
    return number


def _category(i: int, column: str, value: Any, nullable: bool) -> Any:
    if _is_missing(value):
        return _null(i, column, nullable, math.nan)
    if not isinstance(value, str | int | float | bool):
        raise InputError(
            f"record {i}: column {column!r} must be a string or number (a category), "
            f"got {type(value).__name__}"
        )
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(
            f"record {i}: column {column!r} is {len(text)} characters long; a category "
            f"has at most {MAX_TEXT_CHARS}"
        )
    return text


def _null(i: int, column: str, nullable: bool, missing: float) -> float:
    if not nullable:
        raise InputError(f"record {i}: column {column!r} is null (or NaN) but is not nullable")
    return missing
