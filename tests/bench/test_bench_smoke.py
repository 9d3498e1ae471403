"""Each benchmark at its smallest size, so the scripts cannot rot.

Goals are not asserted (the machine is shared and timings are noisy); what is asserted is that
every case prints one parseable JSON line with its numbers, goals and environment, and the
deterministic facts: verdicts equal Evidently's, the new bento answers after a roll-forward,
a drifted window is reported and notified while a quiet one is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV_KEYS = {"python", "bentoml", "evidently", "prefect", "numpy", "cpus"}


def run_bench(script: str, *args: str, timeout: float = 600) -> list[dict]:
    done = subprocess.run(
        [sys.executable, f"bench/{script}.py", "--size", "small", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout[-2000:]
    for line in lines:
        assert {"bench", "case", "goals", "ok", "env"} <= set(line)
        assert set(line["env"]) >= ENV_KEYS
        for name, g in line["goals"].items():
            assert {"value", "op", "target", "pass"} <= set(g), name
            assert g["value"] is not None, f"{line['case']}: goal {name} not measured"
        assert line["ok"] == all(g["pass"] for g in line["goals"].values())
    return lines


def by_bench(lines: list[dict], bench: str) -> list[dict]:
    return [line for line in lines if line["bench"] == bench]


def test_checks_agree_with_evidently():
    (line,) = run_bench("bench_checks", timeout=300)
    assert line["rows"] == 10_000 and line["columns"] == "20+3"
    assert line["verdicts_equal_preset"] == line["scores_equal_preset"] == "23/23"
    assert line["verdicts_equal_limit"] == "23/23"
    # the 0.5 sd shifts and the swapped categories drift; 0 and 0.05 sd, and 2 pp, do not
    assert line["drifted_columns"] == sorted(
        [f"n{i:02d}_shift0.5" for i in range(2, 20, 3)] + ["c02_k200_swap"]
    )
    for key in ("checks_s", "limit_s", "preset_s", "read_s", "rss_peak_mib", "frames_mib"):
        assert line[key] > 0, key
    assert set(line["goals"]) == {"checks_over_limit", "verdicts_equal_preset", "rss_over_frames"}


@pytest.mark.integration
def test_window_read_and_sampling():
    lines = run_bench("bench_window", timeout=300)
    read, on_s3 = by_bench(lines, "read")
    assert read["rows"] == 20_000 and read["compaction_rows"] == 40_000  # both tables
    assert read["files_compacted"] == 48 < read["files_uncompacted"]
    # the same stores on the S3-API server read back the same rows (asserted in the script)
    assert on_s3["store"] == "s3" and on_s3["rows"] == 20_000 and on_s3["compacted_s"] > 0
    (memory,) = by_bench(lines, "sample_memory")
    assert (memory["window_rows"], memory["checked_rows"]) == (20_000, 5_000)
    agreement = {line["window"]: line for line in by_bench(lines, "sample_agreement")}
    assert agreement["quiet"]["drifted_full"] == []
    assert agreement["drift"]["drifted_full"] == sorted(
        [f"n{i:02d}_shift0.5" for i in range(2, 20, 3)] + ["c02_k200_swap"]
    )


@pytest.mark.integration
def test_monitor_flow_cost_and_notice():
    lines = run_bench("bench_monitor")
    lines_by_store = {"local": [], "s3": []}
    for line in by_bench(lines, "monitor"):
        lines_by_store[line["store"]].append(line)
    monitor = {line["window"]: line for line in lines_by_store["local"]}
    (on_s3,) = lines_by_store["s3"]  # the quiet window, read from the S3-API server
    assert on_s3["window"] == "quiet" and on_s3["verdict"] == "no_drift"
    assert on_s3["rows_checked"] == monitor["quiet"]["rows_checked"] == 10_000
    assert monitor["quiet"]["verdict"] == "no_drift" and not monitor["quiet"]["report_written"]
    assert monitor["drift"]["verdict"] == "drift" and monitor["drift"]["report_written"]
    for line in monitor.values():
        assert line["flow_s"] > line["check_s"] > 0
    (notice,) = by_bench(lines, "notice")
    assert notice["notices"] == 1 and notice["result_to_notice_s"] >= 0


@pytest.mark.integration
def test_serving_rollforward_and_approval():
    lines = run_bench("bench_serving")
    serving = {line["batch"]: line for line in by_bench(lines, "serving")}
    assert set(serving) == {1, 64}
    for line in serving.values():
        assert line["failed"] == 0
        assert line["requests_per_s_capture_on"] > 0 and line["requests_per_s_capture_off"] > 0
        assert line["rows_per_s_inprocess"] > 0 and line["rows_per_s_plain"] > 0
        assert set(line["goals"]) == {
            "capture_cost",
            "served_over_plain",
            "p99_over_plain",
            "capture_cost_cpu",
            "served_over_plain_cpu",
        }
        # every server did work under load, and the ratio is of those per-request costs
        on, plain = (line[f"server_cpu_ms_per_request_{k}"] for k in ("capture_on", "plain"))
        assert on > 0 and plain > 0 and line["served_over_plain_cpu"] > 0
        # one repeat at this size: its pair is the ratio, and the load's own cost is measured
        (pair,) = line["on_over_plain_per_repeat"]
        assert line["served_over_plain"] == round(pair, 3) > 0
        assert len(line["on_over_off_per_repeat"]) == 1
        assert line["load_cpu_ms_per_request"] > 0
    batching = {line["concurrency"]: line for line in by_bench(lines, "batching")}
    assert set(batching) == {8, 32}
    for line in batching.values():  # BentoML sheds load with 503s when it must: counted, reported
        assert line["requests_per_s_batched"] > 0 and line["requests_per_s_plain"] > 0
        assert set(line["goals"]) == {"batched_over_plain", "p99_over_plain", "failed"}
        (pair,) = line["batched_over_plain_per_repeat"]
        assert line["batched_over_plain"] == round(pair, 3) > 0
    (roll,) = by_bench(lines, "rollforward")
    assert roll["new_bento_answering"] and roll["switch_requests"] > 0
    (approval,) = by_bench(lines, "approval_to_serving")
    assert approval["latency_s"] > approval["build_s"] > 0


def test_estimation_band_and_cost():
    lines = run_bench("bench_estimation", timeout=300)
    calibration = {line["case"]: line for line in by_bench(lines, "estimation")}
    assert set(calibration) == {"diabetes", "breast_cancer", "digits"}
    assert {k: (v["method"], v["primary"]) for k, v in calibration.items()} == {
        "diabetes": ("dle", "rmse"),
        "breast_cancer": ("cbpe", "roc_auc"),
        "digits": ("cbpe", "f1_macro"),
    }
    for line in calibration.values():
        assert line["windows"] == 8 and 0 <= line["coverage"] <= 1
        assert line["mae"] >= 0 and line["band_width"] > 0
        assert line["nannyml"] == "not requested (--nannyml)"
        assert set(line["goals"]) == {"coverage"}
    (cost,) = by_bench(lines, "estimation_cost")
    assert cost["rows"] == 20_000 and cost["check_verdict"] == "no_drift"
    assert cost["estimate_s"] > 0 and cost["checks_s"] > 0
    assert set(cost["goals"]) == {"estimate_over_checks"}
