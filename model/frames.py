"""Reading tables and shaping them into the feature frame every stage and the service agree on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_table(path: Path) -> pd.DataFrame:
    """A csv or parquet file as a DataFrame; the suffix decides."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def write_table(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def feature_frame(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Features in a fixed order: numeric as float, categorical as string (NaN kept as NaN).

    Categories are strings everywhere so `1` from a csv and `"1"` from a JSON request are the
    same category.
    """
    out = pd.DataFrame(index=frame.index)
    for column in numeric:
        out[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in categorical:
        values = frame[column]
        out[column] = values.where(values.isna(), values.astype(str)).astype(object)
    return out
