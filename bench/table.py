"""The JSON lines of a benchmark run as the markdown tables of docs/benchmarks.md.

Usage: python bench/table.py RESULTS.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = {  # per bench: (heading, key) in table order
    "checks": [
        ("rows", "rows"),
        ("ours s", "checks_s"),
        ("limit s", "limit_s"),
        ("ours / limit", "checks_over_limit"),
        ("1 thread / limit", "checks_1thread_over_limit"),
        ("preset s", "preset_s"),
        ("preset / limit", "preset_over_limit"),
        ("read s", "read_s"),
        ("verdicts = preset", "verdicts_equal_preset"),
        ("scores = preset", "scores_equal_preset"),
        ("peak RSS / frames", "rss_over_frames"),
        ("frames MiB", "frames_mib"),
    ],
    "serving": [
        ("batch", "batch"),
        ("req/s capture on", "requests_per_s_capture_on"),
        ("req/s capture off", "requests_per_s_capture_off"),
        ("rows/s served", "rows_per_s_capture_on"),
        ("rows/s in-process", "rows_per_s_inprocess"),
        ("rows/s in-process from records", "rows_per_s_inprocess_from_records"),
        ("served / in-process", "served_over_inprocess"),
        ("rows/s plain", "rows_per_s_plain"),
        ("served / plain", "served_over_plain"),
        ("capture cost", "capture_cost"),
        (
            "CPU ms/req on / off / plain",
            (
                "server_cpu_ms_per_request_capture_on",
                "server_cpu_ms_per_request_capture_off",
                "server_cpu_ms_per_request_plain",
            ),
        ),
        ("served / plain, CPU", "served_over_plain_cpu"),
        ("capture cost, CPU", "capture_cost_cpu"),
        ("p50/p99 ms on", ("p50_ms_capture_on", "p99_ms_capture_on")),
        ("p50/p99 ms off", ("p50_ms_capture_off", "p99_ms_capture_off")),
        ("p50/p99 ms in-process", ("p50_ms_inprocess", "p99_ms_inprocess")),
    ],
    "rollforward": [
        ("load req/s", "rate_per_s"),
        ("requests", "requests"),
        ("failed", "failed"),
        ("go_live s", "switch_s"),
        ("p99 ms steady", "p99_ms_steady"),
        ("p99 ms switch", "p99_ms_switch"),
        ("switch / steady", "p99_switch_over_steady"),
    ],
    "approval_to_serving": [
        ("approval to answer s", "latency_s"),
        ("build alone s", "build_alone_s"),
        ("ready alone s", "ready_alone_s"),
        ("latency - parts s", "latency_minus_parts_s"),
    ],
    "monitor": [
        ("rows", "rows"),
        ("window", "window"),
        ("verdict", "verdict"),
        ("report", "report_written"),
        ("flow s", "flow_s"),
        ("check s", "check_s"),
        ("read window s", "read_window_s"),
        ("flow / check", "flow_over_check"),
    ],
    "notice": [("rows", "rows"), ("result to notice s", "result_to_notice_s")],
    "estimation": [
        ("dataset", "case"),
        ("method", "method"),
        ("primary", "primary"),
        ("windows", "windows"),
        ("rows/window", "window_rows"),
        ("held-out rows", "held_out_rows"),
        ("coverage", "coverage"),
        ("MAE of estimate", "mae"),
        ("band width", "band_width"),
        ("coverage per metric", "coverage_per_metric"),
        ("NannyML", "nannyml"),
    ],
    "shadow": [
        ("load req/s", "rate_per_s"),
        ("requests", "requests"),
        ("failed", "failed"),
        ("mirrored rows", "mirrored_rows"),
        ("p99 ms off", "p99_ms_off"),
        ("p99 ms shadow", "p99_ms_shadow"),
        ("shadow / off", "p99_shadow_over_off"),
    ],
    "estimation_cost": [
        ("rows", "rows"),
        ("estimated on", "max_rows"),
        ("estimate s", "estimate_s"),
        ("check s", "checks_s"),
        ("estimate / check", "estimate_over_checks"),
    ],
}


def cell(line: dict[str, Any], key: str | tuple[str, ...]) -> str:
    if isinstance(key, tuple):
        return " / ".join(cell(line, k) for k in key)
    value = line.get(key)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def goals(line: dict[str, Any]) -> str:
    parts = []
    for name, g in line.get("goals", {}).items():
        mark = "pass" if g["pass"] else "**MISS**"
        parts.append(f"{name} {g['op']} {g['target']}: {mark}")
    return "; ".join(parts)


def render(lines: list[dict[str, Any]]) -> str:
    out = []
    for bench, columns in COLUMNS.items():
        rows = [line for line in lines if line.get("bench") == bench]
        if not rows:
            continue
        heads = [h for h, _ in columns] + ["goals"]
        out.append(f"### {bench}\n")
        out.append("| " + " | ".join(heads) + " |")
        out.append("|" + "---|" * len(heads))
        for line in rows:
            cells = [*(cell(line, k) for _, k in columns), goals(line)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """JSON lines only: anything else a tool printed is skipped."""
    lines = []
    for text in path.read_text().splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


if __name__ == "__main__":
    print(render(read_lines(Path(sys.argv[1]))))
