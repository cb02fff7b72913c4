"""The C++ MetaImage reader (torch.ops.lunakit.read_metaimage, `luna_infer info`) against SimpleITK.

SimpleITK writes the files and is the reference: voxels must be identical and the geometry
(origin, spacing, direction) equal to the last bit.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import lunakit._core  # noqa: F401  (loads the lunakit op library)

from helpers import require, run_luna_infer

SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.7085.2626.242193282649561899185427104083"


def read_cpp(path: Path) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """The C++ reader's voxels and geometry, as numpy and tuples like SimpleITK's getters."""
    voxels, origin_xyz, spacing_xyz, direction = torch.ops.lunakit.read_metaimage(str(path))
    return voxels.numpy(), tuple(origin_xyz), tuple(spacing_xyz), tuple(direction)


def assert_same_as_sitk(path: Path, expected_dtype: np.dtype) -> None:
    """The C++ reader agrees with SimpleITK on every voxel and every geometry number."""
    reference = sitk.ReadImage(str(path))
    voxels, origin_xyz, spacing_xyz, direction = read_cpp(path)
    expected = sitk.GetArrayFromImage(reference)
    assert voxels.dtype == expected_dtype
    assert voxels.shape == expected.shape
    assert np.array_equal(voxels, expected)
    assert origin_xyz == reference.GetOrigin()
    assert spacing_xyz == reference.GetSpacing()
    assert direction == reference.GetDirection()


@pytest.fixture(scope="module")
def real_ct(test_data: Path) -> sitk.Image:
    """The real DICOM chest CT, read by SimpleITK."""
    folder = require(test_data / "ct" / "C3N-00247-chest-ct")
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    assert len(files) == 99
    reader.SetFileNames(files)
    return reader.Execute()


@pytest.fixture(scope="module")
def real_ct_mhd(real_ct: sitk.Image, tmp_path_factory) -> dict[str, Path]:
    """The real CT written by SimpleITK as .mhd/.raw and as .mhd/.zraw (compressed)."""
    folder = tmp_path_factory.mktemp("real_ct")
    paths = {"raw": folder / f"{SERIES_UID}.mhd", "compressed": folder / "compressed" / f"{SERIES_UID}.mhd"}
    paths["compressed"].parent.mkdir()
    sitk.WriteImage(real_ct, str(paths["raw"]), useCompression=False)
    sitk.WriteImage(real_ct, str(paths["compressed"]), useCompression=True)
    return paths


# ----- acceptance: the real CT --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["raw", "compressed"])
def test_real_ct_matches_simpleitk(real_ct: sitk.Image, real_ct_mhd: dict[str, Path], kind: str) -> None:
    path = real_ct_mhd[kind]
    assert ("CompressedData = True" in path.read_text(errors="replace")) == (kind == "compressed")
    voxels, origin_xyz, spacing_xyz, direction = read_cpp(path)
    expected = sitk.GetArrayFromImage(real_ct)
    assert expected.dtype == np.int16 and expected.shape == (99, 512, 512)
    assert voxels.dtype == np.int16
    assert np.array_equal(voxels, expected)
    assert origin_xyz == real_ct.GetOrigin()
    assert spacing_xyz == real_ct.GetSpacing()
    assert direction == real_ct.GetDirection()


def test_luna_infer_info_matches_simpleitk(real_ct: sitk.Image, real_ct_mhd: dict[str, Path]) -> None:
    result = run_luna_infer("info", str(real_ct_mhd["raw"]))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    expected = sitk.GetArrayFromImage(real_ct)
    direction = real_ct.GetDirection()
    assert info["size_irc"] == list(expected.shape)
    assert info["spacing_xyz"] == list(real_ct.GetSpacing())
    assert info["origin_xyz"] == list(real_ct.GetOrigin())
    assert info["direction"] == [list(direction[0:3]), list(direction[3:6]), list(direction[6:9])]
    assert info["series_uid"] == SERIES_UID
    assert info["hu_min"] == int(expected.min()) and info["hu_max"] == int(expected.max())
    assert info["dtype"] == "int16"


# ----- oblique directions and element types ------------------------------------------------


def random_direction(rng: np.random.Generator, reflect: bool) -> tuple[float, ...]:
    """A random non-symmetric orthonormal matrix (a reflection when `reflect`), row-major."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if (np.linalg.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    assert not np.allclose(q, q.T)
    return tuple(float(v) for v in q.ravel())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("compress", [False, True])
