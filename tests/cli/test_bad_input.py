"""Issue #17, scan readers and output paths: each bad input through `lunakit` and `luna_infer`.

Every case: exit 2, exactly one stderr line, no traceback, nothing written, the message names the
problem, and both runtimes print the same message (after their "<program>: error: " prefix).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from lunakit.cli.demo import DEMO_BUNDLE
from lunakit.io import ct

from helpers import REAL_CT, require, run_luna_infer

GOOD_HEADER = "ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\n"
VOXELS = np.arange(24, dtype="<i2").tobytes()  # the 48 bytes DimSize 4 3 2 of MET_SHORT call for


def run_lunakit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lunakit.cli", *args], capture_output=True, text=True, timeout=600)


def listing(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def refused(result: subprocess.CompletedProcess, program: str) -> str:
    """The one error line of a refused run, without its "<program>: error: " prefix."""
    assert result.returncode == 2, (program, result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, (program, result.stderr)
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"{program}: error: "), lines[0]
    assert result.stdout == ""
    return lines[0].removeprefix(f"{program}: error: ")


def refused_by_both_info(scan: Path, folder: Path, *parts: str) -> str:
    """`lunakit info` and `luna_infer info` refuse `scan` alike, writing nothing into `folder`."""
    before = listing(folder)
    python = refused(run_lunakit("info", str(scan)), "lunakit")
    cpp = refused(run_luna_infer("info", str(scan)), "luna_infer")
    assert listing(folder) == before
    for part in parts:
        assert part in python, (part, python)
    assert python == cpp
    return python


def mhd(folder: Path, name: str, header: str, data: bytes | None = None) -> Path:
    """folder/name.mhd with `header` lines before ElementDataFile = name.raw (+ that .raw)."""
    path = folder / f"{name}.mhd"
    path.write_text(GOOD_HEADER + header + f"ElementDataFile = {name}.raw\n")
    if data is not None:
        (folder / f"{name}.raw").write_bytes(data)
    return path


# -- MetaImage -----------------------------------------------------------------------------------

PACKED = zlib.compress(VOXELS)

METAIMAGE_CASES = {
    # name: (header lines, data, words of the message)
    "compressed_random_bytes": ("CompressedData = True\n", os.urandom(64), ["corrupt compressed data"]),
    "compressed_size_too_small": (
        f"CompressedData = True\nCompressedDataSize = {len(PACKED) - 5}\n",
        PACKED,
        [f"expected {len(PACKED) - 5} bytes of compressed voxel data", f"found {len(PACKED)}"],
    ),
    "compressed_stream_cut": ("CompressedData = True\n", PACKED[:12], ["corrupt compressed data"]),
    "compressed_size_too_big": (
        f"CompressedData = True\nCompressedDataSize = {len(PACKED) + 7}\n",
        PACKED,
        [f"expected {len(PACKED) + 7} bytes of compressed voxel data", f"found {len(PACKED)}"],
    ),
    "compressed_size_wrong_with_trailing": (
        f"CompressedData = True\nCompressedDataSize = {len(PACKED) + 7}\n",
        PACKED + b"1234567",
        [f"the compressed stream ends after {len(PACKED)} of the {len(PACKED) + 7} bytes"],
    ),
    "negative_spacing": (
        "ElementSpacing = 0.7 -0.7 2.5\n",
        VOXELS,
        ["header key ElementSpacing must hold 3 finite positive numbers, got '0.7 -0.7 2.5'"],
    ),
    "nan_spacing": ("ElementSpacing = nan 1 1\n", VOXELS, ["ElementSpacing must hold 3 finite positive numbers"]),
    "raw_longer_than_header": ("", VOXELS + VOXELS, ["expected 48 bytes of voxel data in data file", "found 96"]),
}


@pytest.mark.parametrize("name", sorted(METAIMAGE_CASES))
def test_metaimage_refused_alike(tmp_path: Path, name: str) -> None:
    header, data, parts = METAIMAGE_CASES[name]
    refused_by_both_info(mhd(tmp_path, name, header, data), tmp_path, str(tmp_path / f"{name}.mhd"), *parts)


def test_absurd_dimsize(tmp_path: Path) -> None:
    path = tmp_path / "huge.mhd"
    path.write_text(GOOD_HEADER.replace("4 3 2", "4294967296 4294967296 16") + "ElementDataFile = huge.raw\n")
    (tmp_path / "huge.raw").write_bytes(VOXELS)
    refused_by_both_info(path, tmp_path, "DimSize '4294967296 4294967296 16' holds more than 2^34 voxels")


def test_local_data_missing(tmp_path: Path) -> None:
    path = tmp_path / "empty.mhd"
    path.write_text(GOOD_HEADER + "ElementDataFile = LOCAL\n")
    refused_by_both_info(path, tmp_path, "expected 48 bytes of voxel data after the header, found 0")


def test_data_file_that_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "folder.raw").mkdir()
    message = refused_by_both_info(mhd(tmp_path, "folder", ""), tmp_path, "is not a regular file")
    assert "folder.raw" in message
    path = tmp_path / "zero.mhd"
    path.write_text(GOOD_HEADER + "ElementDataFile = /dev/zero\n")
    refused_by_both_info(path, tmp_path, "data file '/dev/zero' is not a regular file")


def test_header_line_beyond_one_mib(tmp_path: Path) -> None:
    path = tmp_path / "long.mhd"
    path.write_bytes(GOOD_HEADER.encode() + b"Comment = " + b"x" * (2 << 20) + b"\nElementDataFile = long.raw\n")
    (tmp_path / "long.raw").write_bytes(VOXELS)
    refused_by_both_info(path, tmp_path, "no ElementDataFile within the first 1 MiB")


def test_good_metaimage_still_reads_alike(tmp_path: Path) -> None:
    """The control: intact plain and compressed files read, in both runtimes, to the same voxels."""
    for name, header, data in (("plain", "", VOXELS), ("packed", "CompressedData = True\n", PACKED)):
        path = mhd(tmp_path, name, header + "ElementSpacing = 0.7 0.7 2.5\n", data)
        assert np.array_equal(ct.load(path).hu.reshape(-1), np.arange(24))
        assert run_luna_infer("info", str(path)).returncode == 0


# -- DICOM (the real CT, one file cut) -------------------------------------------------------------


def series_with_one_file_cut(test_data: Path, folder: Path, keep: int | None) -> Path:
    """The real series as links, except its middle file, cut to `keep` bytes (None: half of it)."""
    source = require(test_data / REAL_CT)
    files = sorted(source.glob("*.dcm"))
    middle = files[len(files) // 2]
    folder.mkdir()
    for file in files:
        if file != middle:
            (folder / file.name).symlink_to(file)
    data = middle.read_bytes()
    (folder / middle.name).write_bytes(data[: len(data) // 2 if keep is None else keep])
    return folder


@pytest.mark.parametrize("keep", [132, 200, 1000, 2000, 3000, None])
def test_dicom_file_cut_refused_alike(test_data: Path, tmp_path: Path, keep: int | None) -> None:
    folder = series_with_one_file_cut(test_data, tmp_path / "series", keep)
    where = "inside its pixel data" if keep is None else "cut short"
    message = refused_by_both_info(folder, tmp_path, f"{folder}: 000049.dcm: cut short", where)
    if keep is None:
        assert "needs 524288 bytes" in message


def test_dcm_file_that_is_not_dicom(test_data: Path, tmp_path: Path) -> None:
    folder = series_with_one_file_cut(test_data, tmp_path / "series", 100)
    refused_by_both_info(folder, tmp_path, "000049.dcm: not a DICOM file")


# -- output paths ----------------------------------------------------------------------------------


def bad_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name: (output path, what the message says); checked before the scan or bundle is read."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return {
        "existing_file": (blocker, "exists and is not a folder"),
        "below_a_file": (blocker / "sub", f"{blocker} is a file, not a folder"),
        "unwritable": (Path("/sys/lunakit-out"), "cannot write in /sys (Permission denied)"),
    }


@pytest.mark.parametrize("name", ["existing_file", "below_a_file", "unwritable"])
def test_lunakit_analyze_checks_out_first(tmp_path: Path, name: str) -> None:
    out, words = bad_outputs(tmp_path)[name]
    before = listing(tmp_path)
    # A scan that does not exist: the --out check must come first.
    message = refused(
        run_lunakit("analyze", str(tmp_path / "no-scan.mhd"), "--bundle", str(DEMO_BUNDLE), "--out", str(out)),
        "lunakit",
    )
    assert message.startswith(f"--out {out}: ") and words in message, message
    assert listing(tmp_path) == before


@pytest.mark.parametrize("name", ["below_a_file", "unwritable"])
def test_luna_infer_checks_outputs_first(tmp_path: Path, name: str) -> None:
    out, words = bad_outputs(tmp_path)[name]
    before = listing(tmp_path)
    for option in ("--output", "--csv"):
        files = {"--output": str(tmp_path / "f.json"), "--csv": str(tmp_path / "f.csv")}
        files[option] = str(out / "f.x")
        args = ["analyze", "--bundle", str(tmp_path / "no-bundle"), "--input", str(tmp_path / "no-scan.mhd")]
        message = refused(run_luna_infer(*args, "--output", files["--output"], "--csv", files["--csv"]), "luna_infer")
        assert message.startswith(f"{option} {out / 'f.x'}: ") and words in message, message
    assert listing(tmp_path) == before


def test_luna_infer_output_that_is_a_folder(tmp_path: Path) -> None:
    message = refused(
        run_luna_infer(
            "analyze", "--bundle", str(tmp_path), "--input", str(tmp_path / "x.mhd"), "--output", str(tmp_path)
        ),
        "luna_infer",
    )
    assert message == f"--output {tmp_path}: is a folder, not a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = run_lunakit("analyze", "x.mhd", "--bundle", str(DEMO_BUNDLE), "--out", str(folder / "out"))
        assert "Permission denied" in refused(result, "lunakit")
        result = run_luna_infer("analyze", "--bundle", "b", "--input", "x.mhd", "--output", str(folder / "f.json"))
        assert "Permission denied" in refused(result, "luna_infer")
    finally:
        folder.chmod(0o755)


def test_luna_infer_creates_a_missing_output_folder(tmp_path: Path) -> None:
    scan = ct.save(np.full((34, 50, 50), -900, np.int16), ct.Geometry.identity((0.8, 0.8, 2.0)), tmp_path / "s.mhd")
    out = tmp_path / "new" / "deeper"
    result = run_luna_infer(
        "analyze", "--bundle", str(DEMO_BUNDLE), "--input", str(scan), "--output", str(out / "f.json"), "--quiet"
    )
    assert result.returncode == 0, result.stderr
    assert (out / "f.json").is_file()


def test_single_slice_series_info_alike(test_data: Path, tmp_path: Path) -> None:
    """A one-slice series: `info` describes it in both runtimes (spacing z 1 mm by convention)."""

    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "000050.dcm").symlink_to(require(test_data / REAL_CT / "000050.dcm"))
    python = run_lunakit("info", str(tmp_path / "one"))
    cpp = run_luna_infer("info", str(tmp_path / "one"))
    assert python.returncode == 0 and cpp.returncode == 0, (python.stderr, cpp.stderr)
    py, cc = json.loads(python.stdout), json.loads(cpp.stdout)
    assert py["size_irc"] == cc["size_irc"] == [1, 512, 512]
    assert py["spacing_xyz"] == cc["spacing_xyz"] and py["spacing_xyz"][2] == 1.0
    assert py["origin_xyz"] == cc["origin_xyz"]


def test_fuzzer_found_dicom_inputs_are_refused_alike(tmp_path):
    """Inputs fuzz_dicom found (cpp/fuzz/corpus/dicom/regression-*): GDCM asserted on a meta
    element of an unknown VR, allocated 4 GB for a 1 KB file, aborted on a cut header, read 3 GB
    from 780 bytes whose meta elements repeat (a second, deflated transfer syntax), took 0.9 GB for
    a deflated file whose inflated data set holds an element of an unknown VR ("UP")."""
    corpus = Path(__file__).parents[2] / "cpp" / "fuzz" / "corpus" / "dicom"
    expected = {
        "regression-meta-vr.dcm": "has VR OV",
        "regression-4gb-length.dcm": "",
        "regression-cut-header.dcm": "",
        "regression-repeated-meta.dcm": "(0002,0002) out of order",
        "regression-unknown-vr.dcm": "(0008,0016) at byte 0 inside its data set (unknown VR UP)",
    }
    for name, part in expected.items():
        folder = tmp_path / name.removesuffix(".dcm")
        folder.mkdir()
        (folder / "a.dcm").write_bytes((corpus / name).read_bytes())
        refused_by_both_info(folder, folder, part)


def test_deflated_data_sets_are_walked_inflated(tmp_path):
    """A deflated data set (transfer syntax 1.2.840.10008.1.2.1.99) is inflated and walked like any
    other before GDCM reads it: whole, it reads alike in both runtimes; its stream cut short, or an
    element inside it that claims 4 GB, is refused alike."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(Path(__file__).parents[2] / "cpp" / "fuzz" / "corpus" / "dicom" / "slice.dcm")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    whole = tmp_path / "whole"
    whole.mkdir()
    ds.save_as(whole / "a.dcm", enforce_file_format=True)
    data = (whole / "a.dcm").read_bytes()
    start = 144 + int.from_bytes(data[140:144], "little")  # after (0002,0000) and the group it counts
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:])
    assert len(inflated) > 8 * 8 * 2  # the walk has something to walk
    python, cpp = run_lunakit("info", str(whole)), run_luna_infer("info", str(whole))
    assert python.returncode == 0 and cpp.returncode == 0, (python.stderr, cpp.stderr)
    assert json.loads(python.stdout)["size_irc"] == json.loads(cpp.stdout)["size_irc"] == [1, 8, 8]

    def deflate(raw: bytes) -> bytes:
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return packer.compress(raw) + packer.flush()

    huge = b"\x09\x00\x10\x00OB\x00\x00" + (0xFFFFFFF0).to_bytes(4, "little") + b"\0" * 64
    for name, body, part in (
        ("cut", deflate(inflated)[:-40], "a.dcm: cut short inside its deflated data set"),
        ("huge", deflate(inflated + huge), "a.dcm: cut short inside its data set: element (0009,0010) needs"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "a.dcm").write_bytes(data[:start] + body)
        refused_by_both_info(folder, folder, part)
