"""Shared fixtures: the real test data (LUNAKIT_TEST_DATA), a small phantom LUNA16 dataset, seeded
checkpoints and bundles, the book's weights. Plain helpers are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REAL_CT, require


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The real data folder. Skips when LUNAKIT_TEST_DATA is unset; fails when it is set but absent."""
    root = os.environ.get("LUNAKIT_TEST_DATA")
    if not root:
        pytest.skip("LUNAKIT_TEST_DATA is not set")
    path = Path(root)
    assert path.is_dir(), f"LUNAKIT_TEST_DATA={root} is not a directory"
    return path


@pytest.fixture(scope="session")
def book_checkpoints(test_data, tmp_path_factory) -> dict[str, Path]:
    """The book's published seg and cls weights as lunakit checkpoints (lunakit.models.book.convert)."""
    from lunakit.models.book import convert

    models = require(test_data / "book-models")
    folder = tmp_path_factory.mktemp("book")
    return {
        kind: convert(
            require(next(models.glob(f"{kind}_*.state"), models / f"{kind}_missing.state")), kind, folder / f"{kind}.pt"
        )
        for kind in ("seg", "cls")
    }


@pytest.fixture(scope="session")
def book_bundle(book_checkpoints, tmp_path_factory) -> Path:
    """The book's weights as a TorchScript bundle with the default (the book's) options."""
    from lunakit.bundle import export_bundle

    return export_bundle(tmp_path_factory.mktemp("book-bundle") / "bundle", book_checkpoints)


@pytest.fixture(scope="session")
def real_scan(test_data):
    """The real chest CT, read once (lunakit.io.ct.load)."""
    from lunakit.io import ct

    return ct.load(require(test_data / REAL_CT))


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A 3-scan phantom LUNA16 dataset (lunakit.synth), made once per test session."""
    from lunakit.synth import make_dataset

    out = tmp_path_factory.mktemp("phantom")
    make_dataset(out, n_scans=3, seed=1234, shape=(48, 96, 96))
    return out


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Freshly initialised (seeded) seg, cls and mal checkpoints.

    Their input batch norms get HU-like running statistics so that, untrained, they still give
    graded (not saturated) probabilities.
    """
    from lunakit.models.checkpoint import write_untrained_checkpoints

    return write_untrained_checkpoints(tmp_path_factory.mktemp("ckpt"), ("seg", "cls", "mal"), seed=0)


@pytest.fixture(scope="session")
def scan_path(phantom_root) -> Path:
    """The first scan of the phantom dataset."""
    from lunakit.io.luna import find_scans

    return sorted(find_scans(phantom_root).items())[0][1]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, checkpoints, scan_path) -> Path:
    """A bundle whose seg threshold makes the random U-Net mark a small share of the scan."""
    from lunakit.bundle import export_bundle
    from lunakit.io import ct
    from lunakit.models.checkpoint import load_checkpoint
    from lunakit.pipeline.options import AnalysisOptions

    seg, _ = load_checkpoint(checkpoints["seg"])
    scan = ct.load(scan_path)
    middle = scan.hu.shape[0] // 2
    stack = torch.from_numpy(scan.hu[middle - 3 : middle + 4].astype(np.float32)).clamp(-1000, 1000)[None]
    with torch.no_grad():
        prob = seg(stack).flatten()
    threshold = float(torch.quantile(prob, 0.95))
    options = AnalysisOptions(seg_threshold=round(threshold, 4), nodule_threshold=0.4)
    return export_bundle(tmp_path_factory.mktemp("b") / "bundle", checkpoints, options)
