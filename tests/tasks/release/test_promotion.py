"""`driftloop promote RUN` against a real Prefect server: only a run whose approval is recorded
and whose candidate never served may be promoted; every other run is refused, saying why, with
exit 2 and nothing put into service."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from driftloop.cli import app
from tasks.approval.submit import submit_decision
from tasks.release.promotion import PromotionRefused, approved_candidate
from tasks.release.releases import Attempt, Release, append_attempt, read_serving

pytestmark = pytest.mark.timeout(180)


def promote_cli(project, run_id: str):
    return CliRunner().invoke(app, ["promote", run_id, "--config", str(project.path)])


def test_rejected_run_is_refused_with_its_reason(stub, project):
    run = stub()
    submit_decision(project, run.run_id, "reject", "alice", "cli", "worse on weekends", run.hash)
    run.result()
    with pytest.raises(PromotionRefused, match=r"rejected by alice via cli .*worse on weekends"):
        approved_candidate(project, run.run_id)
    refused = promote_cli(project, run.run_id)
    assert refused.exit_code == 2
    assert "refused:" in refused.output and "rejected by alice" in refused.output
    assert read_serving(project) is None


def test_run_rejected_by_timeout_is_refused(stub, project):
    run = stub(timeout=2)
    assert run.result()["outcome"] == "reject"
    with pytest.raises(PromotionRefused, match=r"rejected by timeout at .* with no decision"):
        approved_candidate(project, run.run_id)


def test_run_still_waiting_is_refused_and_points_at_approve(stub, project):
    run = stub()
    with pytest.raises(PromotionRefused, match=f"still waiting.*driftloop approve {run.run_id}"):
        approved_candidate(project, run.run_id)


def test_approved_run_gives_its_recorded_decision_once(stub, project):
    run = stub()
    submit_decision(project, run.run_id, "approve", "alice", "cli", "", run.hash)
    run.result()
    approved = approved_candidate(project, run.run_id)
    assert (approved.candidate, approved.approver, approved.channel) == (
        run.candidate,
        "alice",
        "cli",
    )
    assert approved.evidence_hash == run.hash

    # once its candidate has served, the run is spent
    release = Release(
        bento="bikeshare:v2", model_tag=run.candidate, url="-", labels={"retrain_run": run.run_id}
    )
    append_attempt(
        project, Attempt(at="2026-12-02T10:00:00+00:00", release=release, outcome="promoted")
    )
    with pytest.raises(PromotionRefused, match="already promoted: bikeshare:v2 at 2026-12-02"):
        approved_candidate(project, run.run_id)


def test_unknown_and_malformed_runs_are_refused(prefect_server, project):
    with pytest.raises(PromotionRefused, match="no flow run"):
        approved_candidate(project, "00000000-0000-4000-8000-000000000000")
    refused = promote_cli(project, "'; rm -rf /")
    assert refused.exit_code == 2 and "not a flow run id" in refused.output
