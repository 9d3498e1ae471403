"""DVC faults before training: an interrupted `dvc pull`, a corrupt or missing object in the
cache or on the remote. Each is caught before `dvc repro`, nothing trains on partial data, and
the message names the file and the fix. Real DVC with a local directory remote."""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.support import BIN, copy_project, driftloop, sh, tool_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
DATA = "data/train.csv"


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Path:
    """A project whose data is tracked and pushed to its local remote, and trained once."""
    root = copy_project(tmp_path_factory.mktemp("dvc-faults"))
    driftloop(root, "data")
    driftloop(root, "train")
    return root


def recorded_md5(root: Path) -> str:
    return yaml.safe_load((root / f"{DATA}.dvc").read_text())["outs"][0]["md5"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def object_path(store: Path, digest: str) -> Path:
    return store / "files" / "md5" / digest[:2] / digest[2:]


def flip_byte(path: Path) -> None:
    """Damage one byte in the middle of a (read-only) DVC object."""
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def fresh_workspace(root: Path) -> None:
    """As on a new machine: no workspace copy and an empty cache; the remote holds the data."""
    (root / DATA).unlink(missing_ok=True)
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)


def model_stamp(root: Path) -> float:
    return (root / "artifacts/model/model.joblib").stat().st_mtime


def assert_refused_before_training(root: Path, *names: str) -> None:
    """`driftloop train` stops before `dvc repro`: the model is untouched, the reason named."""
    before = model_stamp(root)
    done = driftloop(root, "train", check=False)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Running stage" not in said and model_stamp(root) == before
    assert "Traceback" not in said
    for name in names:
        assert name in said, said


