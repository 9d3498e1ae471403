"""Where a model came from: the data's DVC md5, the git commit, and a hash of its params."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import BaseModel

from config.loader import Project


class Lineage(BaseModel):
    data_path: str
    data_rev: str  # DVC md5 of the training data file
    data_dirty: bool  # the file differs from what its .dvc file records
    git_commit: str
    git_dirty: bool
    params_hash: str
    trained_at: str


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_recorded_md5(data_path: Path) -> str | None:
    """The md5 that `<file>.dvc` records, i.e. the data rev DVC can fetch again."""
    dvc_file = data_path.with_name(data_path.name + ".dvc")
    if not dvc_file.is_file():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def git_state(root: Path) -> tuple[str, bool]:
    """(commit, dirty) of the repo at root; ("unknown", True) outside git."""
    try:
        commit = _git(root, "rev-parse", "HEAD")
        # dvc.lock is rewritten by `dvc repro` itself while the stages run
        status = _git(
            root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock"
        )
        dirty = bool(status)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown", True
    return commit, dirty


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


def params_hash(project: Project) -> str:
    """Hash of the config sections that decide the model (data, prepare, train)."""
    cfg = project.config
    payload = {k: cfg.model_dump(mode="json")[k] for k in ("data", "prepare", "train")}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def collect(project: Project) -> Lineage:
    actual = file_md5(project.data_path)
    recorded = dvc_recorded_md5(project.data_path)
    commit, dirty = git_state(project.root)
    return Lineage(
        data_path=project.config.data.path,
        data_rev=actual,
        data_dirty=recorded != actual,
        git_commit=commit,
        git_dirty=dirty,
        params_hash=params_hash(project),
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
