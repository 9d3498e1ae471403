"""`pending`, `status`, `lineage` and the demo's table read at 80 columns; --json stays whole.

Rendered with realistic long values (uuid run ids, long bento tags, 64-hex hashes, floats with
sixteen digits) into an 80-column console, no server needed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from driftloop import approve_cmd
from driftloop.approve_cmd import render_pending
from driftloop.cli import app, render_status
from driftloop.demo import WindowRow, _estimate_cell, _estimate_line, _quality, render_windows
from driftloop.lineage_view import render_lineage
from tasks.approval.records import PendingRequest
from tasks.evidence import DriftRow, Evidence, GateRow, QualityRow
from tasks.release.releases import Release
from tasks.stack.services import ServiceStatus

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "3f1c2a9e-7b4d-4e8a-9c1f-2d5e6a7b8c9d"
OTHER_RUN = "c0ffee00-1234-4abc-8def-0123456789ab"
HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATA_REV = "d41d8cd98f00b204e9800998ecf8427e"
BENTO = "bikeshare:20261202t141233-ab12cd"
NEXT_BENTO = "bikeshare:20261203t091500-ef34gh"
NOW = datetime(2026, 12, 2, 14, 12, tzinfo=UTC)


def rendered(draw) -> list[str]:
    out = Console(width=80, file=io.StringIO(), color_system=None)
    draw(out)
    return out.file.getvalue().splitlines()


def assert_fits(lines: list[str]) -> None:
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)


def request(run_id: str) -> PendingRequest:
    evidence = Evidence(
        model="bikeshare",
        reason="drift: 7 of 11 columns drifted [dataset drift] in 2011-05-01..2011-06-01",
        drift_summary="7 of 11 columns drifted",
        drift=[
            DriftRow(column=f"c{i}", method="wasserstein", score=0.31234 + i, threshold=0.1)
            for i in range(7)
        ],
        quality=[
            QualityRow(metric="rmse", current=121.81234, reference=55.6012),
            QualityRow(metric="r2", current=None, reference=0.9),
        ],
        gate=[
            GateRow(metric="rmse", champion=61.23456789, candidate=48.0987654, passed=True),
            GateRow(metric="mae", champion=0.5893323727185399, candidate=0.61234567, passed=False),
        ],
        data_rev=DATA_REV,
        candidate=BENTO,
        retrain_run_id=run_id,
    )
    return PendingRequest(
        run_id=run_id,
        run_name="retrain-brave-otter",
        evidence=evidence,
        evidence_hash=HASH,
        requested_at=NOW,
        expires_at=NOW + timedelta(days=1),
        age_seconds=7512.4,
        approvers=[],
        url=f"http://127.0.0.1:4200/runs/flow-run/{run_id}",
    )


def test_pending_is_a_card_per_request():
    lines = rendered(lambda out: render_pending([request(RUN_ID), request(OTHER_RUN)], out))
    assert_fits(lines)
    text = "\n".join(lines)
    assert lines[0] == "2 waiting for a decision"
    for run_id in (RUN_ID, OTHER_RUN):
        assert f"  http://127.0.0.1:4200/runs/flow-run/{run_id}" in lines
        assert f"run:       {run_id} (retrain-brave-otter)" in text
    assert text.count(f"evidence:  {HASH}") == 2
    assert text.count(f"candidate: {BENTO}") == 2
    assert "gate:      rmse 61.23 -> 48.1 pass" in text
    assert "mae 0.5893 -> 0.6123 FAIL" in text
    assert "0.58933" not in text
    assert "[dataset drift]" in text  # a reason's brackets are text, not markup
    assert "age:       2h05m, expires 2026-12-03 14:12 UTC" in text
    stripped = "\n".join(line.rstrip() for line in lines)
    first = "drift:     7 of 11 columns drifted\n           c0 wasserstein 0.3123 (threshold 0.1)"
    assert first in stripped
    assert "c4 wasserstein 4.312 (threshold 0.1)\n           ... and 2 more" in stripped
    assert "c5 wasserstein" not in text
    assert "quality:   rmse 121.8 (model's own 55.6)\n           r2 -" in stripped


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """The project's config in a directory of its own; the environment restored afterwards
    (loading a project points this process at its Prefect server)."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "driftloop.yaml", tmp_path / "config" / "driftloop.yaml")
    (tmp_path / "pyproject.toml").write_text("")
    saved = dict(os.environ)
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved)


def test_pending_json_is_complete(project_dir, monkeypatch):
    monkeypatch.setattr(approve_cmd, "require", lambda *args, **kwargs: None)
    monkeypatch.setattr("tasks.approval.pending.pending_requests", lambda proj: [request(RUN_ID)])
    config = str(project_dir / "config" / "driftloop.yaml")
    result = CliRunner().invoke(app, ["pending", "--json", "--config", config])
    assert result.exit_code == 0, result.output
    [shown] = json.loads(result.output)
    assert shown["run_id"] == RUN_ID
    assert shown["evidence_hash"] == HASH
    assert shown["evidence"]["gate"][1]["champion"] == 0.5893323727185399
    assert shown["url"] == f"http://127.0.0.1:4200/runs/flow-run/{RUN_ID}"