def test_a_partial_data_file_is_never_trained_on(pushed):
    path = pushed / DATA
    good = path.read_bytes()
    try:
        path.write_bytes(good[: len(good) // 3])  # what a cut transfer leaves behind
        assert_refused_before_training(pushed, DATA, "partial or corrupt", "dvc checkout")
    finally:
        path.write_bytes(good)
    assert md5(path) == recorded_md5(pushed)


def test_an_interrupted_pull_at_random_points_never_leaves_partial_data(pushed):
    """kill -9 `dvc pull` at 10 random moments; then the data is absent or whole, and the next
    `driftloop data` + `driftloop train` completes on exactly the recorded rev."""
    rng = random.Random(20)
    expected = recorded_md5(pushed)
    for _ in range(10):
        fresh_workspace(pushed)
        pull = subprocess.Popen(
            [str(BIN / "dvc"), "pull", "-q", f"{DATA}.dvc"],
            cwd=pushed,
            env=tool_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0.2, 2.5))
        if pull.poll() is None:
            import os

            os.killpg(pull.pid, signal.SIGKILL)
        pull.wait(30)
        path = pushed / DATA
        assert not path.exists() or md5(path) == expected
        if path.exists():
            continue
        assert_refused_before_training(pushed, DATA, "is missing", "driftloop data")
    (pushed / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)  # a killed DVC's lock file
    driftloop(pushed, "data")
    assert md5(pushed / DATA) == expected
    driftloop(pushed, "train")


def test_a_corrupt_remote_object_never_reaches_the_workspace(pushed, tmp_path):
    """A damaged remote object: the pull is refused (named), or, when data.source rebuilds the
    very same rev, the data is recreated and the failed pull is said; never corrupt data."""
    digest = recorded_md5(pushed)
    remote = object_path(pushed / ".driftloop" / "dvc-remote", digest)
    saved = tmp_path / "object"
    shutil.copy2(remote, saved)
    try:
        flip_byte(remote)
        fresh_workspace(pushed)
        done = driftloop(pushed, "data", check=False)
        said = done.stdout + done.stderr
        assert "Traceback" not in said and DATA in said
        if done.returncode == 0:
            assert "dvc pull failed" in said and md5(pushed / DATA) == digest
        else:
            assert f"files/md5/{digest[:2]}/{digest[2:]}" in said and "driftloop data" in said
            assert not (pushed / DATA).exists()  # no corrupt file left to train on
            assert_refused_before_training(pushed, DATA, "is missing")
    finally:
        remote.chmod(0o644)
        shutil.copy2(saved, remote)
        fresh_workspace(pushed)
        driftloop(pushed, "data")
    assert md5(pushed / DATA) == digest


def test_a_corrupt_cache_object_never_reaches_training(pushed):
    digest = recorded_md5(pushed)
    flip_byte(object_path(pushed / ".dvc" / "cache", digest))
    (pushed / DATA).unlink()
    done = subprocess.run(
        [str(BIN / "dvc"), "checkout", DATA], cwd=pushed, env=tool_env(), capture_output=True
    )
    path = pushed / DATA
    if path.exists() and md5(path) != digest:  # DVC trusted the damaged object
        assert_refused_before_training(pushed, DATA, "partial or corrupt")
    else:  # DVC noticed and left no file
        assert done.returncode != 0 or not path.exists() or md5(path) == digest
    fresh_workspace(pushed)
    driftloop(pushed, "data")
    assert md5(path) == digest


def test_a_missing_remote_object_is_recreated_only_when_it_is_the_same_rev(pushed, tmp_path):
    """The object is gone from the remote: `driftloop data` rebuilds the file from data.source
    only if that gives the recorded rev; if the source changed, it refuses and says how."""
    digest = recorded_md5(pushed)
    remote = object_path(pushed / ".driftloop" / "dvc-remote", digest)
    saved = tmp_path / "object"
    shutil.move(remote, saved)
    try:
        fresh_workspace(pushed)
        assert "created" in driftloop(pushed, "data").stdout
        assert md5(pushed / DATA) == digest and remote.is_file()  # and pushed again

        shutil.move(remote, saved)
        fresh_workspace(pushed)
        source = pushed / "data/bikeshare/bikeshare_hourly_2011.csv"
        original = source.read_bytes()
        lines = original.splitlines(True)
        source.write_bytes(b"".join([lines[0], *lines[2:]]))  # one January row fewer
        try:
            done = driftloop(pushed, "data", check=False)
        finally:
            source.write_bytes(original)
        said = done.stdout + done.stderr
        assert done.returncode != 0 and "Traceback" not in said
        assert DATA in said and digest[:12] in said and f"dvc add {DATA}" in said
        assert not (pushed / DATA).exists() and recorded_md5(pushed) == digest
    finally:
        if not remote.is_file():
            remote.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(saved, remote)
        fresh_workspace(pushed)
        driftloop(pushed, "data")
    assert md5(pushed / DATA) == digest


# ------------------------------------------------ a checked-out commit's data rev is never replaced


def checked_out_older_commit(root: Path) -> tuple[str, str]:
    """Data pushed, a newer commit with one more row `dvc add`-ed, then `git checkout` of the
    older one: git restores its .dvc file but not the data (no `dvc checkout` runs), so the
    workspace holds the newer bytes. Returns (recorded md5, present md5)."""
    driftloop(root, "data")
    lines = (root / DATA).read_bytes().splitlines(True)
    with (root / DATA).open("ab") as handle:
        handle.write(lines[-1])
    sh(["dvc", "add", "-q", DATA], root)
    sh(["git", "commit", "-qm", "one more row", f"{DATA}.dvc"], root)
    sh(["git", "checkout", "-q", "HEAD~1"], root)
    recorded, present = recorded_md5(root), md5(root / DATA)
    assert recorded != present
    return recorded, present


def committed_dvc_file(root: Path) -> bytes:
    return sh(["git", "show", f"HEAD:{DATA}.dvc"], root).stdout.encode()


def assert_refused_unchanged(root: Path, done, data: bytes, status: str, code: int = 1) -> str:
    """Exit 1 (a failed step) with one message; the .dvc file as committed, the data as it was."""
    said = done.stdout + done.stderr
    assert done.returncode == code and "Traceback" not in said, said
    assert "nothing was changed" in said and f"dvc add {DATA}" in said, said
    assert (root / f"{DATA}.dvc").read_bytes() == committed_dvc_file(root)
    assert (root / DATA).read_bytes() == data
    assert sh(["git", "status", "--porcelain"], root).stdout == status
    return said


def make_data(root: Path, check: bool = False):
    """The Makefile's `data` target in the copy, with this venv (already installed) as its own."""
    import os

    venv = os.path.relpath(BIN.parent, root)
    return sh(["make", "-s", f"VENV={venv}", "-o", f"{venv}/.installed", "data"], root, check=check)


def test_driftloop_data_never_rewrites_a_checked_out_data_rev(tmp_path):
    root = copy_project(tmp_path)
    recorded, present = checked_out_older_commit(root)
    data = (root / DATA).read_bytes()
    status = sh(["git", "status", "--porcelain"], root).stdout
    assert (root / f"{DATA}.dvc").read_bytes() == committed_dvc_file(root)

    said = assert_refused_unchanged(root, driftloop(root, "data", check=False), data, status)
    assert f"dvc checkout {DATA}" in said and "restore the recorded rev" in said
    assert recorded[:12] in said and present[:12] in said and said.count("\n") == 1

    # `make setup` stops at its data target, which is exactly that command, with the message
    rule = re.search(r"^data:.*\n((?:\t.*\n)+)", (root / "Makefile").read_text(), re.M)
    assert rule.group(1) == "\t@driftloop data\n"
    made = make_data(root)
    assert_refused_unchanged(root, made, data, status, code=2)  # make's own exit for a failure
    assert f"dvc checkout {DATA}" in made.stderr and "data] Error 1" in made.stderr

    sh(["dvc", "checkout", DATA], root)
    assert f"{DATA}: present" in driftloop(root, "data").stdout
    assert md5(root / DATA) == recorded and sh(["git", "status", "--porcelain"], root).stdout == ""
    (root / DATA).unlink()
    assert f"{DATA}: pulled" in driftloop(root, "data").stdout
    assert md5(root / DATA) == recorded and make_data(root, check=True).returncode == 0


def test_a_checked_out_data_rev_gone_from_cache_and_remote_is_refused_and_named(tmp_path):
    root = copy_project(tmp_path)
    recorded, _ = checked_out_older_commit(root)
    data = (root / DATA).read_bytes()
    status = sh(["git", "status", "--porcelain"], root).stdout
    for store in (root / ".dvc" / "cache", root / ".driftloop" / "dvc-remote"):
        object_path(store, recorded).unlink()

    said = assert_refused_unchanged(root, driftloop(root, "data", check=False), data, status)
    assert recorded[:12] in said and "neither the DVC cache nor the remote" in said
    assert f"dvc push {DATA}.dvc" in said
    assert not object_path(root / ".dvc" / "cache", recorded).exists()


def test_the_demo_reset_to_the_source_data_keeps_or_adopts_its_rev(tmp_path):
    """The demo re-creates the winter data from data.source: the same rev as committed is left
    as it is; after a retrain committed another rev, the reset adopts winter on purpose."""
    from config.loader import load_project
    from tasks.data import create_from_source, ensure_data

    root = copy_project(tmp_path)
    driftloop(root, "data")
    winter = recorded_md5(root)
    project = load_project(root / "config/driftloop.yaml")
    create_from_source(project)
    assert ensure_data(project).action == "present"
    assert sh(["git", "status", "--porcelain"], root).stdout == ""

    with (root / DATA).open("ab") as handle:
        handle.write((root / DATA).read_bytes().splitlines(True)[-1])
    sh(["dvc", "add", "-q", DATA], root)
    sh(["git", "commit", "-qm", "retrain: training data", f"{DATA}.dvc"], root)
    create_from_source(project)
    assert ensure_data(project).action == "present"
    assert md5(root / DATA) == winter == recorded_md5(root)
