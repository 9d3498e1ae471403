"""What the monitor's checks read from config: the `monitor` section, with the schema's defaults.

Every check module takes a `CheckSettings`; `CheckSettings.from_project` also rejects a configured
drift method that does not fit its columns, naming the config key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config.loader import ConfigError, Project
from config.schema import MONITOR_DEFAULTS
from tasks.monitor.drift_stats import CATEGORICAL, NUMERIC, Kind, check_method
from tasks.monitor.validate import PREDICTION_COLUMN, PROBA_PREFIX

# Defaults until the config carries them (see `CheckSettings.from_project`).
CAPTURED_PROBABILITIES = "probabilities"  # the capture's list per row, in predict_proba order


@dataclass(frozen=True)
class CheckSettings:
    """Everything the checks read from config; the defaults are `config/schema.py`'s."""

    min_rows: int = MONITOR_DEFAULTS.min_rows
    drift_share: float = MONITOR_DEFAULTS.drift_share
    method: str | None = None  # Evidently StatTest name for every column (None: its default)
    num_method: str | None = None
    cat_method: str | None = None
    per_column_method: dict[str, str] = field(default_factory=dict)
    threshold: float | None = None  # None: the method's own default
    max_nan_share: float = MONITOR_DEFAULTS.max_nan_share
    min_labels: int = MONITOR_DEFAULTS.min_labels
    quality_limit: float | None = None
    prediction_column: str = PREDICTION_COLUMN
    proba_prefix: str = PROBA_PREFIX
    report_sample_rows: int | None = MONITOR_DEFAULTS.report_sample_rows
    workers: int = MONITOR_DEFAULTS.workers

    @classmethod
    def from_project(cls, project: Project, **overrides: Any) -> CheckSettings:
        """The `monitor` section; keys the schema does not define yet keep these defaults."""
        monitor = project.config.monitor
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            value = getattr(monitor, name, None)
            if value is not None:
                values[name] = dict(value) if isinstance(value, dict) else value
        values.update(overrides)
        settings = cls(**values)
        numeric, categorical = project.features
        settings.check_methods(
            dict.fromkeys(numeric, NUMERIC) | dict.fromkeys(categorical, CATEGORICAL)
        )
        return settings

    def method_for(self, column: str, kind: Kind) -> str | None:
        """Per-column, then per-kind, then global: Evidently's precedence."""
        typed = self.num_method if kind == NUMERIC else self.cat_method
        return self.per_column_method.get(column, typed or self.method)

    def check_methods(self, kinds: dict[str, Kind]) -> None:
        """Raise ConfigError naming the key when a configured method does not fit its columns."""
        named: list[tuple[str, str | None, Kind]] = []
        for kind, typed in ((NUMERIC, self.num_method), (CATEGORICAL, self.cat_method)):
            if kind in kinds.values():
                key = f"monitor.{kind[:3]}_method" if typed else "monitor.method"
                named.append((key, typed or self.method, kind))
        for column, method in self.per_column_method.items():
            if column in kinds:
                named.append((f"monitor.per_column_method.{column}", method, kinds[column]))
        for key, method, kind in named:
            if method is None:
                continue
            try:
                check_method(method, kind)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
