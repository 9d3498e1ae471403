"""Reading the capture store: a time window of predictions joined with the labels that arrived.

The first label to arrive for an inference id is the one joined (the service stores only the
first, and the reader holds to it when two servers each stored one). A partition directory whose
name is not `dt=YYYY-MM-DD` is skipped with a warning rather than failing the read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from model.capture import LABELS, PREDICTIONS, capture_schema

log = logging.getLogger("driftloop.capture")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
HOUR = re.compile(r"hour=([01]\d|2[0-3])")


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    frame: pd.DataFrame  # features, prediction, probabilities, label (NaN until it arrives), meta
    label_coverage: float

    @property
    def rows(self) -> int:
        return len(self.frame)


def capture_root(project: Project) -> Path:
    return project.resolve(project.config.capture.path)


def read_window(project: Project, start: datetime, end: datetime) -> Window:
    """Predictions with start <= timestamp < end, each with its label if one has arrived."""
    numeric, categorical = project.features
    schemas = capture_schema(numeric, categorical, project.config.data.task)
    predictions = _read(capture_root(project) / PREDICTIONS, schemas[PREDICTIONS], start, end)
    features = (
        pd.DataFrame(
            {
                name: predictions.column("features").combine_chunks().field(name).to_pandas()
                for name in numeric + categorical
            }
        )
        if predictions.num_rows
        else pd.DataFrame(columns=numeric + categorical)
    )
    frame = pd.concat(
        [
            features,
            predictions.select(
                ["inference_id", "timestamp", "bento", "model", "prediction", "probabilities"]
            ).to_pandas(),
        ],
        axis=1,
    )
    labels = _read(capture_root(project) / LABELS, schemas[LABELS], start, None).to_pandas()
    first = labels.sort_values("timestamp", kind="stable").drop_duplicates(
        "inference_id", keep="first"
    )
    frame = frame.merge(
        first[["inference_id", "label"]], on="inference_id", how="left", validate="many_to_one"
    )
    coverage = float(frame["label"].notna().mean()) if len(frame) else 0.0
    return Window(start=start, end=end, frame=frame, label_coverage=coverage)


def _read(root: Path, schema: pa.Schema, start: datetime, end: datetime | None) -> pa.Table:
    """The rows of one capture table in [start, end), pruning partitions by day."""
    if not root.is_dir():
        return schema.empty_table()
    dataset = ds.dataset(
        root,
        schema=schema,
        format="parquet",
        partitioning="hive",
        exclude_invalid_files=True,
        ignore_prefixes=[".", "_"],
    )
    time = ds.field("timestamp")
    condition = time >= pa.scalar(start, type=schema.field("timestamp").type)
    if end is not None:
        condition &= time < pa.scalar(end, type=schema.field("timestamp").type)
    skipped: set[str] = set()
    files = [f for f in dataset.files if _day_in_range(f, root, start, end, skipped)]
    if skipped:
        log.warning(
            "capture: skipped %d director%s under %s not named dt=YYYY-MM-DD/hour=HH, e.g. %s",
            len(skipped),
            "y" if len(skipped) == 1 else "ies",
            root,
            min(skipped),
        )
    if not files:
        return schema.empty_table()
    pruned = ds.dataset(files, schema=schema, format="parquet")
    return pruned.to_table(filter=condition)


def _day_in_range(
    path: str, root: Path, start: datetime, end: datetime | None, skipped: set[str]
) -> bool:
    """Partition pruning on dt=YYYY-MM-DD/hour=HH without listing rows; a file anywhere else
    (a directory whose name does not parse) is left out and that directory added to `skipped`."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:  # a path spelt differently from root: its last three parts
        parts = Path(path).parts[-3:]
    day = _day(parts)
    if day is None:
        skipped.add("/".join(parts[:-1]) or parts[0])
        return False
    if day < start.date():
        return False
    return end is None or day <= (end - timedelta(microseconds=1)).date()


def _day(parts: tuple[str, ...]) -> date | None:
    if len(parts) != 3 or not parts[0].startswith("dt=") or not HOUR.fullmatch(parts[1]):
        return None
    if not DAY.fullmatch(parts[0][3:]):
        return None
    try:
        return date.fromisoformat(parts[0][3:])
    except ValueError:
        return None


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_current(project: Project, start: datetime, end: datetime) -> Window:
    return read_window(project, start, end)
