"""`driftloop pending` says when a request's quality evidence is an estimate, with its band."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console

from driftloop.approve_cmd import render_pending
from tasks.approval.records import PendingRequest
from tasks.evidence import EstimateRow, Evidence, GateRow

NOW = datetime(2026, 12, 2, 14, 12, tzinfo=UTC)


def rendered(request: PendingRequest) -> list[str]:
    """The request as `driftloop pending` prints it on an 80-column terminal."""
    out = Console(width=80, file=io.StringIO(), color_system=None)
    render_pending([request], out)
    lines = out.file.getvalue().splitlines()
    assert not [line for line in lines if len(line) > 80]
    return lines


def estimated_request(estimated_only: bool, realised: float | None) -> PendingRequest:
    evidence = Evidence(
        model="bikeshare",
        reason="2 bad windows in a row (estimated quality)",
        estimated=[
            EstimateRow(
                metric="rmse",
                estimate=29.4612345,
                lower=21.70123,
                upper=37.2198765,
                realised=realised,
                method="dle",
            )
        ],
        estimated_only=estimated_only,
        gate=[GateRow(metric="rmse", champion=83.3, candidate=41.2, passed=True)],
        data_rev="d41d8cd98f00b204e9800998ecf8427e",
        candidate="bikeshare:20261202t141233-ab12cd",
        retrain_run_id="3f1c2a9e-7b4d-4e8a-9c1f-2d5e6a7b8c9d",
    )
    return PendingRequest(
        run_id="3f1c2a9e-7b4d-4e8a-9c1f-2d5e6a7b8c9d",
        run_name="retrain-brave-otter",
        evidence=evidence,
        evidence_hash="9f86d081884c7d65",
        requested_at=NOW,
        expires_at=NOW + timedelta(days=1),
        age_seconds=60.0,
        approvers=[],
        url="http://127.0.0.1:4200/runs/flow-run/3f1c2a9e-7b4d-4e8a-9c1f-2d5e6a7b8c9d",
    )


def test_an_estimate_alone_is_flagged_with_its_band():
    lines = rendered(estimated_request(True, None))
    text = "\n".join(line.rstrip() for line in lines)
    assert "quality:   -\nestimated: the evidence is an estimate: no labels judged this" in text
    assert "rmse: estimated 29.46 (90% band 21.7 to 37.22), no labels yet" in text


def test_an_estimate_beside_labels_shows_the_realised_value_and_no_flag():
    lines = rendered(estimated_request(False, 31.04))
    text = "\n".join(lines)
    assert "rmse: estimated 29.46 (90% band 21.7 to 37.22), realised 31.04" in text
    assert "the evidence is an estimate" not in text