def test_oblique_direction_matches_simpleitk(tmp_path: Path, seed: int, compress: bool) -> None:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1024, 3072, size=(5, 6, 7), dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    direction = random_direction(rng, reflect=seed == 2)
    image.SetDirection(direction)
    image.SetOrigin(tuple(float(v) for v in rng.uniform(-300, 300, 3)))
    image.SetSpacing(tuple(float(v) for v in rng.uniform(0.3, 5.0, 3)))
    path = tmp_path / "oblique.mhd"
    sitk.WriteImage(image, str(path), useCompression=compress)

    voxels, origin_xyz, spacing_xyz, cpp_direction = read_cpp(path)
    assert np.array_equal(voxels, array)
    assert cpp_direction == sitk.ReadImage(str(path)).GetDirection()
    # The header's 17 digits carry the set direction through exactly.
    assert cpp_direction == image.GetDirection()
    assert origin_xyz == image.GetOrigin() and spacing_xyz == image.GetSpacing()


@pytest.mark.parametrize(
    ("values", "expected_dtype"),
    [
        (np.arange(-5, 205, dtype=np.int16), np.int16),
        (np.arange(0, 210, dtype=np.uint8), np.int16),
        (np.arange(0, 210 * 150, 150, dtype=np.uint16), np.int16),  # max 31350 fits int16
        (np.arange(0, 210 * 300, 300, dtype=np.uint16), np.float32),  # max 62700 does not
        (np.linspace(-1000.5, 3000.25, 210, dtype=np.float32), np.float32),
    ],
)
def test_element_types_match_simpleitk(tmp_path: Path, values: np.ndarray, expected_dtype: type) -> None:
    image = sitk.GetImageFromArray(values.reshape(5, 6, 7))
    image.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    path = tmp_path / "typed.mhd"
    sitk.WriteImage(image, str(path))
    assert_same_as_sitk(path, np.dtype(expected_dtype))


# ----- bad input ---------------------------------------------------------------------------


def write_small(tmp_path: Path) -> Path:
    """A 4 x 3 x 2 int16 image as small.mhd + small.raw."""
    path = tmp_path / "small.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)), str(path))
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, *parts: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("luna_infer: error: ")
    for part in parts:
        assert part in lines[0], lines[0]


def test_truncated_raw_is_an_error(tmp_path: Path) -> None:
    path = write_small(tmp_path)
    raw = tmp_path / "small.raw"
    raw.write_bytes(raw.read_bytes()[:40])
    assert_one_line_error(run_luna_infer("info", str(path)), str(path), "expected 48 bytes", "found 40")
    with pytest.raises(RuntimeError, match="expected 48 bytes"):
        torch.ops.lunakit.read_metaimage(str(path))


def test_missing_files_are_errors(tmp_path: Path) -> None:
    missing = tmp_path / "absent.mhd"
    assert_one_line_error(run_luna_infer("info", str(missing)), str(missing), "not found")
    with pytest.raises(RuntimeError, match="absent.mhd: file not found"):
        torch.ops.lunakit.read_metaimage(str(missing))
    path = write_small(tmp_path)
    (tmp_path / "small.raw").unlink()
    assert_one_line_error(run_luna_infer("info", str(path)), str(path), "small.raw", "not found")


def test_malformed_header_is_an_error(tmp_path: Path) -> None:
    path = write_small(tmp_path)
    path.write_text(path.read_text().replace("MET_SHORT", "MET_DOUBLE"))
    assert_one_line_error(run_luna_infer("info", str(path)), str(path), "MET_DOUBLE")


def test_usage_errors() -> None:
    for args in (["frobnicate"], ["info"]):
        result = run_luna_infer(*args)
        assert result.returncode == 2
        assert "usage: luna_infer" in result.stderr
