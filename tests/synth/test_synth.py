"""The phantom LUNA16 generator: layout, tables, truth of the annotations, determinism, CLI.

The scans are read back with SimpleITK and checked against the tables with numpy/scipy,
independently of how the generator drew them.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lunakit.cli import main
from lunakit.io.geometry import Geometry
from lunakit.synth import SynthError, make_dataset, make_scan, series_uid, write_dataset

from helpers import require

ANNOTATIONS_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
MALIGNANCY_HEADER = ANNOTATIONS_HEADER + [
    "mal_bool",
    "mal_details",
    "bboxLowX",
    "bboxLowY",
    "bboxLowZ",
    "bboxHighX",
    "bboxHighY",
    "bboxHighZ",
    "len_mal_details",
]
CANDIDATES_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "class"]
TABLES = [
    "annotations.csv",
    "annotations_with_malignancy.csv",
    "candidates.csv",
    "annotations_excluded.csv",
    "seriesuids.csv",
]
THRESHOLD_HU = -650.0  # between lung (~-850) and the faintest ground glass (~-450)


# --------------------------------------------------------------------------- helpers


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def xyz(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])


def load_scans(root: Path) -> dict[str, tuple[np.ndarray, Geometry]]:
    """series uid -> (HU [I, R, C], geometry), read with SimpleITK directly."""
    out = {}
    for mhd in sorted(root.glob("subset*/*.mhd")):
        image = sitk.ReadImage(str(mhd))
        geometry = Geometry(
            origin_xyz=image.GetOrigin(),
            spacing_xyz=image.GetSpacing(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
        )
        out[mhd.stem] = (sitk.GetArrayFromImage(image), geometry)
    return out


def nodule_blob(hu: np.ndarray, geometry: Geometry, center_xyz: np.ndarray, diameter_mm: float):
    """(HU at the centre voxel, equal-volume diameter in mm of the HU > threshold component
    holding the centre voxel, within a ball of 1.5 radii around the centre)."""
    voxel = np.rint(geometry.xyz_to_irc(center_xyz)).astype(int)
    assert np.all(voxel >= 0) and np.all(voxel < hu.shape), f"centre {center_xyz} maps outside the scan: {voxel}"
    radius = diameter_mm / 2
    reach = np.ceil(1.5 * radius / geometry.spacing_xyz[::-1]).astype(int) + 1
    lo, hi = np.maximum(voxel - reach, 0), np.minimum(voxel + reach + 1, hu.shape)
    box = hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    idx = np.indices(box.shape).reshape(3, -1).T + lo
    dist = np.linalg.norm(geometry.irc_to_xyz(idx) - center_xyz, axis=1).reshape(box.shape)
    labels, _ = ndimage.label((box > THRESHOLD_HU) & (dist <= 1.5 * radius))
    label = labels[tuple(voxel - lo)]
    volume = float((labels == label).sum() * np.prod(geometry.spacing_xyz)) if label else 0.0
    return float(hu[tuple(voxel)]), float(np.cbrt(6 * volume / np.pi))


def sphere_fill(hu: np.ndarray, geometry: Geometry, center_xyz: np.ndarray, diameter_mm: float) -> float:
    """Fraction of the voxels within the annotated sphere (mm, through the geometry) above the threshold."""
    voxel = np.rint(geometry.xyz_to_irc(center_xyz)).astype(int)
    radius = diameter_mm / 2
    reach = np.ceil(radius / geometry.spacing_xyz[::-1]).astype(int) + 1
    lo, hi = np.maximum(voxel - reach, 0), np.minimum(voxel + reach + 1, hu.shape)
    box = hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    idx = np.indices(box.shape).reshape(3, -1).T + lo
    inside = (np.linalg.norm(geometry.irc_to_xyz(idx) - center_xyz, axis=1) <= radius).reshape(box.shape)
    return float((box[inside] > THRESHOLD_HU).mean())


def ray_exits(hu: np.ndarray, geometry: Geometry, center_xyz: np.ndarray, diameter_mm: float) -> np.ndarray:
    """Along 26 directions from the centre (in mm, through the geometry): the distance, in
    radii, at which HU first drops to the threshold or below (3 radii if it never does)."""
    dirs = np.array(
        [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)], float
    )
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    radius = diameter_mm / 2
    steps = np.arange(0.0, 3.0 * radius + 1e-9, 0.2)
    points = center_xyz + dirs[:, None, :] * steps[None, :, None]
    irc = np.rint(geometry.xyz_to_irc(points.reshape(-1, 3))).astype(int)
    irc = np.clip(irc, 0, np.array(hu.shape) - 1)
    below = (hu[tuple(irc.T)] <= THRESHOLD_HU).reshape(len(dirs), len(steps))
    return np.where(below.any(axis=1), steps[np.argmax(below, axis=1)], steps[-1]) / radius


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- layout and tables


def test_layout_and_series_uids(phantom_root: Path) -> None:
    for name in TABLES:
        require(phantom_root / name)
    mhds = sorted(phantom_root.glob("subset*/*.mhd"))
    assert len(mhds) == 3
    uids = (phantom_root / "seriesuids.csv").read_text().splitlines()
    assert uids == [series_uid(1234, k) for k in range(3)]
    for k, uid in enumerate(uids):
        assert (phantom_root / f"subset{k % 10}" / f"{uid}.mhd").is_file()
        assert (phantom_root / f"subset{k % 10}" / f"{uid}.raw").is_file()
        assert uid.startswith(f"1.3.6.1.4.1.14519.5.2.1.9999.1234.{k}.")
        assert len(uid) <= 64 and re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", uid), uid
    assert not list(phantom_root.glob(".synth-*")), "temporary folder left behind"


def test_table_headers_and_links(phantom_root: Path) -> None:
    uids = set((phantom_root / "seriesuids.csv").read_text().splitlines())
    expected = {
        "annotations.csv": ANNOTATIONS_HEADER,
        "annotations_with_malignancy.csv": MALIGNANCY_HEADER,
        "candidates.csv": CANDIDATES_HEADER,
        "annotations_excluded.csv": ANNOTATIONS_HEADER,
    }
    for name, header in expected.items():
        got, rows = read_table(phantom_root / name)
        assert got == header, name
        assert rows, f"{name} is empty"
        assert {r["seriesuid"] for r in rows} <= uids, name
        for r in rows:
            assert np.all(np.isfinite(xyz(r)))
    # every scan has at least one nodule at this size and seed
    _, annotations = read_table(phantom_root / "annotations.csv")
    assert {r["seriesuid"] for r in annotations} == uids


def test_malignancy_header_matches_the_real_table(test_data: Path) -> None:
    header, _ = read_table(require(test_data / "luna" / "annotations_with_malignancy.csv"))
    assert header == MALIGNANCY_HEADER


def test_malignancy_table_agrees_with_annotations(phantom_root: Path) -> None:
    _, plain = read_table(phantom_root / "annotations.csv")
    _, rich = read_table(phantom_root / "annotations_with_malignancy.csv")
    assert [[r[k] for k in ANNOTATIONS_HEADER] for r in rich] == [[r[k] for k in ANNOTATIONS_HEADER] for r in plain]
    for r in rich:
        ratings = json.loads(r["mal_details"])
        assert 3 <= len(ratings) <= 5 and all(1 <= x <= 5 for x in ratings)
        assert int(r["len_mal_details"]) == len(ratings)
        # LIDC-style consensus: malignant when at least half the readers say 4 or 5
        assert r["mal_bool"] == str(2 * sum(x >= 4 for x in ratings) >= len(ratings))
        low = np.array([float(r[f"bboxLow{a}"]) for a in "XYZ"])
        high = np.array([float(r[f"bboxHigh{a}"]) for a in "XYZ"])
        center, diameter = xyz(r), float(r["diameter_mm"])
        assert np.all(low <= center + 1e-6) and np.all(center <= high + 1e-6)
        assert 0.3 * diameter < np.max(high - low) < 3.0 * diameter


def test_orientations_include_flipped_and_oblique(phantom_root: Path) -> None:
    directions = [g.direction for _, g in load_scans(phantom_root).values()]
    assert any(np.allclose(d, np.eye(3)) for d in directions)
    assert any(np.allclose(np.abs(d), np.eye(3)) and np.any(np.diag(d) < 0) for d in directions)
    oblique = [d for d in directions if not np.allclose(np.abs(d), np.eye(3))]
    assert oblique
    for d in oblique:
        np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-9)


# --------------------------------------------------------------------------- truth of the tables


def test_annotations_sit_on_nodules_of_their_size(phantom_root: Path) -> None:
    scans = load_scans(phantom_root)
    _, rows = read_table(phantom_root / "annotations.csv")
    for r in rows:
        hu, geometry = scans[r["seriesuid"]]
        diameter = float(r["diameter_mm"])
        assert 3.0 <= diameter <= 30.0
        center_hu, blob_diameter = nodule_blob(hu, geometry, xyz(r), diameter)
        assert center_hu > THRESHOLD_HU, f"annotation {xyz(r)} is not on a nodule (HU {center_hu})"
        # not smaller than annotated: dense tissue fills the annotated sphere, connected
        assert sphere_fill(hu, geometry, xyz(r), diameter) >= 0.8
        assert blob_diameter > 0.75 * diameter, (diameter, blob_diameter)
        # not larger than annotated: most rays leave the nodule near one radius (a wall or a
        # vessel may keep a minority of them dense)
        exits = ray_exits(hu, geometry, xyz(r), diameter)
        assert 0.5 < np.percentile(exits, 25) < 1.5, (diameter, np.sort(exits))


def test_a_wrong_center_is_caught(phantom_root: Path) -> None:
    """The check above can fail: a centre mirrored through the scan lands off the nodule."""
    scans = load_scans(phantom_root)
    _, rows = read_table(phantom_root / "annotations.csv")
    misses = 0
    for r in rows:
        hu, geometry = scans[r["seriesuid"]]
        irc = geometry.xyz_to_irc(xyz(r))
        mirrored = geometry.irc_to_xyz(np.array(hu.shape) - 1 - irc)
        diameter = float(r["diameter_mm"])
        center_hu, blob_diameter = nodule_blob(hu, geometry, mirrored, diameter)
        p25 = np.percentile(ray_exits(hu, geometry, mirrored, diameter), 25)
        misses += not (center_hu > THRESHOLD_HU and blob_diameter > 0.75 * diameter and 0.5 < p25 < 1.6)
    assert misses >= len(rows) - 1


def test_a_wrong_diameter_is_caught(phantom_root: Path) -> None:
    """Halving or doubling the annotated diameter fails the size checks above."""
    scans = load_scans(phantom_root)
    _, rows = read_table(phantom_root / "annotations.csv")
    doubled_caught = halved_caught = 0
    for r in rows:
        hu, geometry = scans[r["seriesuid"]]
        diameter = float(r["diameter_mm"])
        doubled_caught += sphere_fill(hu, geometry, xyz(r), 2 * diameter) < 0.8
        halved_caught += np.percentile(ray_exits(hu, geometry, xyz(r), diameter / 2), 25) >= 1.5
    assert doubled_caught == len(rows) and halved_caught >= len(rows) - 1


def test_candidates(phantom_root: Path) -> None:
    scans = load_scans(phantom_root)
    _, annotations = read_table(phantom_root / "annotations.csv")
    _, candidates = read_table(phantom_root / "candidates.csv")
    assert {r["class"] for r in candidates} == {"0", "1"}
    positives = [r for r in candidates if r["class"] == "1"]
    negatives = [r for r in candidates if r["class"] == "0"]
    assert len(negatives) >= 3 * len(annotations)
    for a in annotations:  # every nodule is found by at least one class-1 candidate
        near = [
            c
            for c in positives
            if c["seriesuid"] == a["seriesuid"] and np.linalg.norm(xyz(c) - xyz(a)) <= float(a["diameter_mm"]) / 2
        ]
        assert near, f"no class-1 candidate at nodule {xyz(a)}"
    for c in positives:  # ... and every class-1 candidate is inside a nodule
        hu, geometry = scans[c["seriesuid"]]
        assert any(
            np.linalg.norm(xyz(c) - xyz(a)) <= float(a["diameter_mm"]) / 2
            for a in annotations
            if a["seriesuid"] == c["seriesuid"]
        )
        assert hu[tuple(np.rint(geometry.xyz_to_irc(xyz(c))).astype(int))] > THRESHOLD_HU
    for c in negatives:  # non-nodules keep clear of every nodule
        for a in annotations:
            if a["seriesuid"] == c["seriesuid"]:
                assert np.linalg.norm(xyz(c) - xyz(a)) > float(a["diameter_mm"]) / 2 + 1.0
        hu, geometry = scans[c["seriesuid"]]
        voxel = np.rint(geometry.xyz_to_irc(xyz(c))).astype(int)
        assert np.all(voxel >= 0) and np.all(voxel < hu.shape)
    # the negatives are of several kinds: dense ones (vessels, wall, bone) and lung air
    neg_hu = [
        scans[c["seriesuid"]][0][tuple(np.rint(scans[c["seriesuid"]][1].xyz_to_irc(xyz(c))).astype(int))]
        for c in negatives
    ]
    assert sum(h > -300 for h in neg_hu) >= 5 and sum(h < -700 for h in neg_hu) >= 3


def test_excluded_findings(phantom_root: Path) -> None:
    scans = load_scans(phantom_root)
    _, annotations = read_table(phantom_root / "annotations.csv")
    _, excluded = read_table(phantom_root / "annotations_excluded.csv")
    diameters = [float(r["diameter_mm"]) for r in excluded]
    assert any(d == -1 for d in diameters) and all(d == -1 or 0 < d < 3 for d in diameters)
    for r in excluded:
        hu, geometry = scans[r["seriesuid"]]
        voxel = np.rint(geometry.xyz_to_irc(xyz(r))).astype(int)
        assert hu[tuple(voxel)] > THRESHOLD_HU  # a small dense finding is there
        for a in annotations:
            if a["seriesuid"] == r["seriesuid"]:
                assert np.linalg.norm(xyz(r) - xyz(a)) > float(a["diameter_mm"]) / 2


def test_scan_content_looks_like_chest_ct(phantom_root: Path) -> None:
    for hu, geometry in load_scans(phantom_root).values():
        assert hu.dtype == np.int16 and hu.shape == (48, 96, 96)
        lung_like = (hu > -950) & (hu < -700)
        assert 0.05 < lung_like.mean() < 0.5  # two lungs
        assert (hu > 300).sum() > 50  # bone
        soft = (hu > -150) & (hu < 100)
        assert soft.mean() > 0.15  # body wall, mediastinum
        corner = hu[:, :6, :6]
        assert np.all((corner < -900) | (corner == -2048))  # air or field-of-view padding
        air = hu[:, :6, 40:56].astype(float)
        assert 8 < air[air > -1500].std() < 40  # scanner noise
        spacing = geometry.spacing_xyz
        assert spacing[0] == spacing[1] and 0.6 <= spacing[0] <= 0.9 and 1.0 <= spacing[2] <= 2.5


# --------------------------------------------------------------------------- determinism and sizes


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", n_scans=2, seed=99, shape=(24, 48, 48))
    b = make_dataset(tmp_path / "b", n_scans=2, seed=99, shape=(24, 48, 48))
    c = make_dataset(tmp_path / "c", n_scans=2, seed=100, shape=(24, 48, 48))
    assert a == tmp_path / "a"
    bytes_a, bytes_b, bytes_c = all_bytes(a), all_bytes(b), all_bytes(c)
    assert bytes_a == bytes_b
    raw_a = [v for k, v in sorted(bytes_a.items()) if k.endswith(".raw")]
    raw_c = [v for k, v in sorted(bytes_c.items()) if k.endswith(".raw")]
    assert set(bytes_a) != set(bytes_c) and raw_a != raw_c


def test_default_shape_varies_per_scan() -> None:
    scan = make_scan(seed=5, index=0)
    n_i, n_r, n_c = scan.hu.shape
    assert 60 <= n_i <= 90 and n_r == n_c == 128
    assert scan.nodules


def test_tiny_shape_still_works() -> None:
    scan = make_scan(seed=3, index=2, shape_irc=(16, 16, 16))
    assert scan.hu.shape == (16, 16, 16) and scan.hu.dtype == np.int16


# --------------------------------------------------------------------------- output folder rules


def test_regenerating_replaces_a_previous_phantom(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    make_dataset(out, n_scans=2, seed=1, shape=(24, 48, 48))
    old = set(out.glob("subset*/*.mhd"))
    make_dataset(out, n_scans=1, seed=2, shape=(24, 48, 48))
    new = set(out.glob("subset*/*.mhd"))
    assert len(new) == 1 and not (old & new)
    assert (out / "seriesuids.csv").read_text().splitlines() == [series_uid(2, 0)]


def test_refuses_to_overwrite_other_data(tmp_path: Path) -> None:
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    with pytest.raises(SynthError, match="refusing to overwrite"):
        make_dataset(tmp_path, n_scans=1, seed=0, shape=(24, 48, 48))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.csv"]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(SynthError, match="not a directory"):
        make_dataset(not_a_dir, n_scans=1, seed=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_scans": 0}, "number of scans"),
        ({"n_scans": -3}, "number of scans"),
        ({"n_scans": 2.5}, "number of scans"),
        ({"seed": -1}, "seed"),
        ({"seed": "7"}, "seed"),
        ({"shape": (15, 64, 64)}, ">= 16"),
        ({"shape": (32, 64)}, "three integers"),
        ({"shape": (32.0, 64, 64)}, "three integers"),
        ({"shape": (4096, 4096, 4096)}, "voxels"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"n_scans": 1, "seed": 0, "shape": (24, 48, 48)} | kwargs
    with pytest.raises(SynthError, match=message):
        make_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- command line


def test_cli_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--scans", "2", "--seed", "3", "--shape", "24", "48", "48"]) == 0
    line = capsys.readouterr().out.strip()
    _, annotations = read_table(out / "annotations.csv")
    _, candidates = read_table(out / "candidates.csv")
    assert line.startswith("synth: 2 scans, ") and str(out) in line
    assert f"{len(annotations)} nodules" in line and f"{len(candidates)} candidates" in line
    assert all_bytes(out) == all_bytes(make_dataset(tmp_path / "api", 2, 3, (24, 48, 48)))


@pytest.mark.parametrize(
    "argv",
    [
        ["--scans", "0"],
        ["--seed", "-5"],
        ["--shape", "8", "64", "64"],
        ["--shape", "2000", "2000", "2000"],
    ],
)
def test_cli_rejects_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    assert main(["synth", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lunakit: error: synth:") and "\n" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["--scans", "many"], ["--shape", "32", "64"], []])
def test_cli_rejects_malformed_arguments(tmp_path: Path, argv: list[str]) -> None:
    target = [str(tmp_path / "o")] if argv else []
    with pytest.raises(SystemExit) as exc:
        main(["synth", *target, *argv])
    assert exc.value.code == 2


def test_write_dataset_summary_counts(tmp_path: Path) -> None:
    summary = write_dataset(tmp_path, n_scans=1, seed=8, shape=(24, 48, 48))
    _, rich = read_table(tmp_path / "annotations_with_malignancy.csv")
    _, excluded = read_table(tmp_path / "annotations_excluded.csv")
    assert summary.scans == 1 and summary.nodules == len(rich) and summary.excluded == len(excluded)
    assert summary.malignant == sum(r["mal_bool"] == "True" for r in rich)
