"""`make demo`'s story, unattended, in a fresh clone: drift detected, retrain triggered, the
candidate beats the champion, the approval recorded, no failed request while rolling forward,
the error lower afterwards, and nothing left running."""

from __future__ import annotations

import re
from getpass import getuser

import pytest

from tests.integration.test_stack import free_endpoints, supervisor_running
from tests.support import copy_project, driftloop, edit_config

pytestmark = pytest.mark.integration


def test_demo_tells_the_whole_story(tmp_path):
    root = copy_project(tmp_path)
    edit_config(root, free_endpoints)
    out = driftloop(root, "demo", "--approve", timeout=1200).stdout
    flat = re.sub(r"\s+", " ", out)

    # drift detected and the policy's retrain triggered on the second bad month
    assert flat.count("monitor: drift,") >= 2
    assert "2 bad windows in a row" in flat
    # the candidate beats the champion on the recent window (the gate), then the approval
    champion, candidate = map(
        float,
        re.search(r"gate rmse: champion ([\d.]+) -> candidate ([\d.]+) \(pass\)", flat).groups(),
    )
    assert candidate < champion
    assert f"decision: approved by {getuser()} via cli" in flat
    # zero failed requests while the candidate rolled forward under live traffic
    sent, failed = map(
        int, re.search(r"(\d+) requests during the roll-forward, (\d+) failed", flat).groups()
    )
    assert sent > 0 and failed == 0
    # the error on the month after is lower with the approved model than with the old one
    old, new = map(
        float,
        re.search(
            r"rmse ([\d.]+) with the previous model, ([\d.]+) with the approved one", flat
        ).groups(),
    )
    assert new < old
    # each month's quality estimated before its labels, the realised value beside it
    estimates = re.findall(
        r"estimated rmse ([\d.]+) \(90% band ([\d.]+) to ([\d.]+)\) before the labels; "
        r"realised ([\d.]+)",
        flat,
    )
    assert len(estimates) >= 3, flat
    for value, lower, upper, _ in estimates:
        assert float(lower) <= float(value) <= float(upper)
    # lineage names the retrain run and the approver; the stack is gone
    assert f"approved by cli:{getuser()} at " in re.sub(r"[│┃ ]+", " ", out)
    assert "stack stopped" in flat
    assert not supervisor_running(root)
