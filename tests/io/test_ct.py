"""lunakit.io.ct: reading scans (real DICOM, written DICOM series, mhd/nii/nrrd), saving, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from lunakit.cli import main as cli_main
from lunakit.errors import LunakitError, ScanError
from lunakit.io import ct

from helpers import require

REAL_UID = "1.3.6.1.4.1.14519.5.2.1.7085.2626.242193282649561899185427104083"


# -- the real DICOM series ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_dir(test_data: Path) -> Path:
    return require(test_data / "ct" / "C3N-00247-chest-ct")


@pytest.fixture(scope="module")
def real_scan(real_dir: Path) -> ct.CtScan:
    return ct.load(real_dir)


def test_real_dicom_series(real_scan: ct.CtScan, real_dir: Path) -> None:
    assert real_scan.hu.shape == (99, 512, 512)
    assert real_scan.hu.dtype == np.int16
    g = real_scan.geometry
    assert tuple(g.spacing_xyz) == (0.564453125, 0.564453125, 3.0)
    assert tuple(g.origin_xyz) == (-143.2177734375, -287.2177734375, -288.0)
    np.testing.assert_array_equal(g.direction, np.eye(3))
    assert real_scan.series_uid == REAL_UID
    assert int(real_scan.hu.min()) == -1024
    assert int(real_scan.hu.max()) == 3071
    assert real_scan.path == str(real_dir)


def test_real_dicom_matches_per_file_rescale(real_scan: ct.CtScan, real_dir: Path) -> None:
    """Independent check of the HU values and slice order: read one slice file on its own
    and apply its RescaleSlope/Intercept by hand; its z must sit at its ImagePositionPatient."""
    files = sorted(real_dir.glob("*.dcm"))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[len(files) // 2]))
    reader.LoadPrivateTagsOn()
    reader.ReadImageInformation()
    z = float(reader.GetMetaData("0020|0032").split("\\")[2])
    k = int(round((z - real_scan.geometry.origin_xyz[2]) / real_scan.geometry.spacing_xyz[2]))
    one = sitk.GetArrayFromImage(reader.Execute())[0]  # already rescaled by GDCM
    np.testing.assert_array_equal(real_scan.hu[k], one.astype(np.int16))
    # And the rescale itself: stored values + intercept.
    slope = float(reader.GetMetaData("0028|1053"))
    intercept = float(reader.GetMetaData("0028|1052"))
    assert slope == 1.0 and intercept == -1024.0
    assert real_scan.hu[k].min() >= intercept


def test_real_dicom_series_uid_selects(real_dir: Path) -> None:
    assert ct.load(real_dir, series_uid=REAL_UID).series_uid == REAL_UID
    with pytest.raises(ScanError, match=REAL_UID):
        ct.load(real_dir, series_uid="1.2.3.4")


def test_cli_info_real(real_scan: ct.CtScan, real_dir: Path, capsys) -> None:
    assert cli_main(["info", str(real_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == real_scan.info()
    assert out["size_irc"] == [99, 512, 512]
    assert out["spacing_xyz"] == [0.564453125, 0.564453125, 3.0]
    assert out["origin_xyz"] == [-143.2177734375, -287.2177734375, -288.0]
    assert out["direction"] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert out["series_uid"] == REAL_UID
    assert (out["hu_min"], out["hu_max"]) == (-1024, 3071)


def test_cli_info_missing_path_subprocess(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mhd"
    exe = Path(sys.executable).with_name("lunakit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lunakit.cli"]
    proc = subprocess.run(cmd + ["info", str(missing)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(missing) in lines[0]


def test_cli_info_phantom_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "scan-7.nrrd"
    hu = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 5
    ct.save(hu, ct.Geometry.identity((0.5, 0.5, 2.0)), path)
    assert cli_main(["info", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series_uid"] == "scan-7"
    assert out["size_irc"] == [2, 3, 4]
    assert (out["hu_min"], out["hu_max"]) == (-5, 18)


# -- DICOM series written here ------------------------------------------------------------------


def write_dicom_series(
    folder: Path,
    series_uid: str,
    n_slices: int = 4,
    first_value: int = 0,
    z0: float = -10.0,
    dz: float = 2.5,
    skip: tuple[int, ...] = (),
) -> np.ndarray:
    """Write an axial CT series slice by slice; slice k holds first_value + k. Returns the volume."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    kept = []
    for k in range(n_slices):
        if k in skip:
            continue
        values = np.full((1, 6, 5), first_value + k, np.int16)
        values[0, 0, 0] = -3024 if k == 0 else values[0, 0, 0]  # out-of-field padding, kept as read
        kept.append(values[0])
        sl = sitk.GetImageFromArray(values)
        sl.SetSpacing((0.7, 0.8, dz))
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": f"10\\20\\{z0 + dz * k:g}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.8\\0.7",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        # Shuffled names: the reader must order slices by position, not by file name.
        writer.SetFileName(str(folder / f"s{series_uid[-3:]}_{(k * 7) % n_slices:03d}.dcm"))
        writer.Execute(sl)
    return np.stack(kept)


