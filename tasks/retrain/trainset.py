"""The retrain's training set: the serving model's data plus the labelled recent window (or the
window alone), with the window's latest part held out for the gate; versioned with DVC + git."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from config.loader import Project
from model.frames import write_table
from model.lineage import file_md5
from tasks.capture import capture_store, read_window
from tasks.commands import CommandError, run
from tasks.data import read_data_rev, track
from tasks.release.releases import Release


@dataclass(frozen=True)
class TrainingSet:
    rows: int
    reference_rows: int
    window_rows: int
    holdout: pd.DataFrame  # labelled recent rows the candidate never saw: the gate's ground
    window: str
    data_rev: str = ""
    git_commit: str = ""


class NotEnoughLabels(CommandError):
    """The recent window has too few labelled rows to retrain on."""


def build_training_set(project: Project, serving: Release) -> tuple[pd.DataFrame, TrainingSet]:
    cfg = project.config
    end = newest_capture(project)
    if end is None:
        raise NotEnoughLabels("nothing has been captured yet: no recent window to retrain on")
    start = end - timedelta(days=cfg.retrain.window_days)
    window = read_window(project, start, end + timedelta(microseconds=1))
    labelled = window.frame[window.frame["label"].notna()].sort_values("timestamp")
    if len(labelled) < cfg.retrain.min_labelled_rows:
        raise NotEnoughLabels(
            f"{len(labelled)} labelled rows between {start:%Y-%m-%d} and {end:%Y-%m-%d}; "
            f"retrain.min_labelled_rows is {cfg.retrain.min_labelled_rows}"
        )
    rows = _as_training_rows(project, labelled)
    cut = int(len(rows) * (1 - cfg.retrain.holdout_share))
    fresh, holdout = rows.iloc[:cut], rows.iloc[cut:]
    reference = pd.DataFrame(columns=rows.columns)
    if cfg.retrain.rule == "reference_plus_window":
        reference = read_data_rev(
            project, serving.labels["data_rev"], serving.labels.get("git_commit")
        )
    combined = pd.concat([reference, fresh], ignore_index=True)
    info = TrainingSet(
        rows=len(combined),
        reference_rows=len(reference),
        window_rows=len(fresh),
        holdout=holdout.reset_index(drop=True),
        window=f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC",
    )
    return combined, info


def _as_training_rows(project: Project, labelled: pd.DataFrame) -> pd.DataFrame:
    data = project.config.data
    numeric, categorical = project.features
    out = labelled[numeric + categorical].copy()
    out[data.target] = labelled["label"].to_numpy()
    if data.timestamp_column:
        out[data.timestamp_column] = (
            labelled["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy()
        )
    return out.reset_index(drop=True)


def newest_capture(project: Project):
    """The newest captured event time, from the capture store (a directory or S3)."""
    table_store = capture_store(project).sub("predictions")
    info = table_store.fs.get_file_info(table_store.root)
    if info.type != pafs.FileType.Directory:
        return None
    table = ds.dataset(
        table_store.root,
        filesystem=table_store.fs,
        format="parquet",
        partitioning="hive",
        ignore_prefixes=[".", "_"],
    ).to_table(columns=["timestamp"])
    if table.num_rows == 0:
        return None
    return pd.Timestamp(max(table.column("timestamp").to_pylist())).to_pydatetime()


def version_training_set(project: Project, frame: pd.DataFrame, run_id: str) -> tuple[str, str]:
    """Write data.path, `dvc add` + `dvc push`, and commit its .dvc file; (md5, commit)."""

    write_table(frame, project.data_path)
    track(project)
    md5 = file_md5(project.data_path)
    commit = git_commit(
        project, [project.config.data.path + ".dvc"], f"retrain {run_id}: training data {md5[:12]}"
    )
    return md5, commit


def git_commit(project: Project, paths: list[str], message: str) -> str:
    """Commit `paths` (only those) so a data rev or lock is reproducible; returns HEAD."""
    root = project.root
    run(["git", "add", "--", *paths], root, hint="is the project a git repository?")
    staged = run(["git", "diff", "--cached", "--name-only", "--", *paths], root, hint="")
    if staged.strip():
        run(
            ["git", "commit", "-q", "-m", message, "--", *paths],
            root,
            hint="set a git identity (`make setup` does) and retry",
        )
    return run(["git", "rev-parse", "HEAD"], root, hint="").strip()
