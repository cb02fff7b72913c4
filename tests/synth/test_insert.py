"""Nodules inserted into the real chest CT (lunakit.synth.insert): where they go, what they add.

References: the real scan itself (its voxels outside the nodules stay bit for bit), scipy's
centre of mass of the added HU, the sphere volume pi/6 d^3, and what a reader sees in the
scan (the lung field, bowel gas under the diaphragm, three lesions it already holds).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lunakit.cli import main
from lunakit.synth.family import family_with, get_family
from lunakit.synth.insert import host_placement, insert_nodules

from helpers import REAL_CT

REPO = Path(__file__).resolve().parents[2]
KNOWN_CSV = REPO / "scripts" / "real_ct_known.csv"
BOWEL_GAS_XYZ = (-32.2, -241.9, -267.2)  # an air-fluid level below the diaphragm


def _known(uid: str) -> list[tuple[np.ndarray, float]]:
    with open(KNOWN_CSV) as f:
        rows = [r for r in csv.DictReader(f) if r["seriesuid"] == uid]
    return [(np.array([float(r[k]) for k in ("coordX", "coordY", "coordZ")]), float(r["diameter_mm"])) for r in rows]


@pytest.fixture(scope="module")
def host(real_scan):
    spacing = np.asarray(real_scan.geometry.spacing_xyz, dtype=np.float64)[::-1]
    return real_scan, host_placement(real_scan.hu, spacing), spacing


def _irc(scan, xyz) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.rint(scan.geometry.xyz_to_irc(np.asarray(xyz, dtype=np.float64))))


def test_the_lung_field_holds_the_lungs_and_not_gas_or_outside_air(host) -> None:
    scan, where, spacing = host
    field = where.lung_depth_mm > 0
    litres = field.sum() * float(np.prod(spacing)) / 1e6
    assert 2.5 < litres < 8.0  # an adult's two lungs (total lung capacity about 4-7 l)
    x = scan.geometry.irc_to_xyz(np.argwhere(field)[::5000].astype(np.float64))[:, 0]
    assert (x < -30).mean() > 0.3 and (x > 30).mean() > 0.3  # both lungs
    assert not field[_irc(scan, BOWEL_GAS_XYZ)]
    assert not field[0, 0, 0] and not field[:, :, :5].any()  # air outside the body
    for center, _ in _known(scan.series_uid):
        assert field[_irc(scan, center)]  # the host's own lesions lie in the lungs
    assert (where.vessel_radius_mm > 0).sum() > 1000 and not (where.solid & ~field).any()


def _solid_isolated():
    return family_with(get_family("wide"), textures=(1.0, 0.0, 0.0, 0.0), locations=(1.0, 0.0, 0.0))


def _around(scan, spacing, center_irc: np.ndarray, radius_mm: float):
    """(box of slices, distance in mm of each box voxel to center_irc) within radius_mm."""
    half = np.ceil(radius_mm / spacing).astype(int)
    low = np.maximum(np.floor(center_irc).astype(int) - half, 0)
    high = np.minimum(np.ceil(center_irc).astype(int) + half + 1, scan.hu.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    grid = np.indices(high - low, dtype=np.float64)
    dist = np.sqrt(sum(((g + a - c) * s) ** 2 for g, a, c, s in zip(grid, low, center_irc, spacing)))
    return box, dist


def test_inserted_nodules_add_their_volume_where_the_annotation_says(host) -> None:
    scan, where, spacing = host
    known = _known(scan.series_uid)
    checked = 0
    for index in range(6):
        made = insert_nodules(scan.hu, scan.geometry, 11, index, _solid_isolated(), known, where)
        added = made.hu.astype(np.float64) - scan.hu
        assert made.hu.dtype == np.int16 and made.geometry == scan.geometry
        reach = np.zeros(scan.hu.shape, dtype=bool)
        for record in made.nodules:
            center = scan.geometry.xyz_to_irc(record.center_xyz)
            box, dist = _around(scan, spacing, center, record.diameter_mm + 5.0)
            reach[box] = True
            assert where.lung_depth_mm[_irc(scan, record.center_xyz)] > 0
            for known_center, known_d in known:  # kept clear of the host's own lesions
                assert np.linalg.norm(record.center_xyz - known_center) > (known_d + record.diameter_mm) / 2
            if record.diameter_mm < 6.0:
                continue  # a few 3 mm slices sample a small sphere's volume too coarsely
            weights = np.where(dist <= record.diameter_mm + 5.0, added[box], 0.0)
            com = np.array(ndimage.center_of_mass(weights)) + [b.start for b in box]
            assert np.all(np.abs(com - center) * spacing <= [1.5, 0.6, 0.6]), (com, center)
            core = dist <= 0.25 * record.diameter_mm
            contrast = np.median(made.hu[box][core]) - np.median(scan.hu[box][dist <= record.diameter_mm / 2])
            volume = weights.sum() * np.prod(spacing) / contrast
            sphere = np.pi / 6 * record.diameter_mm**3
            assert 0.7 * sphere < volume < 1.3 * sphere, (volume, sphere, record.diameter_mm)
            checked += 1
        assert not added[~reach].any()  # the host stays bit for bit away from the nodules
        assert [e[1] for e in made.excluded] == [d for _, d in known]
    assert checked >= 3


def test_vessel_attached_nodules_touch_a_host_vessel(host) -> None:
    scan, where, spacing = host
    fam = family_with(get_family("wide"), textures=(1.0, 0.0, 0.0, 0.0), locations=(0.0, 0.0, 1.0))
    attached = 0
    for index in range(3):
        made = insert_nodules(scan.hu, scan.geometry, 5, index, fam, [], where)
        vessels = np.argwhere(where.solid) * spacing
        for record in made.nodules:
            if record.location != "juxtavascular":
                continue
            center = scan.geometry.xyz_to_irc(record.center_xyz) * spacing
            gap = np.linalg.norm(vessels - center, axis=1).min()
            assert gap <= record.diameter_mm / 2 + 1.5  # a vessel voxel at the nodule's edge
            assert not where.solid[_irc(scan, record.center_xyz)]  # but its centre is not in it
            attached += 1
    assert attached >= 3


def test_same_draw_same_scan_other_index_other_nodules(host) -> None:
    scan, where, _ = host
    one = insert_nodules(scan.hu, scan.geometry, 2, 0, "wide", [], where)
    again = insert_nodules(scan.hu, scan.geometry, 2, 0, "wide", [], where)
    other = insert_nodules(scan.hu, scan.geometry, 2, 1, "wide", [], where)
    assert np.array_equal(one.hu, again.hu) and one.series_uid == again.series_uid
    assert not np.array_equal(one.hu, other.hu) and one.series_uid != other.series_uid


def test_cli_writes_a_luna16_set_of_copies(test_data: Path, tmp_path: Path, capsys) -> None:
    from lunakit.io import ct

    out = tmp_path / "real"
    host_path = test_data / REAL_CT
    args = ["synth", str(out), "--into", str(host_path), "--known", str(KNOWN_CSV), "--scans", "2", "--seed", "9"]
    assert main(args + ["--family", "wide", "--nodules", "2,3"]) == 0
    assert "2 scans" in capsys.readouterr().out
    manifest = json.loads((out / "synth.json").read_text())
    host = ct.load(host_path)
    assert manifest["host"]["series_uid"] == host.series_uid and manifest["host"]["known_findings"] == 3
    uids = (out / "seriesuids.csv").read_text().split()
    assert len(uids) == 2
    with open(out / "annotations.csv") as f:
        annotations = list(csv.DictReader(f))
    with open(out / "annotations_excluded.csv") as f:
        excluded = list(csv.DictReader(f))
    assert 4 <= len(annotations) <= 6 and {a["seriesuid"] for a in annotations} <= set(uids)
    assert len(excluded) == 6
    for k, uid in enumerate(uids):
        copy = ct.load(out / f"subset{k}" / f"{uid}.mhd")
        assert copy.geometry == host.geometry and copy.hu.shape == host.hu.shape


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--known", "k.csv"], "give --into"),
        (["--into", "INTO", "--noise", "10,20"], "--noise"),
        (["--into", "missing-folder"], "missing-folder"),
        (["--into", "NOLUNG"], "no lung field"),
        (["--into", "HOST", "--known", "OTHER"], "no row for the host's series"),
    ],
)
def test_cli_refuses_what_it_cannot_do(test_data: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    from lunakit.io import ct
    from lunakit.io.geometry import Geometry

    nolung = tmp_path / "soft.mhd"
    ct.save(np.full((20, 40, 40), 40, dtype=np.int16), Geometry.identity(), nolung)
    other = tmp_path / "other.csv"
    other.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,0,0,0,5\n")
    named = {"INTO": nolung, "NOLUNG": nolung, "HOST": test_data / REAL_CT, "OTHER": other}
    named["missing-folder"] = tmp_path / "missing-folder"
    extra = [str(named.get(e, e)) for e in extra]
    assert main(["synth", str(tmp_path / "out"), "--scans", "1", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out" / "synth.json").exists()


def test_real_ct_check_script_scores_the_demo_bundle(test_data: Path, tmp_path: Path) -> None:
    """scripts/real_ct_check.sh on one copy: the command lines of the measured runs still work."""
    import os
    import subprocess
    import sys

    env = dict(
        os.environ,
        LUNAKIT_TEST_DATA=str(test_data),
        LUNAKIT=str(Path(sys.executable).parent / "lunakit"),
        SCANS="1",
        BOOTSTRAP="0",
    )
    work = tmp_path / "work"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "real_ct_check.sh"), str(REPO / "models" / "demo-bundle"), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    froc = json.loads((work / "validate_1605" / "froc.json").read_text())
    with open(work / "real_1605" / "annotations.csv") as f:
        assert froc["n_nodules"] == len(list(csv.DictReader(f))) > 0
    assert froc["n_scans"] == 1
    assert f"CPM {froc['cpm']:.4f}" in done.stdout
