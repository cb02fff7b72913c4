"""The book's published weights on the whole real chest CT, end to end, against the book's own result.

`bookref/candidates.json` is what the book's own code found on this scan: every connected
component (scipy.ndimage.label order) with its HU-weighted center, voxel count and the book
classifier's p_nodule. `lunakit analyze` (eager models, Python) and `luna_infer analyze`
(TorchScript bundle, C++) must each find exactly those components: centers within 1e-3 mm, the
same voxel counts, p_nodule within 1e-4.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lunakit.cli import main

from helpers import REAL_CT, REAL_SERIES_UID, require, run_luna_infer

CENTER_TOLERANCE_MM = 1e-3
PROBABILITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def book_result(test_data) -> dict:
    return json.loads(require(test_data / "bookref" / "candidates.json").read_text())


@pytest.fixture(scope="module")
def python_run(test_data, book_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("py") / "real"
    assert (
        main(
            [
                "analyze",
                str(test_data / REAL_CT),
                "--seg",
                str(book_checkpoints["seg"]),
                "--cls",
                str(book_checkpoints["cls"]),
                "--out",
                str(out),
                "--report",
                "--quiet",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def cpp_run(test_data, book_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpp")
    result = run_luna_infer(
        "analyze",
        "--bundle",
        str(book_bundle),
        "--input",
        str(test_data / REAL_CT),
        "--output",
        str(out / "findings.json"),
        "--csv",
        str(out / "findings.csv"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    return out


def assert_same_as_book(findings: list[dict], book: dict) -> None:
    """Each of the book's components matched one-to-one by its center, with its numbers."""
    expected = book["candidates"]
    assert len(expected) == book["n_candidates"]
    assert len(findings) == len(expected)
    book_xyz = np.array([c["center_xyz"] for c in expected])  # (K, 3)
    our_xyz = np.array([f["center_xyz"] for f in findings])  # (K, 3)
    distance = np.zeros((len(expected), len(findings)))
    for axis in range(3):
        distance += (book_xyz[:, None, axis] - our_xyz[None, :, axis]) ** 2
    nearest = distance.argmin(axis=1)
    assert len(set(nearest.tolist())) == len(expected), "two of the book's components matched one finding"
    assert float(np.sqrt(distance.min(axis=1)).max()) <= CENTER_TOLERANCE_MM
    matched = [findings[j] for j in nearest]
    assert [f["voxel_count"] for f in matched] == [c["voxel_count"] for c in expected]
    np.testing.assert_allclose(
        [f["center_irc"] for f in matched], [c["center_irc"] for c in expected], rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        [f["p_nodule"] for f in matched], [c["prob_nodule"] for c in expected], rtol=0, atol=PROBABILITY_TOLERANCE
    )
    assert sum(c["voxel_count"] for c in expected) == book["mask_voxels_after_erosion"]


def test_python_finds_what_the_book_finds(python_run, book_result):
    document = json.loads((python_run / "findings.json").read_text())
    assert document["size_irc"] == [99, 512, 512]
    assert document["series_uid"] == REAL_SERIES_UID == book_result["series_uid"]
    assert_same_as_book(document["findings"], book_result)


def test_luna_infer_finds_what_the_book_finds(cpp_run, book_result):
    document = json.loads((cpp_run / "findings.json").read_text())
    assert document["series_uid"] == REAL_SERIES_UID
    assert_same_as_book(document["findings"], book_result)
    with open(cpp_run / "findings.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(document["findings"])


def test_python_outputs_and_report(python_run):
    findings = json.loads((python_run / "findings.json").read_text())["findings"]
    scores = [f["p_nodule"] for f in findings]
    assert scores == sorted(scores, reverse=True)
    assert all(f["p_malignant"] is None for f in findings)  # no malignancy model given
    with open(python_run / "findings.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(findings)
    html = (python_run / "report.html").read_text()
    shown = [rank for rank, f in enumerate(findings, start=1) if f["p_nodule"] > 0.5]
    assert shown
    for rank in shown:
        for view in ("axial", "coronal", "sagittal"):
            assert (python_run / "report_images" / f"finding{rank:03d}_{view}.png").is_file()
            assert f"finding{rank:03d}_{view}.png" in html
