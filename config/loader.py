"""Read `config/driftloop.yaml` once and fail fast with the key path, the bad value and the fix."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from config.schema import DriftloopConfig

DEFAULT_PATH = Path("config/driftloop.yaml")
ENV_VAR = "DRIFTLOOP_CONFIG"
STATE_DIR = ".driftloop"


class ConfigError(Exception):
    """A config problem a person must fix; the message names the key path and what to do."""


@dataclass(frozen=True)
class Project:
    """The parsed config plus where it lives: relative paths resolve against `root`."""

    config: DriftloopConfig
    path: Path
    root: Path

    def resolve(self, relative: str | Path) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    @property
    def state_dir(self) -> Path:
        """Runtime state (stores, logs, the DVC remote): never committed."""
        return self.root / STATE_DIR

    @property
    def data_path(self) -> Path:
        return self.resolve(self.config.data.path)

    @cached_property
    def features(self) -> tuple[list[str], list[str]]:
        """(numeric, categorical): from config, or inferred from the data file's columns."""
        data = self.config.data
        if data.numeric is not None and data.categorical is not None:
            return list(data.numeric), list(data.categorical)
        return infer_features(self)


def config_path(explicit: str | Path | None = None) -> Path:
    """--config wins, then $DRIFTLOOP_CONFIG, then config/driftloop.yaml."""
    return Path(explicit or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load_project(explicit: str | Path | None = None) -> Project:
    path = config_path(explicit).resolve()
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found: pass --config PATH or set {ENV_VAR}, "
            f"or run from the project root (default {DEFAULT_PATH})"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        cfg = DriftloopConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    check_estimator(cfg)
    return Project(config=cfg, path=path, root=find_root(path))


def find_root(config_file: Path) -> Path:
    """The project root: the nearest parent holding `.dvc`, `.git` or `pyproject.toml`."""
    for parent in config_file.parents:
        if any((parent / marker).exists() for marker in (".dvc", ".git", "pyproject.toml")):
            return parent
    return Path.cwd()


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key. {_did_you_mean(err['loc'])}")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required key is missing; add it to the file")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            shown = "" if err["loc"] == () else f" (got {err.get('input')!r})"
            lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = DriftloopConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (inspect.isclass(annotation) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return f"{hint}Known keys here: {', '.join(known)}"


def import_estimator(dotted: str) -> type:
    """The estimator class named by `train.estimator`, or a ConfigError saying why not."""
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise ConfigError(
            f"train.estimator: {dotted!r} is not an import path; "
            "write it as module.Class, e.g. sklearn.ensemble.HistGradientBoostingRegressor"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"train.estimator: cannot import module {module_name!r} ({exc}); "
            "install the package or fix the path"
        ) from None
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls) or not hasattr(cls, "fit") or not hasattr(cls, "predict"):
        raise ConfigError(
            f"train.estimator: {dotted!r} is not an estimator class with fit/predict; "
            "name a scikit-learn compatible class"
        )
    return cls


def check_estimator(cfg: DriftloopConfig) -> None:
    """The class exists, suits the task, and accepts every configured hyperparameter."""
    from sklearn.base import is_classifier, is_regressor

    cls = import_estimator(cfg.train.estimator)
    try:
        instance = cls()
    except TypeError as exc:
        raise ConfigError(
            f"train.estimator: {cfg.train.estimator} cannot be built: {exc}"
        ) from None
    task = cfg.data.task
    if task == "regression" and not is_regressor(instance):
        raise ConfigError(
            f"train.estimator: {cfg.train.estimator} is not a regressor but data.task is "
            "'regression'; pick a regressor or change data.task"
        )
    if task != "regression" and not is_classifier(instance):
        raise ConfigError(
            f"train.estimator: {cfg.train.estimator} is not a classifier but data.task is "
            f"{task!r}; pick a classifier or change data.task"
        )
    valid = instance.get_params(deep=False)
    for name in cfg.train.params:
        if name not in valid:
            close = difflib.get_close_matches(name, list(valid), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"train.params.{name}: {cfg.train.estimator} has no hyperparameter {name!r}; "
                f"{hint}see its documentation"
            )


def read_columns(path: Path) -> list[str]:
    """Column names of a csv or parquet file without reading its rows."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    import pandas as pd

    return list(pd.read_csv(path, nrows=0).columns)


def check_columns(project: Project) -> None:
    """Every configured column exists in the training data; otherwise name it and the fix."""
    path = project.data_path
    if not path.is_file():
        raise ConfigError(
            f"data.path: {path} does not exist; run `dvc pull` (or `make setup`) "
            "or point data.path at your dataset"
        )
    columns = set(read_columns(path))
    data = project.config.data
    keyed: list[tuple[str, str | None]] = [
        ("data.target", data.target),
        ("data.id_column", data.id_column),
        ("data.timestamp_column", data.timestamp_column),
    ]
    keyed += [("data.numeric", c) for c in data.numeric or []]
    keyed += [("data.categorical", c) for c in data.categorical or []]
    keyed += [("data.nullable", c) for c in data.nullable]
    for key, column in keyed:
        if column is not None and column not in columns:
            close = difflib.get_close_matches(column, sorted(columns), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{key}: column {column!r} is not in {path.name}; {hint}"
                f"columns are: {', '.join(sorted(columns))}"
            )


def infer_features(project: Project) -> tuple[list[str], list[str]]:
    """Numeric dtypes become numeric features, everything else categorical."""
    import pandas as pd

    check_columns(project)
    data = project.config.data
    path = project.data_path
    sample = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, nrows=1000)
    skip = {data.target, data.id_column, data.timestamp_column, *data.drop}
    numeric, categorical = [], []
    for column in sample.columns:
        if column in skip:
            continue
        is_num = pd.api.types.is_numeric_dtype(sample[column]) and not pd.api.types.is_bool_dtype(
            sample[column]
        )
        (numeric if is_num else categorical).append(column)
    return numeric, categorical
