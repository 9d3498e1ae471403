"""DVC stage `prepare`: the training data split into train and test sets, features typed."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from config.loader import ConfigError, Project, check_columns
from model import artifacts
from model.frames import read_table, write_table
from model.stage import run_stage


def prepare(project: Project, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    data, split = project.config.data, project.config.prepare
    frame = frame.dropna(subset=[data.target])
    if len(frame) < 10:
        raise ConfigError(
            f"data.path: {len(frame)} labelled rows in {data.path}; at least 10 are needed"
        )
    stratify = None
    if data.task != "regression" and split.stratify:
        stratify = frame[data.target]
    train, test = train_test_split(
        frame, test_size=split.test_size, random_state=split.seed, stratify=stratify
    )
    return train.reset_index(drop=True), test.reset_index(drop=True)


def main(project: Project) -> None:
    check_columns(project)
    train, test = prepare(project, read_table(project.data_path))
    write_table(train, project.resolve(artifacts.PREPARED_TRAIN))
    write_table(test, project.resolve(artifacts.PREPARED_TEST))
    numeric, categorical = project.features
    print(f"prepare: {len(train)} train rows, {len(test)} test rows")
    print(f"features: numeric={numeric} categorical={categorical}")


if __name__ == "__main__":
    run_stage(main)
