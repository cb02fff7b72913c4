"""False positives per kind of hard negative (lunakit.evaluation.negative_kinds), by hand and in
`lunakit validate` on a phantom set that has hard_negatives.csv."""

from __future__ import annotations

import csv
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lunakit.cli import main
from lunakit.errors import LunakitError
from lunakit.evaluation.negative_kinds import KIND_RADIUS_MM, false_positive_kinds, read_negative_kinds
from lunakit.evaluation.tables import AnnotationTable

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "demo-bundle"


@dataclass
class Mark:
    center_xyz: tuple[float, float, float]
    p_nodule: float


def test_counts_by_hand():
    nodules = AnnotationTable.build(["s1"], [[0.0, 0.0, 0.0]], [10.0])
    irrelevant = AnnotationTable.build(["s1"], [[50.0, 0.0, 0.0]], [-1.0])  # no diameter: 10 mm
    kinds = {
        "s1": [(np.array([20.0, 0.0, 0.0]), "granuloma"), (np.array([0.0, 30.0, 0.0]), "scar")],
        "s2": [(np.array([0.0, 0.0, 0.0]), "end_on_vessel")],
    }
    findings = {
        "s1": [
            Mark((4.9, 0.0, 0.0), 0.9),  # inside the nodule's 5 mm radius: a hit
            Mark((54.0, 0.0, 0.0), 0.9),  # on the irrelevant finding: not counted
            Mark((22.0, 0.0, 0.0), 0.8),  # 2 mm from the granuloma
            Mark((0.0, 34.0, 0.0), 0.3),  # 4 mm from the scar, below the threshold
            Mark((0.0, 30.0 + KIND_RADIUS_MM + 0.5, 0.0), 0.6),  # 5.5 mm from the scar: other
            Mark((5.0, 0.0, 0.0), 0.7),  # on the nodule's sphere, not strictly inside: a false positive
        ],
        "s2": [Mark((3.0, 4.0, 0.0), 0.5), Mark((20.0, 20.0, 20.0), 0.1)],  # 5 mm: on the vessel; far: other
    }
    counts = false_positive_kinds(findings, (nodules, irrelevant), kinds, threshold=0.5)
    assert counts["all"] == {"end_on_vessel": 1, "granuloma": 1, "scar": 1, "other": 3}
    assert counts["at_threshold"] == {"end_on_vessel": 1, "granuloma": 1, "scar": 0, "other": 2}
    assert counts["radius_mm"] == KIND_RADIUS_MM and counts["threshold"] == 0.5


@pytest.mark.parametrize(
    "text, says",
    [
        ("seriesuid,coordX,coordY,coordZ\ns,1,2,3\n", "no kind column"),
        ("seriesuid,coordX,coordY,coordZ,kind\ns,1,x,3,scar\n", "line 2: coordinates are not numbers"),
        ("seriesuid,coordX,coordY,coordZ,kind\ns,1,2,nan,scar\n", "line 2: needs a series, finite coordinates"),
        ("seriesuid,coordX,coordY,coordZ,kind\ns,1,2,3,\n", "line 2: needs a series, finite coordinates"),
    ],
)
def test_a_malformed_table_is_refused_in_one_line(tmp_path, text, says):
    path = tmp_path / "hard_negatives.csv"
    path.write_text(text)
    with pytest.raises(LunakitError, match=says) as caught:
        read_negative_kinds(path)
    assert "\n" not in str(caught.value)


def test_validate_reports_false_positives_by_kind(tmp_path, capsys):
    from lunakit.synth import make_dataset

    data = make_dataset(tmp_path / "luna", n_scans=3, seed=12, shape=(32, 64, 64), family="b")
    out = tmp_path / "val"
    args = ["validate", "--data", str(data), "--bundle", str(BUNDLE), "--split", "all", "--out", str(out)]
    assert main([*args, "--bootstrap", "0", "--quiet"]) == 0
    summary = json.loads((out / "froc.json").read_text())
    kinds = summary["false_positive_kinds"]
    drawn = {kind for rows in read_negative_kinds(data / "hard_negatives.csv").values() for _, kind in rows}
    assert set(kinds["all"]) == drawn | {"other"}
    # Recounted with numpy from the written findings: every finding that hits no sphere.
    found = json.loads((out / "findings_by_series.json").read_text())
    false_positives = summary["n_candidates"] - _hits(data, found)
    assert false_positives > 0 and sum(kinds["all"].values()) == false_positives
    threshold = summary["options"]["nodule_threshold"]
    above = sum(f["p_nodule"] >= threshold for fs in found.values() for f in fs) - _hits(data, found, threshold)
    assert sum(kinds["at_threshold"].values()) == above
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("false positives by kind"))
    assert all(f"{k} {kinds['at_threshold'][k]}/{n}" in line for k, n in kinds["all"].items())


def _hits(data: Path, found: dict, threshold: float = 0.0) -> int:
    """Findings (p_nodule >= threshold) strictly inside a nodule's or an irrelevant finding's
    sphere, counted with numpy."""

    spheres = []
    for name in ("annotations.csv", "annotations_excluded.csv"):
        with open(data / name, newline="") as f:
            for r in csv.DictReader(f):
                d = float(r["diameter_mm"])
                xyz = [float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])]
                spheres.append((r["seriesuid"], np.array(xyz), (10.0 if d < 0 else d) / 2))
    return sum(
        any(uid == s and np.linalg.norm(np.array(f["center_xyz"]) - c) < r for s, c, r in spheres)
        for uid, fs in found.items()
        for f in fs
        if f["p_nodule"] >= threshold
    )


def test_validate_refuses_a_malformed_kinds_table_before_analyzing(tmp_path, capsys, monkeypatch):
    analysis = importlib.import_module("lunakit.pipeline.analyze")
    from lunakit.synth import make_dataset

    data = make_dataset(tmp_path / "luna", n_scans=2, seed=12, shape=(32, 64, 64), family="b")
    table = data / "hard_negatives.csv"
    lines = table.read_text().splitlines()
    fields = lines[1].split(",")
    fields[2] = "not-a-number"  # coordY of the first row
    table.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")

    def no_analysis(*args, **kwargs):
        raise AssertionError("a scan was analyzed before the table was checked")

    monkeypatch.setattr(analysis, "analyze", no_analysis)
    out = tmp_path / "val"
    args = ["validate", "--data", str(data), "--bundle", str(BUNDLE), "--split", "all", "--out", str(out)]
    assert main([*args, "--bootstrap", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("line 2: coordinates are not numbers") and "\n" not in err
    assert not out.exists()