UID_A = "1.2.826.0.1.3680043.2.111"
UID_B = "1.2.826.0.1.3680043.2.222"


@pytest.fixture()
def two_series(tmp_path: Path) -> Path:
    folder = tmp_path / "dicom"
    write_dicom_series(folder, UID_A, first_value=-1000)
    write_dicom_series(folder, UID_B, first_value=500, n_slices=3)
    return folder


def test_multi_series_needs_choice(two_series: Path) -> None:
    with pytest.raises(ScanError) as info:
        ct.load(two_series)
    message = str(info.value)
    assert UID_A in message and UID_B in message
    assert "\n" not in message


def test_multi_series_pick(two_series: Path) -> None:
    a = ct.load(two_series, series_uid=UID_A)
    assert a.series_uid == UID_A
    assert a.hu.shape == (4, 6, 5)
    assert a.hu.dtype == np.int16
    np.testing.assert_array_equal(a.hu[:, 3, 3], [-1000, -999, -998, -997])
    assert a.hu[0, 0, 0] == -3024  # padding kept as read
    np.testing.assert_allclose(a.geometry.origin_xyz, [10.0, 20.0, -10.0])
    np.testing.assert_allclose(a.geometry.spacing_xyz, [0.7, 0.8, 2.5])

    b = ct.load(two_series, series_uid=UID_B)
    assert b.series_uid == UID_B
    np.testing.assert_array_equal(b.hu[:, 3, 3], [500, 501, 502])


def test_series_uid_not_found_lists_found(two_series: Path) -> None:
    with pytest.raises(ScanError) as info:
        ct.load(two_series, series_uid="9.9.9")
    message = str(info.value)
    assert "9.9.9" in message and UID_A in message and UID_B in message


def test_dir_without_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "not-dicom"
    folder.mkdir()
    (folder / "readme.txt").write_text("nothing here\n")
    with pytest.raises(ScanError, match="no DICOM series in"):
        ct.load(folder)


def test_dicom_missing_slice_refused(tmp_path: Path) -> None:
    folder = tmp_path / "gap"
    write_dicom_series(folder, UID_A, n_slices=6, skip=(3,))
    with pytest.raises(ScanError, match="not evenly spaced"):
        ct.load(folder)


# -- save / load round trips ----------------------------------------------------------------------


def oblique_geometry(seed: int = 3) -> ct.Geometry:
    rotation = Rotation.random(random_state=seed).as_matrix()
    flips = np.diag([1.0, -1.0, 1.0])
    return ct.Geometry(
        origin_xyz=np.array([-120.25, 33.5, -401.75]),
        spacing_xyz=np.array([0.703125, 0.68, 2.5]),
        direction=rotation @ flips,
    )