def test_status_names_addresses_and_the_worker_link():
    rows = [
        ServiceStatus(
            "prefect-server", "http://127.0.0.1:4200", "RUNNING", 123456, "1:02:03", True
        ),
        ServiceStatus(
            "prefect-worker",
            "http://127.0.0.1:4200/work-pools/work-pool/driftloop-local",
            "BACKOFF",
            None,
            "",
            False,
        ),
        ServiceStatus("pushgateway", "http://127.0.0.1:9091", "RUNNING", 1234567, "0:12:34", True),
        ServiceStatus("nginx", "http://127.0.0.1:3000", "FATAL", None, "", False),
    ]
    lines = rendered(lambda out: render_status(rows, out))
    assert_fits(lines)
    cells = [line.split() for line in lines]
    assert ["prefect-server", "127.0.0.1:4200", "RUNNING", "123456", "1:02:03", "ok"] in cells
    assert ["prefect-worker", "127.0.0.1:4200", "BACKOFF", "-", "-", "down"] in cells
    assert ["pushgateway", "127.0.0.1:9091", "RUNNING", "1234567", "0:12:34", "ok"] in cells
    assert ["nginx", "127.0.0.1:3000", "FATAL", "-", "-", "down"] in cells
    assert "prefect-worker: http://127.0.0.1:4200/work-pools/work-pool/driftloop-local" in lines


def serving_release() -> Release:
    return Release(
        bento=BENTO,
        model_tag="bikeshare:ab12cd34ef56gh78",
        url="http://127.0.0.1:3000",
        labels={
            "data_rev": DATA_REV,
            "git_commit": COMMIT,
            "git_dirty": "true",
            "params_hash": "5e884898da280471",
            "retrain_run": RUN_ID,
            "approver": "alice",
            "approval_channel": "slack",
            "approved_at": "2026-12-02T14:12:33+00:00",
            "evidence_hash": HASH,
            "image": f"ghcr.io/acme/{BENTO}",
        },
        started_at="2026-12-02T15:00:00+00:00",
        how="promote",
    )


def test_lineage_keeps_every_id_whole():
    lines = [line.rstrip() for line in rendered(lambda out: render_lineage(serving_release(), out))]
    assert_fits(lines)
    assert lines == [
        "what is serving",
        "endpoint      http://127.0.0.1:3000",
        f"bento         {BENTO}",
        "model         bikeshare:ab12cd34ef56gh78",
        f"data rev      {DATA_REV} (DVC md5)",
        f"git commit    {COMMIT} (uncommitted changes)",
        "params hash   5e884898da280471",
        f"retrain run   {RUN_ID}",
        "approved by   slack:alice at 2026-12-02T14:12:33+00:00",
        f"evidence hash {HASH}",
        f"image         ghcr.io/acme/{BENTO}",
        "serving since 2026-12-02T15:00:00+00:00",
    ]


def test_lineage_json_is_complete(project_dir):
    state = project_dir / ".driftloop"
    state.mkdir()
    (state / "serving.json").write_text(serving_release().model_dump_json())
    config = str(project_dir / "config" / "driftloop.yaml")
    result = CliRunner().invoke(app, ["lineage", "--json", "--config", config])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["lineage"]["evidence_hash"] == HASH
    assert shown["lineage"]["git_commit"] == COMMIT
    assert shown["lineage"]["retrain_run"] == RUN_ID
    assert shown["bento"] == BENTO


def test_demo_windows_show_short_bentos_with_a_legend():
    rows = [
        WindowRow("April", 720, 0.5893323727185399, "rmse 41.23", BENTO, "ok", "40.1±6.9"),
        WindowRow("May", 744, 0.7272, "rmse - (too few labels)", BENTO, "retrain: share 73%"),
        WindowRow("June", 720, 0.1, "rmse 48.1", f"{BENTO} -> {NEXT_BENTO}", "none", "112±14"),
        WindowRow("July", 744, None, "rmse 39.87", NEXT_BENTO, "none"),
    ]
    lines = rendered(lambda out: render_windows(rows, out))
    assert_fits(lines)
    cells = [line.split() for line in lines]
    assert ["April", "720", "59%", "rmse", "41.23", "40.1±6.9", "ab12cd", "ok"] in cells
    june = ["June", "720", "10%", "rmse", "48.1", "112±14", "ab12cd", "->", "ef34gh"]
    assert [*june, "none"] in cells
    assert ["July", "744", "-", "rmse", "39.87", "-", "ef34gh", "none"] in cells
    assert f"  ab12cd: {BENTO}" in lines
    assert f"  ef34gh: {NEXT_BENTO}" in lines


def test_demo_quality_at_four_significant_digits():
    project = SimpleNamespace(config=SimpleNamespace(primary_metric="rmse"))
    assert _quality(project, {"quality": {"rmse": 41.23456789}}) == "rmse 41.23"
    assert _quality(project, {"quality": {"rmse": 0.5893323727185399}}) == "rmse 0.5893"
    assert _quality(project, {"quality": {}}) == "rmse - (too few labels)"


def test_demo_estimate_beside_the_realised_value():
    project = SimpleNamespace(config=SimpleNamespace(primary_metric="rmse"))
    estimate = {"value": 91.234, "lower": 80.41, "upper": 102.04, "confidence": 0.9}
    outcome = {"estimated": {"rmse": {**estimate, "realised": 95.06}}}
    assert _estimate_line(project, outcome) == (
        "estimated rmse 91.23 (90% band 80.41 to 102) before the labels; realised 95.06"
    )
    assert _estimate_cell(project, outcome) == "91.2±11"
    waiting = {"estimated": {"rmse": {**estimate, "realised": None}}}
    assert _estimate_line(project, waiting).endswith("before the labels; realised -")
    assert _estimate_cell(project, {"estimated": {}}) == "-"
