"""The one record of what is serving (serving.json), and the log of every roll-forward attempt.

`serving.json` names the release that takes traffic now; it is replaced atomically only once a
release has passed every check. `audit/releases.jsonl` is append-only: each attempt with its
outcome (promoted, rolled_back, failed), the stage it reached and why it failed. Rollback
targets and `driftloop_rollouts_total` are both read from it.
"""

from __future__ import annotations

import fcntl
import json
import logging
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ValidationError

from config.loader import Project


class Release(BaseModel):
    bento: str
    model_tag: str
    url: str
    labels: dict[str, str]
    started_at: str = ""
    slot: str | None = None  # blue | green behind the stack's nginx; None when served alone
    how: Literal["promote", "rollback", "release"] = "promote"  # release: put in by hand
    released_by: str = ""  # the OS user who ran `driftloop release` (or `rollback`)


def serving_file(project: Project):
    return project.state_dir / "serving.json"


def record_serving(project: Project, release: Release) -> Release:
    release = release.model_copy(
        update={"started_at": release.started_at or datetime.now(UTC).isoformat(timespec="seconds")}
    )
    path = serving_file(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(release.model_dump_json(indent=2))
    tmp.replace(path)  # atomic: readers never see half a record
    return release


def clear_serving(project: Project) -> None:
    serving_file(project).unlink(missing_ok=True)


def read_serving(project: Project) -> Release | None:
    path = serving_file(project)
    if not path.is_file():
        return None
    return Release.model_validate(json.loads(path.read_text()))


# ---------------------------------------------------------------- the log of attempts

Outcome = Literal["promoted", "rolled_back", "failed"]


class Attempt(BaseModel):
    """One roll-forward (or rollback): what was tried, how it ended and why."""

    at: str
    release: Release
    outcome: Outcome
    action: Literal["promote", "rollback", "release"] = "promote"
    stage: str = ""  # the step that failed: build, start, smoke, shadow, switch, watch
    reason: str = ""
    previous: str | None = None  # the bento serving before the attempt
    shadow: str = ""  # what the shadow stage saw before the switch (or why it did not run)


def attempts_file(project: Project):
    return project.state_dir / "audit" / "releases.jsonl"


def append_attempt(project: Project, attempt: Attempt) -> None:
    path = attempts_file(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        fcntl.flock(out, fcntl.LOCK_EX)  # one line per writer, never interleaved
        out.write(attempt.model_dump_json() + "\n")


def read_attempts(project: Project) -> list[Attempt]:
    path = attempts_file(project)
    if not path.is_file():
        return []
    attempts = []
    for line in path.read_text().splitlines():
        try:
            attempts.append(Attempt.model_validate_json(line))
        except (ValidationError, ValueError):
            logging.getLogger("driftloop.releases").warning("skipping a bad line in %s", path)
    return attempts


def previous_release(project: Project) -> Release | None:
    """The latest promoted release that is not the one serving now: where a rollback goes."""
    current = read_serving(project)
    for attempt in reversed(read_attempts(project)):
        if attempt.outcome == "promoted" and (
            current is None or attempt.release.bento != current.bento
        ):
            return attempt.release
    return None


def rollout_counts(project: Project) -> dict[str, int]:
    counts: dict[str, int] = {}
    for attempt in read_attempts(project):
        counts[attempt.outcome] = counts.get(attempt.outcome, 0) + 1
    return counts


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
