"""Shared fixtures: the real test data (LUNAKIT_TEST_DATA) and a small phantom LUNA16 dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The real data folder. Skips when LUNAKIT_TEST_DATA is unset; fails when it is set but absent."""
    root = os.environ.get("LUNAKIT_TEST_DATA")
    if not root:
        pytest.skip("LUNAKIT_TEST_DATA is not set")
    path = Path(root)
    assert path.is_dir(), f"LUNAKIT_TEST_DATA={root} is not a directory"
    return path


def scipy_cores(labels: np.ndarray, count: int) -> np.ndarray:
    """The reference for ops.component_cores: each component's voxels of greatest in-plane taxicab
    depth, from scipy's per-slice chamfer transform (the slice border as background)."""
    from scipy import ndimage

    mask = labels > 0
    depth = np.stack([ndimage.distance_transform_cdt(np.pad(s, 1), metric="taxicab")[1:-1, 1:-1] for s in mask])
    deepest = np.asarray(ndimage.maximum(depth, labels, np.arange(count + 1)))
    return mask & (depth == deepest[labels])


def require(path: Path) -> Path:
    """A file of the real data that must exist (a missing one fails the test, never skips it)."""
    assert path.exists(), f"missing test data file: {path}"
    return path


# luna_infer as installed beside this Python; LUNAKIT_LUNA_INFER names another build of it
LUNA_INFER = Path(os.environ.get("LUNAKIT_LUNA_INFER") or Path(sys.executable).parent / "luna_infer")
REAL_CT = Path("ct") / "C3N-00247-chest-ct"  # the real chest CT, under LUNAKIT_TEST_DATA
REAL_SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.7085.2626.242193282649561899185427104083"


def run_luna_infer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """luna_infer (installed beside this Python) with args; its output captured as text."""
    assert LUNA_INFER.exists(), f"luna_infer is not installed at {LUNA_INFER}"
    return subprocess.run([str(LUNA_INFER), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def book_checkpoints(test_data, tmp_path_factory) -> dict[str, Path]:
    """The book's published seg and cls weights as lunakit checkpoints (lunakit.models.book.convert)."""
    from lunakit.models.book import convert

    models = require(test_data / "book-models")
    folder = tmp_path_factory.mktemp("book")
    return {kind: convert(require(next(models.glob(f"{kind}_*.state"), models / f"{kind}_missing.state")),
                          kind, folder / f"{kind}.pt") for kind in ("seg", "cls")}


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
    from lunakit.io import ct
    from lunakit.pipeline.options import AnalysisOptions
    from lunakit.bundle import export_bundle
    from lunakit.models.checkpoint import load_checkpoint

    seg, _ = load_checkpoint(checkpoints["seg"])
    scan = ct.load(scan_path)
    middle = scan.hu.shape[0] // 2
    stack = torch.from_numpy(scan.hu[middle - 3:middle + 4].astype(np.float32)).clamp(-1000, 1000)[None]
    with torch.no_grad():
        prob = seg(stack).flatten()
    threshold = float(torch.quantile(prob, 0.95))
    options = AnalysisOptions(seg_threshold=round(threshold, 4), nodule_threshold=0.4)
    return export_bundle(tmp_path_factory.mktemp("b") / "bundle", checkpoints, options)
