"""Shared fixtures for tests that run the real tools in a fresh copy of the project."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import copy_project, driftloop


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """One fresh copy with its data pushed and `dvc repro` done; read-only for its users."""
    root = copy_project(tmp_path_factory.mktemp("trained"))
    driftloop(root, "data")
    driftloop(root, "train")
    return root
