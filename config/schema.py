"""The typed shape of `config/driftloop.yaml`: every number, column, path and URL the loop uses.

Models are strict (`extra="forbid"`) so a misspelt key is an error, not a silently ignored
setting. Cross-field rules that need no I/O live here; checks against the data file and the
estimator class live in `config.loader`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

TaskType = Literal["regression", "binary", "multiclass"]

# metric name -> (tasks it applies to, greater is better)
METRICS: dict[str, tuple[frozenset[str], bool]] = {
    "rmse": (frozenset({"regression"}), False),
    "mae": (frozenset({"regression"}), False),
    "r2": (frozenset({"regression"}), True),
    "accuracy": (frozenset({"binary", "multiclass"}), True),
    "f1": (frozenset({"binary"}), True),
    "roc_auc": (frozenset({"binary"}), True),
    "f1_macro": (frozenset({"multiclass"}), True),
    "log_loss": (frozenset({"binary", "multiclass"}), False),
}
# metric name -> (lowest, highest) value it can take; None: unbounded on that side
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "rmse": (0, None),
    "mae": (0, None),
    "r2": (None, 1),
    "accuracy": (0, 1),
    "f1": (0, 1),
    "roc_auc": (0, 1),
    "f1_macro": (0, 1),
    "log_loss": (0, None),
}
DEFAULT_METRICS: dict[str, list[str]] = {
    "regression": ["rmse", "mae", "r2"],
    "binary": ["roc_auc", "accuracy", "f1", "log_loss"],
    "multiclass": ["f1_macro", "accuracy", "log_loss"],
}


def _one_line(value: str) -> str:
    """Names and paths end up in the stack's config files (supervisord.conf, nginx.conf), one
    setting a line: a newline there would start a setting, or a section, of its own."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not hold a newline, carriage return or other control character")
    return value


OneLine = Annotated[str, AfterValidator(_one_line)]


def store_location(value: str) -> str:
    """A store the loop can reach: a directory, or s3://BUCKET[/PREFIX] (an S3-compatible store
    through storage.endpoint_url)."""
    if "://" in value and not value.startswith("s3://"):
        raise ValueError(
            f"{value!r}: use a directory or an s3://bucket/prefix URL "
            "(GCS, Azure and others through their S3-compatible endpoint: storage.endpoint_url)"
        )
    if value.startswith("s3://") and not value.removeprefix("s3://").strip("/"):
        raise ValueError(f"{value!r} names no bucket; write s3://BUCKET/PREFIX")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectConfig(Section):
    name: str = Field(
        "model",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$",
        description="Model name: BentoML model name, metric label, Slack title.",
    )


class DataSource(Section):
    """How the training data file is first created from a bundled file on a fresh clone."""

    path: OneLine
    query: str | None = Field(None, description="pandas query selecting the initial rows")


class DataConfig(Section):
    path: OneLine = Field(description="The DVC-tracked training data (csv or parquet).")
    source: DataSource | None = None
    target: str
    task: TaskType
    numeric: list[str] | None = Field(
        None, description="Numeric features; omit both lists to infer them from the data."
    )
    categorical: list[str] | None = None
    nullable: list[str] = Field(
        default_factory=list, description="Features that may be null at serving time."
    )
    id_column: str | None = None
    timestamp_column: str | None = None
    drop: list[str] = Field(
        default_factory=list, description="Columns never used as features (e.g. leaks)."
    )
    remote: OneLine = Field(
        ".driftloop/dvc-remote",
        description="The DVC remote pushed to and pulled from: a directory or s3://bucket/prefix "
        "(on storage.endpoint_url); set in .dvc/config.local, never committed.",
    )

    _remote_supported = field_validator("remote")(lambda value: store_location(value))

    @model_validator(mode="after")
    def _lists_consistent(self) -> DataConfig:
        if (self.numeric is None) != (self.categorical is None):
            raise ValueError(
                "give both data.numeric and data.categorical (an empty list is fine), "
                "or omit both to infer features from the data"
            )
        both = set(self.numeric or []) & set(self.categorical or [])
        if both:
            raise ValueError(f"columns listed as both numeric and categorical: {sorted(both)}")
        special = {self.target, self.id_column, self.timestamp_column} - {None}
        clash = special & set((self.numeric or []) + (self.categorical or []))
        if clash:
            raise ValueError(f"target/id/timestamp columns cannot be features: {sorted(clash)}")
        return self


