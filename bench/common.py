"""What every benchmark shares: one JSON line per case, goals as ratios, the run's environment.

The machine the numbers come from is shared and noisy, so a line never states a goal in seconds:
each goal is a ratio against a limit or an alternative measured in the same process and run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("small", "full")
PACKAGES = ("bentoml", "evidently", "prefect", "numpy", "pandas", "scipy", "pyarrow", "httpx")


def pin_threads() -> None:
    """The limit is single-threaded by definition: pin BLAS/OpenMP pools before numpy loads."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def on_path() -> None:
    """Make the project importable when a script runs as `python bench/<name>.py`."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def goal(value: float | str | bool, op: str, target: float | str | bool) -> dict[str, Any]:
    """A goal as data: the measured value, the comparison, the target and whether it holds."""
    checks: dict[str, Callable[[Any, Any], bool]] = {
        "<=": lambda a, b: a is not None and a <= b,
        ">=": lambda a, b: a is not None and a >= b,
        "==": lambda a, b: a == b,
    }
    return {"value": value, "op": op, "target": target, "pass": bool(checks[op](value, target))}


def ratio(numerator: float, denominator: float, digits: int = 3) -> float | None:
    return None if not denominator else round(numerator / denominator, digits)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def environment() -> dict[str, Any]:
    """Versions and machine facts that travel with every line (absolute times need them)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        **versions,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def emit(line: dict[str, Any]) -> None:
    """One case, one JSON line on stdout; `ok` says whether every goal held."""
    goals = line.get("goals", {})
    line["ok"] = all(g["pass"] for g in goals.values())
    line["env"] = environment()
    print(json.dumps(line), flush=True)


def rss_mib(field: str = "VmRSS") -> float | None:
    """This process's resident set (VmRSS) or its peak so far (VmHWM), from /proc."""
    try:
        for row in Path("/proc/self/status").read_text().splitlines():
            if row.startswith(field + ":"):
                return int(row.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_child(script: str, *args: str) -> dict:
    """Run `script` with `args` in a fresh interpreter (a clean memory baseline); its last
    stdout line is its JSON result."""
    done = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {args[0]} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
