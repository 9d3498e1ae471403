"""What a check of a window says: per-column drift, data quality, model quality and the verdict.

These types are the monitor's record of a run: saved as JSON, published as metrics and
artifacts, and read back by `driftloop` and the retrain policy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr

from tasks.monitor.drift_stats import FrameProfile, Kind
from tasks.monitor.validate import WindowVerdict

CheckVerdict = Literal[
    "no_drift",
    "drift",
    "empty",
    "schema_mismatch",
    "wrong_dtype",
    "insufficient_data",
    "all_nan",
]
Engine = Literal["native", "evidently"]
# held_out: the serving model's own evaluation; reference_data: its training data's predictions
ReferenceSource = Literal["held_out", "reference_data"]


class ColumnDrift(BaseModel):
    column: str
    kind: Kind
    method: str | None = Field(description="Evidently StatTest name; None when not tested")
    score: float | None
    threshold: float | None
    drifted: bool
    status: Literal["tested", "insufficient_data"] = "tested"
    score_is_p_value: bool = False  # p-values drift when low, distances when high
    reference_values: int = 0
    current_values: int = 0

    @classmethod
    def untested(cls, column: str, kind: Kind, ref_n: int, cur_n: int) -> ColumnDrift:
        """Too few usable values on a side: reported, never guessed."""
        return cls(
            column=column,
            kind=kind,
            method=None,
            score=None,
            threshold=None,
            drifted=False,
            status="insufficient_data",
            reference_values=ref_n,
            current_values=cur_n,
        )


class ColumnQuality(BaseModel):
    column: str
    kind: Kind
    missing_share_current: float
    missing_share_reference: float
    mean_current: float | None = None
    mean_reference: float | None = None
    std_current: float | None = None
    std_reference: float | None = None
    unique_current: int | None = None
    unique_reference: int | None = None


class DataQuality(BaseModel):
    rows_current: int
    rows_reference: int
    missing_share_current: float = Field(description="NaN or inf share of all feature cells")
    missing_share_reference: float
    columns: list[ColumnQuality]


class MetricValue(BaseModel):
    name: str
    current: float | None
    reference: float | None = Field(None, description="see QualityResult.reference_source")
    greater_is_better: bool
    note: str | None = None


class QualityResult(BaseModel):
    task: str
    status: Literal["ok", "insufficient_labels"]
    target: str
    prediction_column: str
    rows: int
    labelled_rows: int
    coverage: float
    min_labels: int
    reference_labelled_rows: int | None = None
    reference_source: ReferenceSource | None = None
    primary: str
    metrics: list[MetricValue] = Field(default_factory=list)
    limit: float | None = None
    limit_breached: bool | None = None


class MetricEstimate(BaseModel):
    """One metric estimated without labels, with the band its realised value should lie in."""

    name: str
    value: float
    lower: float
    upper: float
    greater_is_better: bool
    realised: float | None = Field(None, description="on the labelled rows, once they arrive")
    error: float | None = Field(
        None, description="the estimate on the labelled rows of its sample minus the realised value"
    )


class EstimatedQuality(BaseModel):
    """The serving model's quality on the window, estimated from its own outputs: confidence-based
    (classifiers, calibrated probabilities) or direct loss estimation (regression)."""

    method: Literal["cbpe", "dle"]
    primary: str
    confidence: float  # the share of windows whose realised value the band should hold
    rows: int  # rows the estimate used (a uniform sample past estimate.max_rows)
    metrics: list[MetricEstimate] = Field(default_factory=list)
    limit: float | None = None
    limit_breached: bool = False  # the primary estimate past the limit beyond its band
    outside_share: float = Field(
        0.0, description="rows unlike any the estimator learned from: the band extrapolates there"
    )


class WindowChange(BaseModel):
    """This window against the previous usable one: the same engine and thresholds as the
    comparison with the reference, so a sudden change between windows is named on its own."""

    verdict: Literal["no_change", "sudden_change", "no_previous", "insufficient_data"]
    message: str
    previous_run_id: str | None = None
    previous_window: str | None = None
    columns: list[ColumnDrift] = Field(default_factory=list)
    changed_columns: int = 0
    tested_columns: int = 0
    change_share: float = 0.0
    change_share_threshold: float


class CheckResult(BaseModel):
    """One check of a current window against the reference."""

    verdict: CheckVerdict
    message: str
    bad_input: Literal["reference", "current"] | None = None
    validation: WindowVerdict | None = None
    reference_validation: WindowVerdict | None = None
    columns: list[ColumnDrift] = Field(default_factory=list)
    drifted_columns: int = 0
    tested_columns: int = 0
    drift_share: float = 0.0
    drift_share_threshold: float
    dataset_drift: bool = False
    data_quality: DataQuality | None = None
    quality: QualityResult | None = None
    estimated: EstimatedQuality | None = None
    change: WindowChange | None = None
    engine: Engine = "native"
    reference_key: str | None = None
    duration_seconds: float = 0.0
    # the current window's profile, kept for the next window's comparison; never in the JSON
    _current_profile: FrameProfile | None = PrivateAttr(None)

    @property
    def current_profile(self) -> FrameProfile | None:
        return self._current_profile

    def keep_profile(self, profile: FrameProfile) -> CheckResult:
        self._current_profile = profile
        return self

    def __getstate__(self) -> dict:
        """Pickled (a persisted task result) without the profile: it can be large, and only
        the run that made it needs it."""
        state = super().__getstate__()
        private = state.get("__pydantic_private__") or {}
        return {**state, "__pydantic_private__": {**private, "_current_profile": None}}

    @property
    def usable(self) -> bool:
        return self.bad_input is None

    @property
    def window_verdict(self) -> str:
        """The verdict a window is published under: a problem in the traffic (NaN, inf, unseen
        categories) is named even when the checks could still run; otherwise drift or not."""
        if self.bad_input is None and self.validation is not None and self.validation.verdicts:
            return self.validation.verdicts[0]
        return self.verdict

    @property
    def exit_code(self) -> int:
        """0 no drift, 1 drift, 2 bad input (the `driftloop check` contract)."""
        if self.bad_input is not None or self.verdict not in ("drift", "no_drift"):
            return 2
        return 1 if self.dataset_drift else 0