@pytest.mark.parametrize(
    "name, atol", [("vol.mhd", 1e-12), ("vol.nrrd", 1e-12), ("vol.nii.gz", 1e-5), ("vol.nii", 1e-5)]
)
def test_save_load_round_trip(tmp_path: Path, name: str, atol: float) -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-3024, 3072, size=(5, 7, 9)).astype(np.int16)
    hu[0, 0, 0], hu[-1, -1, -1] = -32768, 32767
    geometry = oblique_geometry()
    path = tmp_path / name
    assert ct.save(hu, geometry, path) == path
    scan = ct.load(path)
    np.testing.assert_array_equal(scan.hu, hu)
    assert scan.hu.dtype == np.int16
    # NIfTI stores its geometry in float32: a float32-sized tolerance there, exact elsewhere.
    np.testing.assert_allclose(scan.geometry.origin_xyz, geometry.origin_xyz, rtol=0, atol=atol * 500)
    np.testing.assert_allclose(scan.geometry.spacing_xyz, geometry.spacing_xyz, rtol=0, atol=atol)
    np.testing.assert_allclose(scan.geometry.direction, geometry.direction, rtol=0, atol=atol)
    assert scan.series_uid == "vol"
    # Independent reference: SimpleITK's own reading of the file.
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    idx_cri = (8, 6, 4)
    np.testing.assert_allclose(
        scan.geometry.irc_to_xyz(idx_cri[::-1]), image.TransformIndexToPhysicalPoint(idx_cri), rtol=0, atol=1e-9
    )
    # Nothing but the output is left in the folder.
    expected = {name, "vol.raw"} if name.endswith(".mhd") else {name}
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_save_mhd_header_names_its_raw(tmp_path: Path) -> None:
    ct.save(np.zeros((2, 2, 2), np.int16), ct.Geometry.identity(), tmp_path / "a.b.mhd")
    header = (tmp_path / "a.b.mhd").read_text()
    assert "ElementDataFile = a.b.raw" in header
    assert "CompressedData = False" in header
    assert (tmp_path / "a.b.raw").stat().st_size == 16
    assert ct.load(tmp_path / "a.b.mhd").series_uid == "a.b"


def test_save_refuses_bad_input(tmp_path: Path) -> None:
    g = ct.Geometry.identity()
    with pytest.raises(ScanError, match="unknown extension"):
        ct.save(np.zeros((2, 2, 2), np.int16), g, tmp_path / "a.png")
    with pytest.raises(ScanError, match="3D"):
        ct.save(np.zeros((2, 2), np.int16), g, tmp_path / "a.mhd")
    with pytest.raises(ScanError, match="int16"):
        ct.save(np.zeros((2, 2, 2), np.float32), g, tmp_path / "a.mhd")
    with pytest.raises(ScanError, match="int16"):
        ct.save(np.full((2, 2, 2), 40000, np.int32), g, tmp_path / "a.mhd")
    with pytest.raises(ScanError, match="does not exist"):
        ct.save(np.zeros((2, 2, 2), np.int16), g, tmp_path / "no-such-dir" / "a.mhd")
    assert list(tmp_path.iterdir()) == []


def test_save_failure_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: x.cxx:1:\nITK ERROR: disk full")

    monkeypatch.setattr(sitk, "WriteImage", fail)
    with pytest.raises(ScanError, match="disk full"):
        ct.save(np.zeros((2, 2, 2), np.int16), ct.Geometry.identity(), tmp_path / "a.mhd")
    assert list(tmp_path.iterdir()) == []


def test_int16_small_int_input_saved(tmp_path: Path) -> None:
    hu = np.arange(8, dtype=np.int32).reshape(2, 2, 2)
    ct.save(hu, ct.Geometry.identity(), tmp_path / "a.nrrd")
    np.testing.assert_array_equal(ct.load(tmp_path / "a.nrrd").hu, hu)


