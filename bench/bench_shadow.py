"""The shadow stage's cost to clients: p99 through nginx while live traffic is mirrored to a
candidate, against the p99 of the same paced load with no mirror, in the same run.

A fresh copy with its real stack and the first release serving; a second bento of the same model
starts in the idle slot as a shadow stage starts it (its secret, its shadow log). A paced batch-1
load (`bench.load`, from a second process, loopback) runs through nginx for three windows: mirror
off, on, off. The two off windows pooled are the baseline. Goal: p99 with the mirror <= 1.1x
without, and no failed client request.

Usage: python bench/bench_shadow.py [--size small|full]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, goal, pin_threads, ratio

pin_threads()

import numpy as np  # noqa: E402

from bench.live import live_stack  # noqa: E402
from bench.load import finish, start_load  # noqa: E402

SETTINGS = {"small": {"window_s": 6.0, "rate": 15.0}, "full": {"window_s": 20.0, "rate": 25.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SETTINGS), default="small")
    s = SETTINGS[parser.parse_args().size]
    from tasks.release.package import build_bento
    from tasks.release.rollout import idle_slot
    from tasks.release.serving import slot_port, start_slot, stop_slot, switch_shadow
    from tasks.release.shadow import read_shadow_log, shadow_dir, shadow_env

    with tempfile.TemporaryDirectory() as tmp, live_stack(Path(tmp)) as live:
        project = live.project
        from tasks.release.releases import read_serving

        slot = idle_slot(read_serving(project))
        env = shadow_env(project, slot)
        start_slot(project, slot, build_bento(project, live.bento.model_tag).tag, env)
        records = read_records(live)
        out = Path(tmp) / "shadow.json"
        window = s["window_s"]
        process = start_load(
            f"{live.url}/predict",
            json.dumps({"records": records}).encode(),
            out,
            concurrency=8,
            max_requests=1_000_000,
            max_seconds=3 * window + 60,
            rate=s["rate"],
        )
        marks = [time.time()]
        time.sleep(window)
        marks.append(time.time())
        switch_shadow(project, slot_port(project, slot), env["DRIFTLOOP_MIRROR_SECRET"])
        time.sleep(window)
        switch_shadow(project, None)
        marks.append(time.time())
        time.sleep(window)
        marks.append(time.time())
        done = finish(process, out, timeout=120, stop=True)
        mirrored = len(read_shadow_log(shadow_dir(project, slot))[0])
        stop_slot(project, slot)

    settle = 1.0  # a reload's first second belongs to neither window
    off = [done.window(marks[0] + settle, marks[1]), done.window(marks[2] + settle, marks[3])]
    on = done.window(marks[1] + settle, marks[2])
    off_seconds = np.concatenate([w.seconds for w in off])
    p99_off = float(np.percentile(off_seconds, 99) * 1000) if len(off_seconds) else 0.0
    p99_on = on.percentile_ms(99) or 0.0
    p99_ratio = ratio(p99_on, p99_off)
    emit(
        {
            "bench": "shadow",
            "rate_per_s": s["rate"],
            "requests": len(done.status),
            "failed": done.failed,
            "mirrored_rows": mirrored,
            "p99_ms_off": round(p99_off, 2),
            "p99_ms_shadow": p99_on,
            "p99_shadow_over_off": p99_ratio,
            "goals": {
                "failed": goal(done.failed, "==", 0),
                "p99_shadow_over_off": goal(p99_ratio, "<=", 1.1),
            },
        }
    )


def read_records(live) -> list[dict]:
    from tasks.release.traffic import sample_records

    return sample_records(live.project, 1).records


if __name__ == "__main__":
    main()
