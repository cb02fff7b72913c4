"""Phantom families: the drawn scans honor the requested ranges, lesion types have their HU,
tables land on what they describe, the classic family is the original generator, bad ranges
are refused.

Measurements are made on the stored arrays (read back with SimpleITK where a dataset is
written), with numpy/scipy, independently of how the generator drew them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lunakit.io.geometry import Geometry
from lunakit.synth import SynthError, family_with, get_family, make_scan, write_dataset
from lunakit.synth.anatomy import AnatomyExtras, build_anatomy
from lunakit.synth.family import FAMILIES, parse_matrices, parse_mix, parse_range

from helpers import read_rows

WIDE = get_family("wide")


def voxel_hu(hu: np.ndarray, geometry: Geometry, xyz: np.ndarray) -> float:
    irc = np.rint(geometry.xyz_to_irc(np.asarray(xyz, dtype=float))).astype(int)
    assert np.all(irc >= 0) and np.all(irc < hu.shape), f"{xyz} maps outside the scan: {irc}"
    return float(hu[tuple(irc)])


def ball_median(hu: np.ndarray, geometry: Geometry, xyz: np.ndarray, radius_mm: float) -> float:
    """Median HU of the voxels whose centres lie within radius_mm of xyz (through the geometry)."""
    center = geometry.xyz_to_irc(np.asarray(xyz, dtype=float))
    reach = np.ceil(radius_mm / geometry.spacing_xyz[::-1]).astype(int) + 1
    lo = np.maximum(np.rint(center).astype(int) - reach, 0)
    hi = np.minimum(np.rint(center).astype(int) + reach + 1, hu.shape)
    idx = np.indices(tuple(hi - lo)).reshape(3, -1).T + lo
    dist = np.linalg.norm(geometry.irc_to_xyz(idx) - np.asarray(xyz), axis=1)
    inside = idx[dist <= radius_mm]
    assert len(inside), "no voxel centre within the radius"
    return float(np.median(hu[tuple(inside.T)]))


# --------------------------------------------------------------------------- classic


def test_classic_family_is_the_original_generator() -> None:
    # The classic-family runs (docs/training.md) and blind sets depend on these bytes. The digest
    # was taken from the generator before families existed (git 48378df).
    scan = make_scan(7, 3, (24, 48, 48))
    assert hashlib.sha256(scan.hu.tobytes()).hexdigest()[:16] == CLASSIC_DIGEST
    again = make_scan(7, 3, (24, 48, 48), family="classic")
    assert np.array_equal(scan.hu, again.hu) and scan.params == {} and scan.hard_negatives == []


CLASSIC_DIGEST = "fa2f3d6a1d5f0be5"  # make_scan(7, 3, (24, 48, 48)) at git 48378df, numpy 2 / scipy 1


def test_classic_non_square_shape_is_unchanged_too() -> None:
    scan = make_scan(7, 3, (24, 64, 48))  # classic stretches the chest to the matrix, as before
    assert hashlib.sha256(scan.hu.tobytes()).hexdigest()[:16] == "b2265730600ff3d1"  # git 48378df


def test_family_draws_never_shift_the_classic_ones() -> None:
    """A family with classic's ranges takes the family code path (a second generator, hard
    negatives, parameters) yet draws the same scan: what a family adds draws elsewhere."""
    plain = make_scan(4, 2, (24, 48, 48))
    same_ranges = family_with(get_family("classic"), noise_hu=(15.0, 25.0))
    assert not same_ranges.is_classic
    other = make_scan(4, 2, (24, 48, 48), same_ranges)
    assert np.array_equal(plain.hu, other.hu) and other.params["family"] == "classic+"
    assert [c.tolist() for c, _ in plain.candidates] == [c.tolist() for c, _ in other.candidates]


def body_aspect(hu: np.ndarray) -> float:
    """Width / depth of the body (the largest HU > -300 component of the middle slice, table excluded)."""
    from scipy import ndimage

    labels, n = ndimage.label(hu[hu.shape[0] // 2] > -300)
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    return (np.ptp(cols) + 1) / (np.ptp(rows) + 1)


def test_a_non_square_matrix_keeps_the_chest_shape() -> None:
    fam = family_with(WIDE, matrices=((128, 128),))
    square = [body_aspect(make_scan(13, k, (24, 128, 128), fam).hu) for k in (0, 3)]
    tall = [body_aspect(make_scan(13, k, (24, 128, 96), fam).hu) for k in (0, 3)]
    wide = [body_aspect(make_scan(13, k, (24, 96, 128), fam).hu) for k in (0, 3)]
    assert np.allclose(tall, square, rtol=0.08) and np.allclose(wide, square, rtol=0.08), (square, tall, wide)
    assert min(square) > 1.2  # a chest is wider than deep


# --------------------------------------------------------------------------- scanner ranges


def test_requested_scanner_ranges_are_honored() -> None:
    fam = family_with(
        WIDE,
        matrices=((64, 48),),
        slices=(20, 24),
        pixel_mm=(0.5, 0.55),
        slice_mm=(2.8, 3.0),
        noise_hu=(30.0, 30.0),
        blur_mm=(0.3, 0.3),
        pad_prob=1.0,
        pad_hu=(-3024.0,),
    )
    scan = make_scan(11, 0, family=fam)  # scan 0: plain orientation, so rows are anterior -> posterior
    n_i, n_r, n_c = scan.hu.shape
    assert (n_r, n_c) == (64, 48) and 20 <= n_i <= 24
    sx, sy, sz = scan.geometry.spacing_xyz
    assert sx == sy and 0.5 <= sx <= 0.55 and 2.8 <= sz <= 3.0
    # padding: every voxel outside the circle of diameter max(R, C) holds -3024, and only there
    rr = np.arange(n_r)[:, None] - (n_r - 1) / 2
    cc = np.arange(n_c)[None, :] - (n_c - 1) / 2
    outside = rr**2 + cc**2 > (0.5 * max(n_r, n_c)) ** 2
    assert outside.any() and np.all(scan.hu[:, outside] == -3024)
    assert np.all(scan.hu[:, ~outside] > -2048)
    # noise: air in front of the chest (uniform -1000 before acquisition)
    air = scan.hu[:, 1:6, n_c // 2 - 5 : n_c // 2 + 5].astype(np.float64)
    assert abs(air.mean() + 1000) < 5
    assert 0.85 * 30 < air.std() < 1.15 * 30, air.std()


@pytest.mark.parametrize("noise", [10.0, 40.0])
def test_measured_noise_follows_the_requested_level(noise: float) -> None:
    fam = family_with(WIDE, matrices=((64, 64),), slices=(24, 24), noise_hu=(noise, noise), pad_prob=0.0)
    hu = make_scan(2, 0, family=fam).hu
    air = hu[:, 1:6, 27:37].astype(np.float64)
    assert 0.85 * noise < air.std() < 1.15 * noise


def test_wide_family_spans_its_ranges_over_a_set() -> None:
    scans = [make_scan(5, k, (20, 40, 40), "wide") for k in range(8)]
    pixels = [s.geometry.spacing_xyz[0] for s in scans]
    slices = [s.geometry.spacing_xyz[2] for s in scans]
    assert all(0.5 <= p <= 1.0 for p in pixels) and all(0.6 <= z <= 3.0 for z in slices)
    assert all(10 <= s.params["noise_hu"] <= 40 and 0.2 <= s.params["blur_mm"] <= 0.9 for s in scans)
    # a varied set: the draws differ from scan to scan
    assert len({round(p, 4) for p in pixels}) == 8 and len({round(z, 4) for z in slices}) == 8
    pads = {s.params["pad_hu"] for s in scans}
    assert pads <= {None, -2048.0, -3024.0} and len(pads) >= 2
    for s in scans:  # padding value present exactly where the parameters say
        corner = s.hu[:, 0, 0]
        if s.params["pad_hu"] is not None:
            assert np.all(corner == s.params["pad_hu"])
        else:
            assert np.all(corner > -2048)


def test_default_matrices_vary_and_include_non_square() -> None:
    shapes = {make_scan(9, k, family="b").hu.shape[1:] for k in range(6)}
    assert len(shapes) >= 2 and any(r != c for r, c in shapes)


def test_a_512_matrix_is_possible() -> None:
    fam = family_with(WIDE, matrices=((512, 400),), slices=(16, 16), slice_mm=(3.0, 3.0))
    scan = make_scan(1, 0, family=fam)
    assert scan.hu.shape == (16, 512, 400)


# --------------------------------------------------------------------------- lesions and tables


def _scans_with(texture_mix: tuple[float, ...], n: int = 3, seed: int = 4) -> list:
    fam = family_with(WIDE, textures=texture_mix, blur_mm=(0.3, 0.3), noise_hu=(8.0, 8.0), pad_prob=0.0)
    return [make_scan(seed, k, (40, 96, 96), fam) for k in range(n)]


def test_calcified_nodules_are_dense() -> None:
    values = [voxel_hu(s.hu, s.geometry, n.center_xyz) for s in _scans_with((0, 0, 0, 1)) for n in s.nodules]
    assert values and all(v > 200 for v in values), values


def test_ground_glass_nodules_are_faint() -> None:
    scans = _scans_with((0, 1, 0, 0))
    # the median of the central half: a vessel may cross a ground-glass nodule (it stays visible)
    values = [ball_median(s.hu, s.geometry, n.center_xyz, n.diameter_mm / 4) for s in scans for n in s.nodules]
    assert all(n.texture == "ground_glass" for s in scans for n in s.nodules)
    # -620..-300 HU drawn, +-45 texture, noise
    assert values and all(-680 < v < -250 for v in values), values


def shell_median(hu: np.ndarray, geometry: Geometry, xyz: np.ndarray, r0_mm: float, r1_mm: float) -> float:
    """Median HU of the voxels whose centres lie between r0_mm and r1_mm from xyz."""
    center = np.rint(geometry.xyz_to_irc(np.asarray(xyz, dtype=float))).astype(int)
    reach = np.ceil(r1_mm / geometry.spacing_xyz[::-1]).astype(int) + 1
    lo, hi = np.maximum(center - reach, 0), np.minimum(center + reach + 1, hu.shape)
    idx = np.indices(tuple(hi - lo)).reshape(3, -1).T + lo
    dist = np.linalg.norm(geometry.irc_to_xyz(idx) - np.asarray(xyz), axis=1)
    shell = idx[(dist >= r0_mm) & (dist <= r1_mm)]
    return float(np.median(hu[tuple(shell.T)]))


def shell_max(hu: np.ndarray, geometry: Geometry, xyz: np.ndarray, r0_mm: float, r1_mm: float) -> float:
    center = np.rint(geometry.xyz_to_irc(np.asarray(xyz, dtype=float))).astype(int)
    reach = np.ceil(r1_mm / geometry.spacing_xyz[::-1]).astype(int) + 1
    lo, hi = np.maximum(center - reach, 0), np.minimum(center + reach + 1, hu.shape)
    idx = np.indices(tuple(hi - lo)).reshape(3, -1).T + lo
    dist = np.linalg.norm(geometry.irc_to_xyz(idx) - np.asarray(xyz), axis=1)
    shell = idx[(dist >= r0_mm) & (dist <= r1_mm)]
    return float(hu[tuple(shell.T)].max()) if len(shell) else -np.inf


def test_part_solid_nodules_have_a_solid_core_in_ground_glass() -> None:
    scans = _scans_with((0, 0, 1, 0))
    nodules = [(s, n) for s in scans for n in s.nodules]
    assert nodules and all(n.texture == "part_solid" for _, n in nodules)
    for s, n in nodules:
        r = n.diameter_mm / 2
        # the core is the shape scaled by 0.45: its densest voxel within 0.4 r (or the centre voxel)
        core = max(shell_max(s.hu, s.geometry, n.center_xyz, 0.0, 0.4 * r), voxel_hu(s.hu, s.geometry, n.center_xyz))
        rim = shell_median(s.hu, s.geometry, n.center_xyz, 0.6 * r, 0.85 * r)
        assert core > -150, core
        assert -700 < rim < -250, rim


def test_the_wide_family_draws_every_texture_and_location() -> None:
    records = [n for k in range(16) for n in make_scan(31, k, (24, 64, 64), "wide").nodules]
    assert {n.texture for n in records} == {"solid", "ground_glass", "part_solid", "calcified"}
    assert {n.location for n in records} == {"isolated", "juxtapleural", "juxtavascular"}
    small = [n for n in records if n.diameter_mm < 5]
    assert small, "wide draws nodules under 5 mm (median 6 mm)"


def test_solid_nodules_and_annotations_land_on_them() -> None:
    scans = _scans_with((1, 0, 0, 0), n=4, seed=8)
    values = [voxel_hu(s.hu, s.geometry, n.center_xyz) for s in scans for n in s.nodules]
    assert values and all(v > -150 for v in values), values
    locations = {n.location for s in scans for n in s.nodules}
    assert "juxtavascular" in locations


def test_hard_negatives_sit_on_their_structures_and_are_class_0() -> None:
    fam = family_with(
        WIDE, granulomas=(2, 2), scars=(2, 2), end_on_vessels=(2, 2), vessel_crossings=(2, 2), blur_mm=(0.3, 0.3)
    )
    kinds = set()
    for k in range(2):
        scan = make_scan(21, k, (48, 112, 112), fam)
        negatives = [c for c, cls in scan.candidates if cls == 0]
        positives = [c for c, cls in scan.candidates if cls == 1]
        for kind, xyz in scan.hard_negatives:
            kinds.add(kind)
            value = voxel_hu(scan.hu, scan.geometry, xyz)
            floor = {"granuloma": 300, "scar": -600, "end_on_vessel": -350, "vessel_crossing": -600}[kind]
            assert value > floor, (kind, value)
            assert any(np.allclose(xyz, c) for c in negatives)
            # never on a nodule: outside every annotated sphere
            for n in scan.nodules:
                assert np.linalg.norm(xyz - n.center_xyz) > n.diameter_mm / 2
        assert positives
    assert kinds == {"granuloma", "scar", "end_on_vessel", "vessel_crossing"}


def test_written_family_dataset_tables_match_the_scans(tmp_path: Path) -> None:
    # scans 0, 1, 2 are plain, flipped and oblique: the tables hold patient mm through each geometry
    fam = family_with(WIDE, blur_mm=(0.3, 0.5), textures=(1, 0, 0, 0))
    write_dataset(tmp_path / "d", 3, 6, shape=(40, 96, 96), family=fam)
    root = tmp_path / "d"
    scans = {}
    for mhd in root.glob("subset*/*.mhd"):
        image = sitk.ReadImage(str(mhd))
        geometry = Geometry(
            origin_xyz=image.GetOrigin(),
            spacing_xyz=image.GetSpacing(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
        )
        scans[mhd.stem] = (sitk.GetArrayFromImage(image), image, geometry)
    rows = read_rows(root / "annotations.csv")
    assert rows
    for row in rows:
        hu, image, _ = scans[row["seriesuid"]]
        point = tuple(float(row[k]) for k in ("coordX", "coordY", "coordZ"))
        index = np.rint(image.TransformPhysicalPointToContinuousIndex(point)).astype(int)  # (x, y, z)
        assert hu[index[2], index[1], index[0]] > -150
    hard = read_rows(root / "hard_negatives.csv")
    cands = {
        (r["seriesuid"], r["coordX"], r["coordY"], r["coordZ"])
        for r in read_rows(root / "candidates.csv")
        if r["class"] == "0"
    }
    assert hard and all((r["seriesuid"], r["coordX"], r["coordY"], r["coordZ"]) in cands for r in hard)
    manifest = json.loads((root / "synth.json").read_text())
    assert manifest["family"]["name"] == "wide+" and len(manifest["scans"]) == 3
    assert "hard_negatives.csv" in manifest["files"]
    orientations = ["plain" if np.allclose(g.direction, np.eye(3)) else "other" for _, _, g in scans.values()]
    assert orientations.count("other") == 2


def test_same_seed_same_scan_other_seed_other_scan() -> None:
    a = make_scan(5, 1, (24, 64, 64), "b")
    b = make_scan(5, 1, (24, 64, 64), "b")
    c = make_scan(6, 1, (24, 64, 64), "b")
    assert np.array_equal(a.hu, b.hu) and a.params == b.params
    assert [x.tolist() for x, _ in a.candidates] == [x.tolist() for x, _ in b.candidates]
    assert not np.array_equal(a.hu, c.hu)


def test_the_life_family_is_wide_on_life_size_matrices() -> None:
    life, wide = FAMILIES["life"], FAMILIES["wide"]
    assert life.matrices == ((512, 512), (512, 400)) and life.slices == (80, 120)
    assert dataclasses.replace(life, name="wide", matrices=wide.matrices, slices=wide.slices) == wide


def test_families_a_and_b_differ_where_it_matters() -> None:
    a, b = FAMILIES["a"], FAMILIES["b"]
    assert a.noise_hu[1] <= b.noise_hu[0] and a.pixel_mm[1] <= b.pixel_mm[0] and a.slice_mm[1] <= b.slice_mm[0]
    assert a.vessel_density[1] < b.vessel_density[0]
    assert a.textures != b.textures and a.diameter_median_mm != b.diameter_median_mm


# --------------------------------------------------------------------------- anatomy


def _anatomy(extras: AnatomyExtras | None):
    rng = np.random.default_rng(3)
    return build_anatomy(rng, (40, 96, 96), np.array([2.0, 0.8, 0.8]), extras)


def test_vessel_density_adds_and_removes_vessels() -> None:
    volume = {
        d: float(_anatomy(AnatomyExtras(np.random.default_rng(1), vessel_density=d)).vessel_occupancy.sum())
        for d in (0.5, 1.0, 1.8)
    }
    assert volume[0.5] < volume[1.0] < volume[1.8]


def test_airway_tree_and_fissures_appear() -> None:
    plain = _anatomy(AnatomyExtras(np.random.default_rng(1)))
    airways = _anatomy(AnatomyExtras(np.random.default_rng(1), airways=True))
    fissures = _anatomy(AnatomyExtras(np.random.default_rng(1), fissures=True))
    lung = plain.lung
    assert (airways.hu[lung] < -950).sum() > (plain.hu[lung] < -950).sum() + 50  # bronchial lumen
    band = lambda hu: ((hu > -720) & (hu < -540))[lung].sum()  # noqa: E731
    assert band(fissures.hu) > band(plain.hu) + 200


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"noise_hu": (40.0, 10.0)}, "noise_hu must satisfy"),
        ({"pixel_mm": (0.0, 0.5)}, "pixel_mm must satisfy"),
        ({"slice_mm": (1.0, float("nan"))}, "slice_mm must be two finite numbers"),
        ({"matrices": ((8, 8),)}, "matrix 8x8"),
        ({"pad_hu": (-500.0,)}, "padding values"),
        ({"textures": (0.5, 0.5, 0.5, 0.0)}, "sum to 1"),
        ({"bogus": 1}, "unknown family parameter"),
    ],
)
def test_absurd_ranges_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(SynthError, match=message):
        family_with(WIDE, **overrides)


def test_parsers() -> None:
    assert parse_range("10,40", "--noise") == (10.0, 40.0)
    assert parse_range("20", "--noise") == (20.0, 20.0)
    assert parse_matrices("512x512,512X400") == ((512, 512), (512, 400))
    assert parse_mix("solid=3,calcified=1", ("solid", "ground_glass", "part_solid", "calcified"), "--t") == (
        0.75,
        0.0,
        0.0,
        0.25,
    )
    with pytest.raises(SynthError):
        get_family("nope")


def test_cli_family_and_ranges(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lunakit.cli import main

    out = tmp_path / "d"
    argv = ["synth", str(out), "--scans", "2", "--family", "b", "--shape", "24", "64", "64", "--noise", "12,14"]
    argv += ["--pad=-3024,-2500"]
    assert main(argv) == 0
    manifest = json.loads((out / "synth.json").read_text())
    assert manifest["family"]["noise_hu"] == [12.0, 14.0]
    assert all(12 <= s["noise_hu"] <= 14 for s in manifest["scans"])
    assert manifest["family"]["pad_hu"] == [-3024.0, -2500.0]
    assert all(s["pad_hu"] in (None, -3024.0, -2500.0) for s in manifest["scans"])
    assert "family b+" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra",
    [
        ["--family", "zzz"],
        ["--noise", "a,b"],
        ["--pixel", "0,0.5"],
        ["--matrix", "512"],
        ["--pad", "-100"],
        ["--textures", "solid=1,round=1"],
        ["--slices", "4,8"],
    ],
)
def test_cli_refuses_bad_ranges(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str]) -> None:
    from lunakit.cli import main

    assert main(["synth", str(tmp_path / "d"), "--scans", "1", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lunakit: error: synth:") and "\n" not in err
    assert not (tmp_path / "d" / "synth.json").exists()
