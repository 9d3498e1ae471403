"""A real S3-API server for tests: moto's standalone server on a free loopback port.

Real clients (pyarrow's S3 filesystem, DVC's s3 remote, the bento's capture writer) talk to it
over HTTP exactly as they would to MinIO or AWS. The session fixture starts one server, creates
a bucket, and puts test credentials in this process's environment so every process a test
starts inherits them; each test works under its own prefix of the bucket.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.fs as pafs
import pytest

from tests.support import BIN, free_port, stop_group

BUCKET = "driftloop-tests"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "driftloop-test-key",
    "AWS_SECRET_ACCESS_KEY": "driftloop-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud's metadata service for a role
}


@dataclass
class S3Server:
    url: str  # the endpoint: storage.endpoint_url
    bucket: str
    process: subprocess.Popen

    def prefix(self, name: str) -> str:
        """A fresh `s3://bucket/name-xxxx` no other test writes to."""
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"

    def filesystem(self, **options) -> pafs.S3FileSystem:
        host = self.url.removeprefix("http://")
        return pafs.S3FileSystem(
            **options,
            endpoint_override=host,
            scheme="http",
            region=CREDENTIALS["AWS_DEFAULT_REGION"],
            access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, url: str) -> list[str]:
        """Every object key under `s3://bucket/prefix`, sorted."""
        root = url.removeprefix("s3://")
        selector = pafs.FileSelector(root, allow_not_found=True, recursive=True)
        infos = self.filesystem().get_file_info(selector)
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def start_s3_server(log: Path, timeout: float = 60) -> S3Server:
    """moto_server on a free loopback port, ready to answer, with BUCKET created."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(url=f"http://127.0.0.1:{port}", bucket=BUCKET, process=process)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{server.url}/moto-api/", timeout=2).status_code < 500:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_s3_server(server)
            raise AssertionError(f"moto_server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    server.filesystem(allow_bucket_creation=True).create_dir(BUCKET)
    return server


def stop_s3_server(server: S3Server) -> None:
    stop_group(server.process)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One S3-API server for the session, its test credentials in os.environ meanwhile."""
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_s3_server(server)
