"""What a person sees before deciding: the evidence on the Slack card and the Prefect UI's form,
from the monitor's window evidence through the approval request. No server needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.approval.card import approval_card, evidence_markdown
from tasks.approval.records import ApprovalRequest
from tasks.evidence import (
    DriftRow,
    EstimateRow,
    GateRow,
    QualityRow,
    WindowEvidence,
    approval_evidence,
)

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def request() -> ApprovalRequest:
    window = WindowEvidence(
        window="2011-07-01..2011-08-01",
        message="3 of 11 columns drifted",
        drifted=[DriftRow(column="temp", method="wasserstein", score=0.3127, threshold=0.1)],
        quality=[
            QualityRow(metric="roc_auc", current=0.71234, reference=0.95123),
            QualityRow(metric="accuracy", current=None, reference=0.9),
        ],
    )
    gate = [GateRow(metric="roc_auc", champion=0.71, candidate=0.93, delta=0.22, passed=True)]
    evidence = approval_evidence(
        "tumours", "quality: roc_auc 0.7123 past 0.8", window, gate, "ab12", "tumours:v2", "run-1"
    )
    return ApprovalRequest(
        run_id="run-1",
        evidence=evidence,
        evidence_hash="0123456789abcdef",
        requested_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


def test_the_window_quality_reaches_the_request():
    evidence = request().evidence
    assert [(q.metric, q.current, q.reference) for q in evidence.quality] == [
        ("roc_auc", 0.71234, 0.95123),
        ("accuracy", None, 0.9),
    ]
    assert evidence.drift_summary == "3 of 11 columns drifted"


def test_the_card_shows_drift_quality_and_gate():
    card = approval_card(request())
    texts = [b["text"]["text"] for b in card.blocks if b.get("type") == "section" and "text" in b]
    assert "*Drift*\n3 of 11 columns drifted\n• `temp` wasserstein: 0.3127 (threshold 0.1)" in texts
    assert (
        "*Model quality*\n• `roc_auc`: 0.7123 on the window (serving model's own 0.9512)\n"
        "• `accuracy`: not computed (too few labelled rows)"
    ) in texts
    gate = next(t for t in texts if t.startswith("*Gate"))
    assert "roc_auc  0.71      0.93       0.22   yes" in gate
    assert [b["type"] for b in card.blocks][-1] == "actions"


def test_the_ui_form_shows_the_same_evidence():
    text = evidence_markdown(request())
    assert (
        "### Model quality\n\n- `roc_auc`: 0.7123 on the window (serving model's own 0.9512)"
        in text
    )
    assert "- `temp` wasserstein: 0.3127 (threshold 0.1)" in text
    assert "| roc_auc | 0.71 | 0.93 | 0.22 | yes |" in text


def test_a_manual_retrain_shows_no_window_sections():
    evidence = approval_evidence("tumours", "manual", None, [], "ab12", "tumours:v2", "run-2")
    req = request().model_copy(update={"evidence": evidence})
    text = evidence_markdown(req)
    assert "### Drift" not in text and "### Model quality" not in text


def estimated_request(estimated_only: bool) -> ApprovalRequest:
    window = WindowEvidence(
        window="2011-07-01..2011-08-01",
        message="no dataset drift: 1 of 11 columns drifted",
        estimated=[
            EstimateRow(
                metric="rmse",
                estimate=97.31,
                lower=88.12,
                upper=106.5,
                confidence=0.9,
                method="dle",
            )
        ],
        estimated_only=estimated_only,
    )
    evidence = approval_evidence(
        "bikeshare", "2 bad windows in a row (estimated quality)", window, [], "ab12", "b:v2", "r-3"
    )
    return request().model_copy(update={"evidence": evidence})


def test_a_card_whose_evidence_is_an_estimate_says_so():
    card = approval_card(estimated_request(estimated_only=True))
    texts = [b["text"]["text"] for b in card.blocks if b.get("type") == "section" and "text" in b]
    assert (
        "*Model quality, ESTIMATED without labels (the evidence is an estimate)*\n"
        "• `rmse`: estimated 97.31 (90% band 88.12 to 106.5), no labels yet"
    ) in texts
    form = evidence_markdown(estimated_request(estimated_only=True))
    assert "### Model quality, ESTIMATED without labels (the evidence is an estimate)" in form
    assert "- `rmse`: estimated 97.31 (90% band 88.12 to 106.5), no labels yet" in form


def test_an_estimate_beside_labelled_evidence_is_not_called_the_evidence():
    form = evidence_markdown(estimated_request(estimated_only=False))
    assert "### Model quality, estimated without labels\n" in form
    assert "ESTIMATED" not in form
