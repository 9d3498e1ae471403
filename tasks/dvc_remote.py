"""The DVC remote from config: `data.remote`, a directory or an S3-API bucket.

`.dvc/config` (committed) names the local directory remote of a fresh clone; `data.remote` is
applied on top of it in `.dvc/config.local`, which is never committed, so a machine's remote and
endpoint stay out of git and credentials stay in the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY), where DVC's S3 client reads them. Every push and pull of the loop
(`driftloop data`, the retrain) calls `use_remote` first; it runs DVC only when the setting
changed.
"""

from __future__ import annotations

import os
from pathlib import Path

from config.loader import Project
from model.store import ENDPOINT_ENV, StoreError, is_url, open_store
from tasks.commands import CommandError, bin_path, run

REMOTE = "driftloop"  # the remote's name in .dvc/config.local


def remote_settings(project: Project) -> dict[str, str]:
    """What .dvc/config.local must say of the remote: its url, and the endpoint for S3."""
    remote = project.config.data.remote
    if not is_url(remote):
        return {"url": os.path.normpath(project.resolve(remote))}
    endpoint = project.config.storage.endpoint_url or os.environ.get(ENDPOINT_ENV, "")
    try:  # the same checks (and messages) as the capture store's
        open_store(remote, base=project.root, endpoint_url=endpoint)
    except StoreError as exc:
        raise CommandError(f"data.remote: {exc}") from None
    return {"url": remote.rstrip("/"), **({"endpointurl": endpoint} if endpoint else {})}


def use_remote(project: Project) -> None:
    """Make `data.remote` DVC's default remote for this checkout (a no-op when it already is).

    The committed remote (a fresh clone's local directory) needs no override, so a checkout
    that keeps the default has no .dvc/config.local of ours, as before."""
    wanted, root = remote_settings(project), project.root
    current = local_remote(root)
    if current == wanted:
        return
    dvc, hint = bin_path("dvc"), "check data.remote and storage.endpoint_url in the config"
    if wanted == committed_remote(root):
        if current is not None:  # back to the default: drop the override
            run([dvc, "remote", "remove", "--local", REMOTE], root, hint=hint)
        return
    run(
        [dvc, "remote", "add", "--local", "--force", "--default", REMOTE, wanted["url"]],
        root,
        hint=hint,
    )
    if "endpointurl" in wanted:
        modify = [dvc, "remote", "modify", "--local", REMOTE, "endpointurl"]
        run([*modify, wanted["endpointurl"]], root, hint=hint)


def local_remote(root: Path) -> dict[str, str] | None:
    """Our override in .dvc/config.local as {url, endpointurl?}; None when there is none."""
    config = _read(root / ".dvc" / "config.local")
    if config.get("core", {}).get("remote") != REMOTE:
        return None
    section = config.get(f'remote "{REMOTE}"', {})
    return {k: section[k] for k in ("url", "endpointurl") if k in section}


def committed_remote(root: Path) -> dict[str, str] | None:
    """The default remote .dvc/config names, its directory made absolute as DVC resolves it."""
    config = _read(root / ".dvc" / "config")
    name = config.get("core", {}).get("remote")
    section = config.get(f'remote "{name}"', {}) if name else {}
    url = section.get("url")
    if not url:
        return None
    if not is_url(url):
        url = os.path.normpath(root / ".dvc" / url)
    return {k: v for k, v in {**section, "url": url}.items() if k in ("url", "endpointurl")}


def _read(path: Path) -> dict:
    from configobj import ConfigObj, ConfigObjError  # DVC's own config reader

    if not path.is_file():
        return {}
    try:
        return ConfigObj(str(path))
    except ConfigObjError:
        return {}  # unreadable: `dvc remote add` says what is wrong with it
