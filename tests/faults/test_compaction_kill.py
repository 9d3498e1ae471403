"""Compaction killed with SIGKILL at every step, and at random moments: every read in between
holds every row exactly once, and the next run finishes the job (sources deleted, no temp file,
no lock left)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from model.capture import LABELS
from model.store import Store
from tasks.compaction import LOCK_NAME, compact_store
from tests.tasks.monitor.compaction_store import (
    HOUR,
    id_counts,
    local_store,
    on_disk,
    write_labels,
)

HOURS = 2
FILES = 6
EXPECTED = Counter({f"h{h}-f{f}": 1 for h in range(HOURS) for f in range(FILES)})
FORK = multiprocessing.get_context("fork")  # a real process, without a new interpreter's start


def fill(store: Store) -> None:
    for h in range(HOURS):
        for f in range(FILES):
            write_labels(store, [(f"h{h}-f{f}", HOUR + timedelta(hours=h), float(f))])


def compact_pausing_at(root: Path, step: str, occurrence: int, marker: Path) -> None:
    """The child: compaction that stops at the `occurrence`-th `step` and waits to be killed."""
    seen = Counter()

    def pause(name: str) -> None:
        seen[name] += 1
        if name == step and seen[name] == occurrence:
            marker.write_text(name)
            time.sleep(120)

    compact_store(local_store(root), quiet_seconds=0, grace_seconds=0, on_step=pause)


def wait_for(path: Path, child, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert child.is_alive(), "compaction finished before reaching the step"
        assert time.monotonic() < end, f"{path.name} not within {timeout:.0f} s"
        time.sleep(0.01)


def assert_finished(store: Store, root: Path) -> None:
    """The next run left one compacted file per hour, no temp file and no lock."""
    assert id_counts(store, LABELS) == EXPECTED
    names = [name.split("/")[-1] for name in on_disk(store, LABELS)]
    assert [name[:8] for name in names] == ["compact-"] * HOURS, names
    assert not (root / LOCK_NAME).exists()


@pytest.mark.parametrize(
    ("step", "occurrence"),
    [("written", 1), ("committed", 1), ("deleted", 1), ("deleted", 4), ("written", 2)],
)
def test_a_kill_at_any_step_loses_nothing(tmp_path: Path, step: str, occurrence: int) -> None:
    root = tmp_path / "capture"
    store = local_store(root)
    fill(store)
    marker = tmp_path / "paused"
    child = FORK.Process(target=compact_pausing_at, args=(root, step, occurrence, marker))
    child.start()
    try:
        wait_for(marker, child)
        assert id_counts(store, LABELS) == EXPECTED  # a reader while it is stopped there
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    finally:
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert (root / LOCK_NAME).exists()  # the dead run's lock is still there
    assert id_counts(store, LABELS) == EXPECTED
    if step == "written":  # its temp file is on disk, invisible to readers
        assert any(name.split("/")[-1].startswith(".compact-") for name in on_disk(store, LABELS))

    compact_store(store, quiet_seconds=0, grace_seconds=0)

    assert_finished(store, root)


STEP_SECONDS = 0.02  # each step of a run takes at least this long: kills land within it


def compact_steadily(root: Path) -> None:
    """The child: a whole run whose steps each take STEP_SECONDS, so a kill drawn within the
    run's length lands mid-run on a fast machine and on a loaded one alike."""
    compact_store(
        local_store(root),
        quiet_seconds=0,
        grace_seconds=0,
        on_step=lambda _: time.sleep(STEP_SECONDS),
    )


def test_kills_at_random_moments_lose_nothing(tmp_path: Path) -> None:
    pick = random.Random(18)
    steps = HOURS * (2 + FILES)  # written, committed, and a delete per source, each hour
    interrupted = 0
    for trial in range(10):
        root = tmp_path / f"trial-{trial}"
        store = local_store(root)
        fill(store)
        child = FORK.Process(target=compact_steadily, args=(root,))
        child.start()
        time.sleep(pick.uniform(0, steps * STEP_SECONDS))
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert id_counts(store, LABELS) == EXPECTED, f"trial {trial}"
        interrupted += len(on_disk(store, LABELS)) != HOURS or (root / LOCK_NAME).exists()

        compact_store(store, quiet_seconds=0, grace_seconds=0)

        assert_finished(store, root)
    assert interrupted >= 3  # the kills did land mid-run