def test_float_image_rounded_half_even(tmp_path: Path) -> None:
    values = np.array([-1000.5, -0.5, 0.5, 1.5, 2.5, 3.4], np.float32).reshape(1, 2, 3)
    image = sitk.GetImageFromArray(values)
    sitk.WriteImage(image, str(tmp_path / "f.nrrd"))
    scan = ct.load(tmp_path / "f.nrrd")
    assert scan.hu.dtype == np.int16
    np.testing.assert_array_equal(scan.hu.ravel(), [-1000, 0, 0, 2, 2, 3])


# -- bad input -----------------------------------------------------------------------------------


def assert_one_line(exc: BaseException, *words: str) -> None:
    message = str(exc)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScanError) as info:
        ct.load(tmp_path / "missing.mhd")
    assert_one_line(info.value, "missing.mhd", "no such file")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(ScanError) as info:
        ct.load(path)
    assert_one_line(info.value, "scan.png", "unknown extension")
    dcm = tmp_path / "one.dcm"
    dcm.write_bytes(b"x")
    with pytest.raises(ScanError, match="directory"):
        ct.load(dcm)


def test_truncated_raw(tmp_path: Path) -> None:
    path = tmp_path / "t.mhd"
    ct.save(np.ones((4, 5, 6), np.int16), ct.Geometry.identity(), path)
    with open(tmp_path / "t.raw", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ScanError) as info:
        ct.load(path)
    assert_one_line(info.value, "t.mhd", "truncated")


def test_missing_raw(tmp_path: Path) -> None:
    path = tmp_path / "t.mhd"
    ct.save(np.ones((4, 5, 6), np.int16), ct.Geometry.identity(), path)
    (tmp_path / "t.raw").unlink()
    with pytest.raises(ScanError) as info:
        ct.load(path)
    assert_one_line(info.value, "t.mhd", "t.raw")


def test_truncated_without_our_checks_still_scan_error(tmp_path: Path, monkeypatch) -> None:
    """If ITK itself fails (here: our pre-check disabled), its RuntimeError becomes one ScanError line."""
    path = tmp_path / "t.mhd"
    ct.save(np.ones((4, 5, 6), np.int16), ct.Geometry.identity(), path)
    (tmp_path / "t.raw").unlink()
    monkeypatch.setattr(ct, "_check_mhd", lambda header: None)
    with pytest.raises(ScanError) as info:
        ct.load(path)
    assert_one_line(info.value, "t.mhd", "cannot read")
    assert "Exception thrown" not in str(info.value) and ".cxx" not in str(info.value)


