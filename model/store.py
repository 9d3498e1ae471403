"""Where a store of files lives: a local directory or an S3-API bucket, behind one filesystem.

The capture store is written by every server process (a local slot or a pod) and read by the
monitor, the retrain and the reports. Pods share no disk, so `capture.path` may be an S3 URL
(`s3://bucket/prefix`); an S3-compatible store (MinIO, Ceph, a cloud's own) is reached through
`storage.endpoint_url`. Everything reads and writes through pyarrow's filesystem layer, so the
same code serves both. Credentials are never in config: pyarrow takes them from the environment
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or the instance's role).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

ENDPOINT_ENV = "DRIFTLOOP_STORAGE_ENDPOINT_URL"  # how a server process learns the endpoint
REGION_ENV = "AWS_DEFAULT_REGION"
# what a process writing to S3 needs from its environment: the standard AWS variables
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_EC2_METADATA_DISABLED",
)
DEFAULT_REGION = "us-east-1"
# a store that is down must fail a flush in seconds (its rows counted dropped), not hang it
CONNECT_TIMEOUT_SECONDS = 3.0
REQUEST_TIMEOUT_SECONDS = 20.0


class StoreError(ValueError):
    """A store location that cannot be used, with what to do about it."""


@dataclass(frozen=True)
class Store:
    """A filesystem and the base path inside it (`bucket/prefix` for S3, absolute for local)."""

    fs: pafs.FileSystem
    root: str
    url: str  # as configured, for messages

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def sub(self, *parts: str) -> Store:
        """The store rooted at `parts` below this one (a table of the capture, say)."""
        return Store(fs=self.fs, root=self.join(*parts), url="/".join([self.url, *parts]))

    def local_path(self, *parts: str) -> Path:
        """The local path of `parts`; only for a local store (StoreError otherwise)."""
        if not self.is_local:
            raise StoreError(f"{self.url} is not a local directory")
        return Path(self.join(*parts))


def as_store(location: Store | str | Path) -> Store:
    """`location` as a Store: a Store as it is, else a directory (absolute, or from the current
    directory) or an s3:// URL reached through DRIFTLOOP_STORAGE_ENDPOINT_URL."""
    if isinstance(location, Store):
        return location
    return open_store(location, base=Path.cwd())


def credential_env() -> dict[str, str]:
    """The AWS variables set in this environment, for a server that writes to an S3 store."""
    return {k: v for k in CREDENTIAL_ENV if (v := os.environ.get(k, "").strip())}


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def open_store(location: str | Path, *, base: Path, endpoint_url: str = "") -> Store:
    """The store at `location`: a directory (relative to `base`) or `s3://bucket[/prefix]`."""
    text = str(location).strip()
    if not is_url(text):
        path = Path(text)
        path = path if path.is_absolute() else base / path
        return Store(fs=pafs.LocalFileSystem(), root=str(path), url=str(path))
    parsed = urlparse(text)
    if parsed.scheme != "s3":
        raise StoreError(
            f"{text!r}: only local directories and s3:// URLs are supported "
            "(for GCS or Azure use their S3-compatible endpoint with storage.endpoint_url)"
        )
    if not parsed.netloc:
        raise StoreError(f"{text!r} names no bucket; write s3://BUCKET/PREFIX")
    root = "/".join(p for p in (parsed.netloc, parsed.path.strip("/")) if p)
    return Store(fs=s3_filesystem(endpoint_url), root=root, url=text.rstrip("/"))


def s3_filesystem(endpoint_url: str = "") -> pafs.S3FileSystem:
    """pyarrow's S3 client; the endpoint from config or DRIFTLOOP_STORAGE_ENDPOINT_URL."""
    endpoint = endpoint_url.strip() or os.environ.get(ENDPOINT_ENV, "").strip()
    options: dict = {
        "region": os.environ.get(REGION_ENV, "").strip() or DEFAULT_REGION,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "request_timeout": REQUEST_TIMEOUT_SECONDS,
        "allow_delayed_open": True,  # a small file is one PUT, not a three-request upload
    }
    if endpoint:
        parsed = urlparse(endpoint if is_url(endpoint) else f"https://{endpoint}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise StoreError(f"storage.endpoint_url {endpoint!r} is not an http(s) URL")
        options |= {"endpoint_override": parsed.netloc, "scheme": parsed.scheme}
    return pafs.S3FileSystem(**options)
