"""The evidence a retrain carries, one set of types from the monitor to the person who decides.

The monitor finds what moved in a window (`WindowEvidence`: drifted columns with their scores,
quality against the reference); the gate scores the candidate (`GateRow`); the approval request
shows both (`Evidence`) on the Slack card, the Prefect UI's resume form and `driftloop pending`,
and binds a decision to them by `evidence_hash`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from pydantic import BaseModel, Field


class DriftRow(BaseModel):
    """One column's drift test: its score against the threshold it was compared with."""

    column: str
    method: str = ""
    score: float | None = None
    threshold: float | None = None
    drifted: bool = True


class QualityRow(BaseModel):
    """One model-quality metric on the window's labelled rows, beside the serving model's own."""

    metric: str
    current: float | None = None
    reference: float | None = None


class EstimateRow(BaseModel):
    """One metric estimated without labels: the estimate, its band, and the realised value once
    the labels arrived."""

    metric: str
    estimate: float
    lower: float
    upper: float
    confidence: float = 0.9
    realised: float | None = None
    method: str = ""  # cbpe | dle
    outside_share: float = 0.0  # rows unlike any the estimator learned from


# past this share of rows outside what the estimator learned from, every estimate says so
OUTSIDE_NOTE_SHARE = 0.05


def outside_note(share: float) -> str | None:
    """What a person must know before trusting an estimate made mostly on unfamiliar rows."""
    if share < OUTSIDE_NOTE_SHARE:
        return None
    return (
        f"{share:.0%} of the rows lie outside what the estimator learned from (categories or "
        "values the held-out set lacks): for them the band is an extrapolation"
    )


class GateRow(BaseModel):
    """One gate metric: champion and candidate on the same held-out rows."""

    metric: str
    champion: float | None = None
    candidate: float | None = None
    delta: float | None = None  # positive: the candidate is better
    passed: bool
    rule: str = ""  # e.g. "no worse than 5%"


class WindowEvidence(BaseModel):
    """What the monitor saw in the window that triggered a retrain (the retrain's parameter)."""

    window: str = ""
    message: str = ""  # one line, e.g. "7 of 11 columns drifted (dataset drift)"
    drift_share: float | None = None
    drifted: list[DriftRow] = []
    quality: list[QualityRow] = []
    estimated: list[EstimateRow] = []
    estimated_only: bool = False  # the quality evidence is an estimate: no labels judged it


class Evidence(BaseModel):
    """What a person approves: why, what moved, how the candidate compares, and from what data."""

    model: str
    reason: str
    drift_summary: str = ""
    drift: list[DriftRow] = []
    quality: list[QualityRow] = []  # model quality on the window's labelled rows
    estimated: list[EstimateRow] = []  # model quality estimated without labels
    estimated_only: bool = False
    gate: list[GateRow] = []
    data_rev: str
    candidate: str  # the candidate's exact model tag
    retrain_run_id: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def evidence_hash(evidence: Evidence) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace), first 16 hex digits."""
    canonical = json.dumps(
        evidence.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def approval_evidence(
    model: str,
    reason: str,
    window: WindowEvidence | None,
    gate: list[GateRow],
    data_rev: str,
    candidate: str,
    retrain_run_id: str,
) -> Evidence:
    """The request's evidence: the trigger's window (drift and quality; none for a manual
    retrain) and the gate."""
    window = window or WindowEvidence()
    return Evidence(
        model=model,
        reason=reason,
        drift_summary=window.message,
        drift=window.drifted,
        quality=window.quality,
        estimated=window.estimated,
        estimated_only=window.estimated_only,
        gate=gate,
        data_rev=data_rev,
        candidate=candidate,
        retrain_run_id=retrain_run_id,
    )
