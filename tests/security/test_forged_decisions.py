"""Forged decisions through every door of a running stack: nothing is promoted.

The stack serves a release by hand. A Prefect API caller without the auth string is turned away;
one with it can resume an approval request only as the UI (its claims of another channel or
identity prove nothing); a `promote` deployment run naming a made-up approval is refused and
audited with serving unchanged; the CLI will not decide as someone else unless configured.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.integration.test_stack import free_endpoints
from tests.support import copy_project, driftloop, edit_config, prefect_auth, prefect_post

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A project copy serving a release by hand behind its own stack (free ports)."""
    from config.loader import load_project

    root = copy_project(tmp_path_factory.mktemp("forged"))
    edit_config(root, free_endpoints)
    driftloop(root, "data")
    driftloop(root, "train")
    built = driftloop(root, "build").stdout
    bento = built.split("built ", 1)[1].split()[0]
    driftloop(root, "up", timeout=400)
    try:
        driftloop(root, "release", bento)
        yield load_project(root / "config/driftloop.yaml")
    finally:
        driftloop(root, "down", check=False)


def releases(project) -> list[dict]:
    log = project.state_dir / "audit" / "releases.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_prefect_api_without_the_auth_string_is_refused(stack):
    url = stack.config.endpoints.prefect
    run = uuid.uuid4()
    assert httpx.get(f"{url}/api/flow_runs/{run}").status_code == 401
    wrong = ("driftloop", "guess")
    assert httpx.get(f"{url}/api/flow_runs/{run}", auth=wrong).status_code == 401
    resume = prefect_post(url, f"/api/flow_runs/{run}/resume", {"run_input": {}}, None)
    assert resume.status_code in (401, 403)
    # a web page in the operator's browser: another origin gets no CORS grant
    preflight = httpx.options(
        f"{url}/api/flow_runs/filter",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers.get("access-control-allow-origin") not in ("*", "http://evil.example")


def test_ui_resume_claiming_slack_counts_as_the_ui(stack, monkeypatch):
    """With the auth string a caller is the UI: a body claiming channel slack is refused by the
    schema; without the claim, an allowed Slack approver's name is recorded as a typed note."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from tests.fakes.approval_stub import StubRun

    url, auth = stack.config.endpoints.prefect, prefect_auth(stack.root)
    settings = {PREFECT_API_URL: f"{url}/api", PREFECT_API_AUTH_STRING: ":".join(auth)}
    monkeypatch.setenv("PREFECT_API_URL", f"{url}/api")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", ":".join(auth))
    with temporary_settings(updates=settings):
        run = StubRun(stack, candidate="bikeshare:forged", approvers=("slack:U0ALICE",)).start()
        try:
            path = f"/api/flow_runs/{run.run_id}/resume"
            body = {"decision": "approve", "approver": "U0ALICE", "evidence_hash": run.hash}
            claimed = prefect_post(url, path, {"run_input": {**body, "channel": "slack"}}, auth)
            assert claimed.json()["status"] == "REJECT", claimed.text
            typed = prefect_post(url, path, {"run_input": body}, auth)
            assert typed.json()["status"] == "ACCEPT", typed.text
            deadline = time.monotonic() + 30
            while not (refused := refusals(stack, run.run_id)) and time.monotonic() < deadline:
                time.sleep(0.3)
            assert [(r["approver"], r["channel"]) for r in refused] == [("prefect-ui", "ui")]
            assert "allow-list" in refused[0]["reason"]
        finally:
            run.close()
    assert [r["outcome"] for r in releases(stack)] == ["promoted"]  # the release by hand only


def refusals(project, run_id: str) -> list[dict]:
    log = project.state_dir / "audit" / "approvals.jsonl"
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return [e for e in entries if e["run_id"] == run_id and e["event"] == "refusal"]


def test_promote_deployment_run_without_a_recorded_approval_is_refused(stack):
    """Parameters cannot stand in for a decision: a made-up retrain run and evidence hash, or
    an approver parameter, and the promotion is refused, audited, and serving is unchanged."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from tasks.release.releases import read_serving

    before = read_serving(stack)
    url, auth = stack.config.endpoints.prefect, prefect_auth(stack.root)
    made_up = str(uuid.uuid4())
    settings = {PREFECT_API_URL: f"{url}/api", PREFECT_API_AUTH_STRING: ":".join(auth)}
    with temporary_settings(updates=settings), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("promote/promote")
        with pytest.raises(Exception):  # noqa: B017 - no `approver` parameter to fill in
            client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"candidate": before.model_tag, "approver": "alice"},
            )
        run = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={
                "candidate": before.model_tag,
                "retrain_run": made_up,
                "evidence_hash": "0" * 16,
            },
        )
        deadline = time.monotonic() + 240
        while not (state := client.read_flow_run(run.id).state).is_final():
            assert time.monotonic() < deadline, "the promote run did not end"
            time.sleep(1)
    assert state.is_failed(), state
    (refused,) = refusals(stack, made_up)
    assert refused["decision"] == "promote" and "no recorded decision" in refused["reason"]
    assert read_serving(stack) == before
    assert [r["outcome"] for r in releases(stack)] == ["promoted"]


def test_cli_as_someone_else_is_refused_unless_configured(stack):
    run = str(uuid.uuid4())
    done = driftloop(stack.root, "approve", run, "--as", "alice", "--evidence", "x", check=False)
    assert done.returncode == 2
    assert "approval.cli_as" in done.stderr and "Traceback" not in done.stderr + done.stdout
    no_hash = driftloop(stack.root, "approve", run, check=False)
    assert no_hash.returncode == 2 and "--evidence" in no_hash.stderr
