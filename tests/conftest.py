"""Shared fixtures: the real test data (LUNAKIT_TEST_DATA) and a small phantom LUNA16 dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The real data folder. Skips when LUNAKIT_TEST_DATA is unset; fails when it is set but absent."""
    root = os.environ.get("LUNAKIT_TEST_DATA")
    if not root:
        pytest.skip("LUNAKIT_TEST_DATA is not set")
    path = Path(root)
    assert path.is_dir(), f"LUNAKIT_TEST_DATA={root} is not a directory"
    return path


def require(path: Path) -> Path:
    """A file of the real data that must exist (a missing one fails the test, never skips it)."""
    assert path.exists(), f"missing test data file: {path}"
    return path


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A 3-scan phantom LUNA16 dataset (lunakit.synth), made once per test session."""
    from lunakit.synth import make_dataset

    out = tmp_path_factory.mktemp("phantom")
    make_dataset(out, n_scans=3, seed=1234, shape=(48, 96, 96))
    return out