@pytest.mark.parametrize("name", ["t.nii.gz", "t.nii", "t.nrrd"])
def test_truncated_other_formats(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    ct.save(np.ones((10, 20, 30), np.int16), ct.Geometry.identity(), path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ScanError) as info:
        ct.load(path)
    assert_one_line(info.value, name)


@pytest.mark.parametrize(
    "content",
    [
        b"hello world\n\x00\x01garbage",
        b"ObjectType = Image\nNDims = 3\n",  # no DimSize / ElementDataFile
        b"NDims = 3\nDimSize = 4 x 6\nElementType = MET_SHORT\nElementDataFile = g.raw\n",
        b"",
    ],
)
def test_garbage_mhd_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "g.mhd"
    path.write_bytes(content)
    (tmp_path / "g.raw").write_bytes(b"\x00" * 400)
    with pytest.raises(ScanError) as info:
        ct.load(path)
    assert_one_line(info.value, "g.mhd")


@pytest.mark.parametrize("name", ["g.nii.gz", "g.nii", "g.nrrd"])
def test_garbage_other_formats(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(ScanError) as info:
        ct.load(path)
    assert_one_line(info.value, name)


def test_not_3d(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image([3, 4], sitk.sitkInt16), str(tmp_path / "two.nrrd"))
    sitk.WriteImage(sitk.Image([3, 4, 5, 2], sitk.sitkInt16), str(tmp_path / "four.nii.gz"))
    with pytest.raises(ScanError, match="3D.*2D"):
        ct.load(tmp_path / "two.nrrd")
    with pytest.raises(ScanError, match="3D.*4D"):
        ct.load(tmp_path / "four.nii.gz")
    header = tmp_path / "two.mhd"
    header.write_text("NDims = 2\nDimSize = 3 4\nElementType = MET_SHORT\nElementDataFile = two.raw\n")
    (tmp_path / "two.raw").write_bytes(b"\x00" * 24)
    with pytest.raises(ScanError, match="3D"):
        ct.load(header)


def test_vector_pixels_refused(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image([3, 4, 5], sitk.sitkVectorUInt8, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(ScanError, match="one value per voxel"):
        ct.load(tmp_path / "rgb.nrrd")


def test_values_beyond_int16_refused(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image([3, 4, 5], sitk.sitkFloat32) + 40000.0, str(tmp_path / "big.nrrd"))
    with pytest.raises(ScanError, match="int16"):
        ct.load(tmp_path / "big.nrrd")
    nan = sitk.GetImageFromArray(np.full((2, 2, 2), np.nan, np.float32))
    sitk.WriteImage(nan, str(tmp_path / "nan.nrrd"))
    with pytest.raises(ScanError, match="NaN"):
        ct.load(tmp_path / "nan.nrrd")


def test_singular_direction_in_file(tmp_path: Path) -> None:
    path = tmp_path / "s.mhd"
    ct.save(np.zeros((2, 3, 4), np.int16), ct.Geometry.identity(), path)
    text = path.read_text()
    assert "TransformMatrix = 1 0 0 0 1 0 0 0 1" in text
    path.write_text(text.replace("TransformMatrix = 1 0 0 0 1 0 0 0 1", "TransformMatrix = 1 0 0 1 0 0 0 0 1"))
    with pytest.raises(ScanError) as info:
        ct.load(path)
    assert_one_line(info.value, "s.mhd", "direction matrix is singular")


def test_singular_direction_from_itk(tmp_path: Path, monkeypatch) -> None:
    """The same file with our header check off: ITK refuses it, and that too is one clear line."""
    path = tmp_path / "s.mhd"
    ct.save(np.zeros((2, 3, 4), np.int16), ct.Geometry.identity(), path)
    path.write_text(
        path.read_text().replace("TransformMatrix = 1 0 0 0 1 0 0 0 1", "TransformMatrix = 0 0 0 0 1 0 0 0 1")
    )
    monkeypatch.setattr(ct, "_check_mhd", lambda header: None)
    with pytest.raises(ScanError) as info:
        ct.load(path)
    assert_one_line(info.value, "s.mhd", "direction matrix is singular")


def test_singular_direction_in_geometry() -> None:
    with pytest.raises(LunakitError, match="direction matrix is singular"):
        ct.Geometry(np.zeros(3), np.ones(3), np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]))


def test_series_uid_for_file_must_match(tmp_path: Path) -> None:
    path = tmp_path / "1.2.3.nii.gz"
    ct.save(np.zeros((2, 2, 2), np.int16), ct.Geometry.identity(), path)
    assert ct.load(path, series_uid="1.2.3").series_uid == "1.2.3"
    with pytest.raises(ScanError, match="4.5.6"):
        ct.load(path, series_uid="4.5.6")


def test_info_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "x.mhd"
    geometry = oblique_geometry(5)
    ct.save(np.full((2, 3, 4), -7, np.int16), geometry, path)
    info = ct.load(path).info()
    assert json.loads(json.dumps(info)) == info
    assert info["size_irc"] == [2, 3, 4]
    assert (info["hu_min"], info["hu_max"]) == (-7, -7)
    assert info["series_uid"] == "x"
    assert info["path"] == str(path)
    np.testing.assert_allclose(np.array(info["direction"]), geometry.direction, atol=1e-12)
    assert all(type(v) is float for row in info["direction"] for v in row)
    assert all(type(v) is int for v in info["size_irc"])
