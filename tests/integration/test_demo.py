"""`driftloop demo` in a fresh clone tells the story so far and leaves nothing running."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_stack import free_endpoints, supervisor_running
from tests.support import copy_project, driftloop, edit_config

pytestmark = pytest.mark.integration


def test_demo_runs_the_loop_so_far_and_stops(tmp_path):
    root = copy_project(tmp_path)
    edit_config(root, free_endpoints)
    out = driftloop(root, "demo", timeout=900).stdout
    for step in (
        "1. the local stack",
        "2. the first model learns winter",
        "3. bentoml build",
        "4. spring arrives",
        "5. lineage of what is serving",
    ):
        assert step in out
    # every replayed request answered; the drift seen; the policy fired on the second bad month
    assert re.findall(r"(\d+) requests, (\d+) failed", out) == [
        ("719", "0"),
        ("744", "0"),
        ("720", "0"),
    ]
    assert out.count("monitor: drift,") == 3
    assert "2 bad windows in a row" in out
    assert "what is serving" in out and "data rev (DVC md5)" in out
    assert "stack stopped" in out
    assert not supervisor_running(root)
    assert "nothing is serving" not in driftloop(root, "lineage", check=False).stdout
