"""A monitor run whose Pushgateway is down: retried, then the run fails loudly with the reason,
and its computed result is saved all the same."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_retrain_gate import capture_labelled_traffic
from tests.support import copy_project, driftloop, edit_config, free_port

pytestmark = pytest.mark.integration


def test_pushgateway_down_fails_loudly_and_keeps_the_result(tmp_path, prefect_server):
    from config.loader import load_project
    from flows.monitor import monitor
    from tasks.monitor.history import history_dir
    from tasks.release.package import bento_info, build_bento, register_model
    from tasks.release.releases import Release, record_serving

    root = copy_project(tmp_path)
    dead = free_port()  # nothing listens here
    edit_config(root, lambda raw: raw["endpoints"].update(pushgateway=f"http://127.0.0.1:{dead}"))
    driftloop(root, "data")
    driftloop(root, "train")
    project = load_project(root / "config/driftloop.yaml")
    bento = build_bento(project, register_model(project))
    record_serving(
        project,
        Release(
            bento=bento.tag,
            model_tag=bento.model_tag,
            url="-",
            labels=bento_info(project, bento.tag)["labels"],
        ),
    )
    capture_labelled_traffic(project, ["May"])

    from datetime import UTC, datetime

    state = monitor(
        start=datetime(2011, 5, 1, tzinfo=UTC),
        end=datetime(2011, 6, 1, tzinfo=UTC),
        config=str(project.path),
        return_state=True,
    )

    assert state.is_failed()
    with pytest.raises(Exception, match=rf"Pushgateway at http://127.0.0.1:{dead} did not accept"):
        state.result()
    (saved,) = (history_dir(project) / "runs").glob("*.json")
    record = json.loads(saved.read_text())
    assert record["verdict"] == "drift" and record["rows"] == 744
    assert record["result"]["drift_share"] > 0.5
