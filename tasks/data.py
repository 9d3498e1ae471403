"""The training data under DVC: create it on a fresh clone, track it, push it, pull it (through
the remote `data.remote` names: tasks/dvc_remote.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from config.loader import ConfigError, Project
from model.frames import read_table, write_table
from model.lineage import dvc_recorded_md5, file_md5
from tasks.commands import CommandError, bin_path, run
from tasks.dvc_remote import use_remote


class DataRevError(CommandError):
    """A data version cannot be read back intact; the message names it and the fix."""


@dataclass(frozen=True)
class DataState:
    path: str
    md5: str
    action: str  # "present" | "pulled" | "created"


def ensure_data(project: Project) -> DataState:
    """Make `data.path` present and pushed: pull it, or create it from `data.source`.

    What arrives must be the data rev its `.dvc` file records: a pull that brings other bytes
    (a corrupt cache or remote object) is removed and refused, and data recreated from the
    source is only adopted when it is the same rev. A present file that is another rev (as
    after a `git checkout`, which does not run `dvc checkout`) is refused with nothing
    changed. Nothing else gets tracked silently: only a file with no `.dvc` yet is added."""
    use_remote(project)
    path = project.data_path
    recorded = dvc_recorded_md5(path)
    if recorded and path.is_file():
        _refuse_other_rev(project, recorded)
    action = "present"
    pull_error = ""
    if not path.is_file() and recorded:
        pull_error = _try_pull(project)
        if path.is_file():
            action = "pulled"
            _refuse_corrupt_pull(project, recorded)
    if not path.is_file():
        _write_from_source(project)
        action = f"created (dvc pull failed: {pull_error})" if pull_error else "created"
        if recorded and file_md5(path) != recorded:
            path.unlink()
            raise DataRevError(
                f"{_rel(project)}: data rev {recorded[:12]} could not be pulled ({pull_error}) "
                f"and data.source gives other data. Restore the object on the DVC remote "
                f"and run `driftloop data` again, or, to adopt the source's data, "
                f"`dvc add {_rel(project)}` and commit its .dvc file"
            )
    track(project)
    return DataState(path=project.config.data.path, md5=file_md5(path), action=action)


def _rel(project: Project) -> str:
    return str(project.data_path.relative_to(project.root))


def _refuse_other_rev(project: Project, recorded: str) -> None:
    """The present file must be the recorded rev; otherwise say so, and the two ways out,
    without touching the file or its `.dvc` (the choice is the user's, not `driftloop data`'s)."""
    actual = file_md5(project.data_path)
    if actual == recorded:
        return
    rel = _rel(project)
    if _cache_path(project, recorded).is_file() or _try_fetch(project, recorded):
        cached = _cache_path(project, actual).is_file()
        force, kept = ("", "still in the DVC cache") if cached else ("--force ", "not cached")
        restore = (
            f"`dvc checkout {force}{rel}` to restore the recorded rev (discarding the present "
            f"bytes, {kept})"
        )
    else:
        restore = (
            f"restore the recorded rev: `dvc checkout {rel}` cannot, since rev "
            f"{recorded[:12]} is in neither the DVC cache nor the remote; `dvc push "
            f"{rel}.dvc` from a clone that has it, then `dvc pull --force {rel}` here"
        )
    raise DataRevError(
        f"{rel} is not the data rev {rel}.dvc records (md5 {actual[:12]}, recorded "
        f"{recorded[:12]}), as after a `git checkout` of another commit; nothing was changed. "
        f"Either {restore}, or `dvc add {rel}` to adopt the present bytes on purpose (then "
        f"commit {rel}.dvc); then run `driftloop data` again"
    )


def _try_fetch(project: Project, md5: str) -> bool:
    """`dvc fetch` the recorded rev into the cache (the workspace is left alone); is it there?"""
    with contextlib.suppress(CommandError):
        run([bin_path("dvc"), "fetch", "-q", _rel(project) + ".dvc"], project.root, hint="")
    return _cache_path(project, md5).is_file()


def _refuse_corrupt_pull(project: Project, recorded: str) -> None:
    actual = file_md5(project.data_path)
    if actual == recorded:
        return
    project.data_path.unlink()
    cached = _cache_path(project, recorded)
    cached.unlink(missing_ok=True)  # a bad object would only come back on the next checkout
    raise DataRevError(
        f"{_rel(project)}: `dvc pull` brought corrupt data (md5 {actual[:12]}, "
        f"{_rel(project)}.dvc records {recorded[:12]}); removed it and its cache object. "
        f"The remote's object files/md5/{recorded[:2]}/{recorded[2:]} is damaged: restore it "
        "from a good copy (`dvc push` from a clone that has it), then run `driftloop data`"
    )


def verify_data(project: Project) -> None:
    """Before training: `data.path` must be exactly the rev its `.dvc` file records, so a
    partial pull or a corrupt cache object never reaches `dvc repro`."""
    recorded = dvc_recorded_md5(project.data_path)
    if recorded is None:
        return  # not tracked yet: `driftloop data` tracks it
    rel = _rel(project)
    if not project.data_path.is_file():
        raise DataRevError(
            f"{rel} is missing (its .dvc file records data rev {recorded[:12]}); "
            "run `driftloop data` (dvc pull) before training"
        )
    actual = file_md5(project.data_path)
    if actual != recorded:
        raise DataRevError(
            f"{rel} is not the data rev {rel}.dvc records (md5 {actual[:12]}, recorded "
            f"{recorded[:12]}): it is partial or corrupt, or was changed without `dvc add`. "
            f"Restore it with `dvc checkout {rel}` (or delete it and run `driftloop data`), "
            f"or run `dvc add {rel}` if you changed it on purpose; nothing was trained"
        )


def create_from_source(project: Project) -> None:
    """Write data.path from data.source and adopt it on purpose: when its `.dvc` file records
    another rev, `dvc add` it (the demo's reset to the winter data after a retrain). A plain
    `driftloop data` never calls this; it recreates only a missing file, and only as its rev."""
    _write_from_source(project)
    recorded = dvc_recorded_md5(project.data_path)
    if recorded and file_md5(project.data_path) != recorded:
        run(
            [bin_path("dvc"), "add", "-q", _rel(project)],
            project.root,
            hint="check that the project is a DVC repo",
        )


def _write_from_source(project: Project) -> None:
    source = project.config.data.source
    if source is None:
        raise ConfigError(
            f"data.path: {project.data_path} is missing and cannot be pulled from the DVC "
            "remote; copy your dataset there or configure data.source"
        )
    frame = read_table(project.resolve(source.path))
    if source.query:
        try:
            frame = frame.query(source.query)
        except Exception as exc:  # pandas raises many types for a bad expression
            raise ConfigError(f"data.source.query: {source.query!r} failed: {exc}") from None
    write_table(frame, project.data_path)


def track(project: Project) -> None:
    """`dvc add` (a no-op when unchanged) then `dvc push` to the configured remote."""
    rel = str(project.data_path.relative_to(project.root))
    dvc = bin_path("dvc")
    use_remote(project)
    run([dvc, "add", "-q", rel], project.root, hint="check that the project is a DVC repo")
    run(
        [dvc, "push", "-q", rel + ".dvc"],
        project.root,
        hint="check the DVC remote (data.remote; `dvc remote list --local`)",
    )


def _try_pull(project: Project) -> str:
    """`dvc pull` the data; '' when it worked, else the reason in DVC's words."""
    try:
        run([bin_path("dvc"), "pull", "-q", _rel(project) + ".dvc"], project.root, hint="")
    except CommandError as exc:
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else "dvc pull failed"
    return ""


def _cache_path(project: Project, md5: str) -> Path:
    return project.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def read_data_rev(project: Project, md5: str, git_commit: str | None = None) -> pd.DataFrame:
    """The training data exactly as it was at `md5`: from the DVC cache, else through DVC at the
    commit that recorded it (fetching from the remote). The bytes are checked against md5."""
    rel = project.config.data.path
    raw = _cached_bytes(project, md5)
    if raw is None and git_commit and git_commit != "unknown":
        import dvc.api  # here: a second to import, and only a cache miss needs it

        use_remote(project)
        try:
            raw = dvc.api.read(rel, repo=str(project.root), rev=git_commit, mode="rb")
        except Exception as exc:  # dvc raises many types (missing rev, remote, path)
            raise DataRevError(
                f"data rev {md5[:12]} of {rel} could not be read through DVC at commit "
                f"{git_commit[:12]} ({type(exc).__name__}: {exc}); run `dvc fetch` or check "
                "the remote"
            ) from None
    if raw is None:
        raise DataRevError(
            f"data rev {md5[:12]} of {rel} is not in the DVC cache and no commit is recorded; "
            "run `dvc pull` at the commit that trained the serving model"
        )
    if hashlib.md5(raw).hexdigest() != md5:
        raise DataRevError(
            f"data rev {md5[:12]} of {rel} is corrupt (content hash differs); remove it from "
            "the DVC cache and run `dvc pull` again"
        )
    reader = pd.read_parquet if Path(rel).suffix == ".parquet" else pd.read_csv
    return reader(io.BytesIO(raw))


def _cached_bytes(project: Project, md5: str) -> bytes | None:
    path = _cache_path(project, md5)
    return path.read_bytes() if path.is_file() else None