class PrepareConfig(Section):
    test_size: float = Field(0.2, gt=0, lt=1, description="Share held out for evaluation.")
    seed: int = 42
    stratify: bool = Field(True, description="Stratify the split on the target (classification).")


class TrainConfig(Section):
    estimator: str = Field(
        description="Import path of a scikit-learn estimator class, "
        "e.g. sklearn.ensemble.HistGradientBoostingRegressor."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Its hyperparameters.")
    seed: int | None = Field(42, description="Passed as random_state when the estimator has one.")


class EvaluateConfig(Section):
    metrics: list[str] | None = Field(None, description="Defaults depend on data.task.")
    primary: str | None = Field(None, description="The metric the gate compares; default: first.")


class BatchingConfig(Section):
    """BentoML's adaptive batching of concurrent requests into one model call (built in)."""

    enabled: bool = Field(False, description="Merge concurrent requests into one predict.")
    max_batch_size: int = Field(64, ge=1, le=100_000, description="Rows per merged call.")
    max_latency_ms: int = Field(
        1000,
        ge=10,
        le=60_000,
        description="BentoML answers 503 once a request would wait longer: keep it generous.",
    )


class ServingConfig(Section):
    host: str = Field("127.0.0.1", pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
    port: int = Field(3000, ge=1, le=65535, description="The port clients use (nginx).")
    slot_ports: list[int] = Field(default_factory=lambda: [3001, 3002], min_length=2, max_length=2)
    ready_timeout_seconds: float = Field(60, gt=0)
    max_batch: int = Field(1000, ge=1, description="Largest batch a request may carry.")
    max_error_ratio: float = Field(
        0.01, ge=0, le=1, description="5xx share above which serving alerts / rolls back."
    )
    max_p95_latency_seconds: float = Field(
        1.0, gt=0, description="p95 above this alerts, and fails a roll-forward's watch."
    )
    threads: int = Field(
        1, ge=1, le=256, description="Math-library (OpenMP/BLAS) threads per bento server."
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="BentoML worker processes per bento server, built into the bento; each "
        "captures to its own files. One suits two cores: the load and the proxy need the other.",
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    backend: Literal["local", "containerize", "kubernetes"] = Field(
        "local",
        description="local: blue/green slots behind the stack's nginx; containerize: also build "
        "an OCI image of each release (needs a Docker daemon); kubernetes: apply deployments/k8s.",
    )
    image_repository: OneLine = Field(
        "", description="Image name for containerize/kubernetes; default: the project name."
    )
    smoke_rows: int = Field(
        20, ge=1, le=1000, description="Rows whose served predictions must equal the offline ones."
    )
    watch_seconds: float = Field(
        20, ge=0, description="After the switch, how long errors and latency are watched."
    )
    probe_interval_seconds: float = Field(
        0.5, gt=0, description="How often the watch sends its own probe through nginx."
    )


class ShadowConfig(Section):
    """Live requests mirrored to a candidate; its answers beside the champion's."""

    seconds: float = Field(
        60,
        ge=0,
        description="How long nginx mirrors live traffic to the candidate before the switch; "
        "0 turns the stage off. A minute is a few hundred requests at modest traffic and costs "
        "little next to an approval that waited hours.",
    )
    min_rows: int = Field(
        50, ge=1, description="Fewer mirrored rows than this judge nothing; recorded, and on."
    )
    max_ratio: float = Field(
        2.0, ge=1, description="Live disagreement may reach this many times the holdout's..."
    )
    slack: float = Field(
        0.05, ge=0, description="...plus this much (share of changed labels, relative difference)."
    )
    drift_slack: float = Field(
        0.1, ge=0, description="...and the drift of predictions this much over the holdout's."
    )


class KubernetesConfig(Section):
    """The same bento image past one machine: deployments/k8s, rendered by `driftloop render`."""

    namespace: str = "driftloop"
    context: str = Field("", description="kubectl context; empty: kubectl's current one.")
    strategy: Literal["deployment", "argo"] = Field(
        "deployment", description="A plain Deployment, or an Argo Rollouts canary with analysis."
    )
    replicas: int = Field(2, ge=1)
    cpu_request: str = "500m"
    memory_request: str = "512Mi"
    memory_limit: str = "1Gi"
    pre_stop_seconds: int = Field(10, ge=0, description="Drain time before a pod gets SIGTERM.")
    rollout_timeout_seconds: int = Field(300, ge=10, description="A stalled rollout is undone.")
    prometheus_url: str = Field(
        "http://prometheus.monitoring.svc:9090",
        description="Prometheus the Argo analysis queries for the 5xx ratio.",
    )


class StorageConfig(Section):
    """The S3-API store that `s3://` paths (capture, the DVC remote) live on. Credentials come
    from the environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)."""

    endpoint_url: OneLine = Field(
        "",
        description="URL of an S3-compatible store (MinIO, Ceph, ...); empty: AWS S3 itself.",
    )


class CaptureConfig(Section):
    """Where the service records predictions and labels for the monitor."""

    path: OneLine = Field(
        ".driftloop/capture",
        description="Root of the dt=/hour= partitions: a directory or s3://bucket/prefix.",
    )

    _path_supported = field_validator("path")(lambda value: store_location(value))
    sample_rate: float = Field(1.0, gt=0, le=1, description="Share of requests recorded.")
    flush_seconds: float = Field(1.0, gt=0, le=60, description="How often buffers hit disk.")
    max_event_future_seconds: float = Field(
        300,
        ge=0,
        le=86400,
        description="Event times further ahead of the server's clock than this get a 400.",
    )
    max_event_age_days: float | None = Field(
        None,
        gt=0,
        le=36500,
        description="Event times older than this get a 400; null: any time from 1970 on "
        "(replays of historical data need old times).",
    )
    compact_after_seconds: float | None = Field(
        300,
        ge=0,
        le=86400,
        description="An hour's flush files are compacted once its newest is this old, and a "
        "compacted file's sources deleted once it is this old; null: never compact.",
    )


class MonitorConfig(Section):
    interval_seconds: int = Field(300, ge=10, description="Schedule of the monitor deployment.")
    min_rows: int = Field(500, ge=1, description="Smaller windows get 'insufficient data'.")
    drift_share: float = Field(
        0.3, gt=0, le=1, description="Dataset drift when this share of columns drifts."
    )
    quality_limit: float | None = Field(
        None, description="Alert when the primary metric is worse than this on labelled traffic."
    )
    min_labels: int = Field(50, ge=1, description="Labelled rows needed to judge quality.")
    max_nan_share: float = Field(0.05, ge=0, le=1, description="NaN share that is reported.")
    method: str | None = Field(None, description="Evidently stattest for every column.")
    num_method: str | None = Field(None, description="... for numeric columns.")
    cat_method: str | None = Field(None, description="... for categorical columns.")
    per_column_method: dict[str, str] = Field(default_factory=dict)
    threshold: float | None = Field(None, description="Stattest threshold (None: its default).")
    report_sample_rows: int = Field(100_000, ge=1001, description="Rows in the HTML report.")
    max_rows: int = Field(
        500_000,
        ge=1000,
        description="Larger windows are checked on a uniform sample of this many rows.",
    )
    workers: int = Field(2, ge=1, le=64, description="Threads computing column drift.")
    change_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="A sudden change when this share of columns drifts against the previous "
        "usable window (None: drift_share).",
    )
    version_drift_threshold: float = Field(
        0.1,
        gt=0,
        description="A serving version's prediction drift against the stable one (normed "
        "Wasserstein, Jensen-Shannon for classes) past which the Argo canary fails.",
    )


class EstimateConfig(Section):
    """Model quality estimated without labels, from the serving model's own outputs."""

    enabled: bool = Field(True, description="Fit the estimator in `dvc repro`, use it per window.")
    confidence: float = Field(
        0.9, gt=0.5, lt=1, description="The band holds the realised metric this often."
    )
    max_rows: int = Field(
        5_000, ge=500, description="A window's estimate uses a uniform sample of this many rows."
    )
    fit_share: float = Field(
        0.5,
        gt=0.1,
        lt=0.9,
        description="Share of the held-out set that fits the calibrator or nanny model; the rest "
        "measures the band.",
    )
    seed: int = 42
    settle_days: float = Field(
        7, gt=0, description="A window's late labels are awaited this long to settle its estimate."
    )
    settle_per_run: int = Field(
        3, ge=0, le=100, description="Earlier windows whose labels each monitor run looks for."
    )


MONITOR_DEFAULTS = MonitorConfig()  # the one place monitor defaults are written: above


class StackConfig(Section):
    """The local stack run by `driftloop up` under supervisord."""

    work_pool: OneLine = Field("driftloop-local", description="Prefect process work pool.")
    worker_poll_seconds: int = Field(5, ge=1, le=60, description="How often the worker polls.")
    scrape_interval_seconds: int = Field(15, ge=1, le=300)
    ready_timeout_seconds: float = Field(120, gt=0, description="Deadline for `up` per service.")
    extra_rule_files: list[OneLine] = Field(
        default_factory=list, description="Your own Prometheus rule files, checked by promtool."
    )


class PolicyConfig(Section):
    """When the monitor starts a retrain."""

    consecutive_windows: int = Field(2, ge=1, description="Bad windows in a row that trigger.")
    triggers: list[Literal["dataset_drift", "quality", "estimated_quality"]] = Field(
        default_factory=lambda: ["dataset_drift", "quality"],
        description="What makes a window bad.",
    )
    cooldown_seconds: int = Field(3600, ge=0, description="Quiet time after a trigger.")


class RetrainConfig(Section):
    """How a retrain builds its training set from the labelled recent window."""

    rule: Literal["reference_plus_window", "sliding_window"] = Field(
        "reference_plus_window",
        description="reference_plus_window: the serving model's data plus the labelled window; "
        "sliding_window: the labelled window alone.",
    )
    window_days: float = Field(31, gt=0, description="The recent window, ending at its newest row.")
    holdout_share: float = Field(
        0.3, gt=0, lt=1, description="Latest share of the window kept out of training for the gate."
    )
    min_labelled_rows: int = Field(100, ge=10, description="Fewer labelled rows: no retrain.")


class GateConfig(Section):
    """Candidate against champion on the held-out recent window."""

    min_improvement: float = Field(0.0, ge=0, description="Absolute gain on the primary metric.")
    min_relative_improvement: float = Field(
        0.02, ge=0, le=1, description="Relative gain on the primary metric."
    )
    guard_metrics: list[str] = Field(
        default_factory=list, description="Other metrics that must not regress."
    )
    guard_tolerance: float = Field(
        0.05, ge=0, le=1, description="Relative regression allowed on a guard metric."
    )


ApprovalChannel = Literal["slack", "cli", "ui"]
APPROVAL_CHANNELS: tuple[ApprovalChannel, ...] = get_args(ApprovalChannel)
SEALING_CHANNELS: tuple[ApprovalChannel, ...] = ("slack", "cli")  # the UI's resume is unsealed
SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")


class Approvers(Section):
    """Who may decide, per channel, by the identity that channel authenticates."""

    slack: list[str] = Field(
        default_factory=list, description="Slack user ids (U...), from the signed click."
    )
    cli: list[str] = Field(default_factory=list, description="OS users running the CLI.")
    ui: list[str] = Field(
        default_factory=list,
        description="Prefect UI: 'prefect-ui', whoever holds the Prefect server's auth string.",
    )


class ApprovalConfig(Section):
    """Who may approve, and for how long a request stays open."""

    approvers: Approvers = Field(
        default_factory=Approvers,
        description="Identities allowed to decide, per channel (all empty: anyone).",
    )
    channels: list[ApprovalChannel] = Field(
        default_factory=lambda: list(APPROVAL_CHANNELS), description="Channels that may decide."
    )
    slack_team_id: str = Field(
        "", description="The Slack workspace (T...) whose users may decide; empty: no Slack."
    )
    cli_as: bool = Field(
        False, description="Let `driftloop approve --as NAME` record NAME instead of the OS user."
    )

    @field_validator("approvers", mode="before")
    @classmethod
    def _per_channel(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError(
                "approvers are listed per channel, by the identity each one authenticates: "
                "{slack: [Slack user ids], cli: [OS users], ui: [prefect-ui]}"
            )
        return value

    @model_validator(mode="after")
    def _escalation_reaches_someone(self) -> ApprovalConfig:
        if self.on_timeout == "escalate" and not any(
            getattr(self.escalate_to, c) for c in APPROVAL_CHANNELS
        ):
            raise ValueError(
                "approval.on_timeout is escalate but approval.escalate_to names nobody; "
                "list who may decide past the deadline, e.g. {slack: [U0123ABCD]}"
            )
        for channel in APPROVAL_CHANNELS:
            if getattr(self.escalate_to, channel) and channel not in self.channels:
                raise ValueError(
                    f"approval.escalate_to.{channel} lists identities but {channel} is not in "
                    f"approval.channels {self.channels}; add it there or drop them"
                )
        for user in self.escalate_to.slack:  # mentioned on the card as <@id>: ids only
            if not SLACK_USER_ID.fullmatch(user):
                raise ValueError(
                    f"approval.escalate_to.slack: {user!r} is not a Slack user id "
                    "(U or W then capitals and digits, e.g. U0123ABCD); handles are never matched"
                )
        return self

    timeout_seconds: int = Field(86400, ge=10, description="The deadline for a decision.")
    on_timeout: Literal["reject", "remind", "escalate"] = Field(
        "reject",
        description="At the deadline: reject (nothing promoted), remind (re-post the card every "
        "remind_every_seconds) or escalate (escalate_to may decide too); the last two for "
        "grace_seconds more, then reject.",
    )
    remind_every_seconds: int = Field(14400, ge=1, description="Between reminders (remind).")
    grace_seconds: int = Field(
        86400, ge=1, description="How long remind, escalate keep a request open past the deadline."
    )
    escalate_to: Approvers = Field(
        default_factory=Approvers,
        description="Who may also decide once the deadline has passed (escalate), per channel.",
    )
    poll_seconds: float = Field(2.0, gt=0, le=60, description="How fast a decision is noticed.")
    slack_host: str = "127.0.0.1"
    slack_port: int = Field(3100, ge=1, le=65535, description="`driftloop slack` HTTP port.")


class NotifyConfig(Section):
    """Slack notices (token from SLACK_BOT_TOKEN; without one, notices go to the log)."""

    channel: str = Field("#driftloop", description="Channel for notices and approval cards.")
    timeout_seconds: float = Field(10, gt=0, le=120)
    max_retries: int = Field(3, ge=0, le=10, description="On 429, 5xx and connection errors.")
    top_columns: int = Field(5, ge=1, le=50, description="Drifted columns shown in a notice.")


class EndpointsConfig(Section):
    """Where each service listens; the local stack binds to these, clients call them."""

    prefect: str = "http://127.0.0.1:4200"
    pushgateway: str = "http://127.0.0.1:9091"
    prometheus: str = "http://127.0.0.1:9090"
    alertmanager: str = "http://127.0.0.1:9093"
    worker: str = "http://127.0.0.1:8081"  # the Prefect worker's health endpoint
    reports: str = "http://127.0.0.1:8090"  # nginx serving the Evidently HTML reports

    @field_validator("*")
    @classmethod
    def _is_http_url(cls, value: str) -> str:
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must be a URL without spaces, newlines or control characters")
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
            raise ValueError(
                "must be an http(s) URL with host and port, e.g. http://127.0.0.1:9090"
            )
        return value.rstrip("/")

    def port(self, name: str) -> int:
        return int(urlsplit(getattr(self, name)).port)


class DriftloopConfig(Section):
    project: ProjectConfig = ProjectConfig()
    data: DataConfig
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig
    evaluate: EvaluateConfig = EvaluateConfig()
    serving: ServingConfig = ServingConfig()
    shadow: ShadowConfig = ShadowConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    storage: StorageConfig = StorageConfig()
    capture: CaptureConfig = CaptureConfig()
    monitor: MonitorConfig = MonitorConfig()
    estimate: EstimateConfig = EstimateConfig()
    policy: PolicyConfig = PolicyConfig()
    retrain: RetrainConfig = RetrainConfig()
    gate: GateConfig = GateConfig()
    approval: ApprovalConfig = ApprovalConfig()
    notify: NotifyConfig = NotifyConfig()
    endpoints: EndpointsConfig = EndpointsConfig()
    stack: StackConfig = StackConfig()

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> DriftloopConfig:
        task = self.data.task
        for name in self.evaluate.metrics or []:
            if name not in METRICS:
                raise ValueError(
                    f"evaluate.metrics: unknown metric {name!r}; known: {sorted(METRICS)}"
                )
            if task not in METRICS[name][0]:
                raise ValueError(
                    f"evaluate.metrics: {name!r} does not apply to task {task!r}; "
                    f"use one of {DEFAULT_METRICS[task]}"
                )
        for name in self.gate.guard_metrics:
            if name not in self.metric_names:
                raise ValueError(
                    f"gate.guard_metrics: {name!r} is not among the metrics {self.metric_names}"
                )
        if self.evaluate.primary and self.evaluate.primary not in self.metric_names:
            raise ValueError(
                f"evaluate.primary: {self.evaluate.primary!r} is not among the metrics "
                f"{self.metric_names}"
            )
        self._limit_fits_primary()
        return self

    def _limit_fits_primary(self) -> None:
        """`monitor.quality_limit` is a value of the primary metric: a limit outside the
        metric's range (say 60, from an rmse config, for roc_auc) could never be judged."""
        limit, primary = self.monitor.quality_limit, self.primary_metric
        if limit is None or primary not in METRIC_RANGES:
            return
        low, high = METRIC_RANGES[primary]
        if (low is None or limit >= low) and (high is None or limit <= high):
            return
        higher = METRICS[primary][1]
        better, falls = ("Higher", "falls below") if higher else ("Lower", "rises above")
        raise ValueError(
            f"monitor.quality_limit: {limit:g} is outside the range of {primary}, the primary "
            f"metric (evaluate.primary); set a value {_range_text(low, high)}. {better} "
            f"{primary} is better: the monitor alerts when {primary} on labelled traffic "
            f"{falls} the limit"
        )

    @property
    def metric_names(self) -> list[str]:
        return list(self.evaluate.metrics or DEFAULT_METRICS[self.data.task])

    @property
    def primary_metric(self) -> str:
        return self.evaluate.primary or self.metric_names[0]


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"from {low:g} to {high:g}"
    return f">= {low:g}" if low is not None else f"<= {high:g}"
