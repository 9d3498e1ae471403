"""Running the real tools (dvc, bentoml, git) with this venv's binaries first on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


class CommandError(RuntimeError):
    """A tool exited non-zero; the message carries its own words and what to do next."""


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment whose PATH starts with this interpreter's bin dir, so `python -m model.x`
    inside dvc.yaml runs in the same venv as the caller."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env.update(extra or {})
    return env


def run(
    args: list[str],
    cwd: Path,
    *,
    hint: str,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> str:
    """Run a tool; on failure raise CommandError with its stderr tail and `hint`."""
    try:
        done = subprocess.run(
            args, cwd=cwd, env=tool_env(env), capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError:
        raise CommandError(f"`{args[0]}` is not installed; run `make setup`") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"`{' '.join(args[:3])}` took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise CommandError(
            f"`{' '.join(args[:4])}` failed (exit {done.returncode}):\n{tail}\n{hint}"
        )
    return done.stdout


def bin_path(name: str) -> str:
    """A console script of this venv (dvc, bentoml), falling back to PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
