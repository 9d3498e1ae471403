"""The one record of what is serving: which bento, on which port, with which lineage."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel

from config.loader import Project


class Release(BaseModel):
    bento: str
    model_tag: str
    url: str
    labels: dict[str, str]
    started_at: str = ""
    slot: str | None = None  # blue | green behind the stack's nginx; None when served alone


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
