"""`driftloop demo` in a fresh clone runs the loop so far and leaves nothing running."""

from __future__ import annotations

import socket

import pytest

from tests.support import copy_project, driftloop, edit_config, free_port

pytestmark = pytest.mark.integration


def test_demo_trains_serves_predicts_and_stops(tmp_path):
    root = copy_project(tmp_path)
    port = free_port()
    edit_config(root, lambda raw: raw["serving"].update(slot_ports=[port, free_port()]))
    out = driftloop(root, "demo", "--rows", "3").stdout
    for step in ("1. training data", "2. dvc repro", "3. bentoml build", "4. serve", "5. lineage"):
        assert step in out
    assert "what is serving" in out and "data rev (DVC md5)" in out
    assert f"stopped the server on port {port}" in out
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing left listening
    assert "nothing is serving" in driftloop(root, "lineage", check=False).stdout
