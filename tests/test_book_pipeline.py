"""The book's published weights, imported, analyzing the real chest CT end to end (CPU)."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import require
from lunakit.cli import main


@pytest.fixture(scope="session")
def book_checkpoints(test_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("book")
    models = test_data / "book-models"
    paths = {}
    for kind, prefix in (("seg", "seg_"), ("cls", "cls_")):
        source = require(next(models.glob(f"{prefix}*.state"), models / f"{prefix}missing.state"))
        paths[kind] = folder / f"{kind}.pt"
        assert main(["import-book", str(source), "--kind", kind, "--out", str(paths[kind])]) == 0
    return paths


def test_book_weights_analyze_the_real_ct(test_data, book_checkpoints, tmp_path, capsys):
    ct_dir = require(test_data / "ct" / "C3N-00247-chest-ct")
    out = tmp_path / "real"
    assert main(["analyze", str(ct_dir), "--seg", str(book_checkpoints["seg"]), "--cls", str(book_checkpoints["cls"]),
                 "--out", str(out), "--report", "--quiet"]) == 0
    document = json.loads((out / "findings.json").read_text())
    findings = document["findings"]
    assert document["size_irc"] == [99, 512, 512]
    assert document["series_uid"] == "1.3.6.1.4.1.14519.5.2.1.7085.2626.242193282649561899185427104083"
    assert len(findings) > 0
    scores = [f["p_nodule"] for f in findings]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= p <= 1.0 for p in scores)
    assert all(f["p_malignant"] is None for f in findings)  # no malignancy model given
    with open(out / "findings.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(findings)
    html = (out / "report.html").read_text()
    shown = [rank for rank, f in enumerate(findings, start=1) if f["p_nodule"] > 0.5]
    for rank in shown:
        for view in ("axial", "coronal", "sagittal"):
            assert (out / "report_images" / f"finding{rank:03d}_{view}.png").is_file()
            assert f"finding{rank:03d}_{view}.png" in html
    assert "results in" in capsys.readouterr().out
