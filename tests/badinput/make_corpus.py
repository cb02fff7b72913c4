"""Issue #17: the bad-input corpus, generated. Each case is a folder root/<name>/ holding one bad
input (a small synthetic MetaImage, NIfTI or NRRD written here, or a few real CT DICOM slices
altered), with the `lunakit` and `luna_infer` command lines that must refuse it and a substring of
the refusal. tests/badinput/test_corpus.py runs them all.

Write the corpus for inspection:  python tests/badinput/make_corpus.py OUT_DIR [REAL_CT_FOLDER]
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for _folder in (TESTS, TESTS / "cli"):  # the shared helpers, as pytest finds them (also as a script)
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

import numpy as np  # noqa: E402
from test_bad_input import GOOD_HEADER, PACKED, VOXELS, mhd  # noqa: E402

from lunakit.cli.demo import DEMO_BUNDLE  # noqa: E402


@dataclass
class Case:
    """One bad input and the commands that must refuse it (exit 2, one stderr line)."""

    name: str
    input: Path  # the bad file or folder, under root/<name>/
    lunakit: list[str]  # arguments of `lunakit`
    luna_infer: list[str]  # arguments of `luna_infer`
    expect: str  # a substring of both messages (after the "<program>: error: " prefix)
    cpp_expect: str | None = None  # luna_infer's own substring, where its message differs
    same: bool = True  # both messages equal (both runtimes read the format alike)
    outputs: list[Path] = field(default_factory=list)  # paths neither command may create

    @property
    def folder(self) -> Path:
        return self.input.parent if self.input.parent.name == self.name else self.input


KEYS = ("ObjectType", "NDims", "DimSize", "ElementType")


def header_with(**values: str | None) -> str:
    """GOOD_HEADER with some keys' values replaced (None: the key left out)."""
    lines = []
    for line in GOOD_HEADER.splitlines():
        key = line.split(" = ")[0]
        value = values.get(key, line.split(" = ", 1)[1])
        if value is not None:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("latin-1") if isinstance(data, str) else data)
    return path


def info(root: Path, name: str, scan: Path | None, expect: str, **kw) -> Case:
    """`info` of root/<name>/scan.* in both runtimes."""
    scan = scan if scan is not None else root / name
    return Case(name, scan, ["info", str(scan)], ["info", str(scan)], expect, **kw)


def metaimage_cases(root: Path) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, header: str | bytes, data: bytes | None, expect: str, raw: str = "scan.raw", **kw) -> None:
        folder = root / name
        text = header if isinstance(header, bytes) else header.encode("latin-1")
        scan = write(folder / "scan.mhd", text)
        if data is not None:
            write(folder / raw, data)
        cases.append(info(root, name, scan, expect, **kw))

    def keyed(name: str, extra: str, data: bytes | None, expect: str, **kw) -> None:
        """GOOD_HEADER + extra lines + ElementDataFile = scan.raw (test_bad_input.mhd)."""
        (root / name).mkdir(parents=True)
        scan = mhd(root / name, "scan", extra, data)
        cases.append(info(root, name, scan, expect, **kw))

    tail = "ElementDataFile = scan.raw\n"
    # every required key missing in turn
    for key in ("NDims", "DimSize", "ElementType"):
        add(f"mhd_missing_{key}", header_with(**{key: None}) + tail, VOXELS, f"missing required header key {key}")
    add("mhd_missing_ElementDataFile", GOOD_HEADER, VOXELS, "missing required header key ElementDataFile")
    # bad values, key by key
    for value, expect in (
        ("2", "NDims is 2, only 3D images are supported"),
        ("three", "header key NDims is not numeric: 'three'"),
        ("3 3", "header key NDims must hold 1 integer(s), got '3 3'"),
    ):
        add(f"mhd_ndims_{len(cases)}", header_with(NDims=value) + tail, VOXELS, expect)
    for value, expect in (
        ("4 3", "header key DimSize must hold 3 integer(s), got '4 3'"),
        ("4 3 0", "DimSize must be positive, got '4 3 0'"),
        ("4 -3 2", "DimSize must be positive, got '4 -3 2'"),
        ("4 x 2", "header key DimSize is not numeric: '4 x 2'"),
        ("4294967296 4294967296 16", "holds more than 2^34 voxels"),
    ):
        add(f"mhd_dimsize_{len(cases)}", header_with(DimSize=value) + tail, VOXELS, expect)
    # known to differ: Python reads any integer (then too many voxels), C++ only 64-bit ones
    add(
        "mhd_dimsize_beyond_int64",
        header_with(DimSize="99999999999999999999999 1 1") + tail,
        VOXELS,
        "DimSize '99999999999999999999999 1 1' holds more than 2^34 voxels",
        cpp_expect="header key DimSize is not numeric: '99999999999999999999999 1 1'",
        same=False,
    )
    # known to differ: lunakit leaves types it does not know to ITK
    for value in ("MET_FOO",):
        add(
            f"mhd_elementtype_{len(cases)}",
            header_with(ElementType=value) + tail,
            VOXELS,
            "cannot read: :ERROR: Unknown PixelType",
            cpp_expect=f"unsupported ElementType '{value}'",
            same=False,
        )
    for key, value, expect in (
        ("ElementSpacing", "0 1 1", "header key ElementSpacing must hold 3 finite positive numbers, got '0 1 1'"),
        ("ElementSpacing", "inf 1 1", "header key ElementSpacing must hold 3 finite positive numbers, got 'inf 1 1'"),
        ("ElementSpacing", "a b c", "header key ElementSpacing is not numeric: 'a b c'"),
        ("Offset", "nan 0 0", "header key Offset must hold 3 finite numbers, got 'nan 0 0'"),
        ("Offset", "0 -inf 0", "header key Offset must hold 3 finite numbers, got '0 -inf 0'"),
        ("TransformMatrix", "1 0 0 0 1 0 0 0", "header key TransformMatrix must hold 9 numbers"),
        ("CompressedData", "maybe", "header key CompressedData must be True or False, got 'maybe'"),
        ("CompressedDataSize", "-5", "CompressedDataSize must be positive, got '-5'"),
        ("CompressedDataSize", "lots", "header key CompressedDataSize is not numeric: 'lots'"),
        ("HeaderSize", "-2", "HeaderSize must be -1 or at least 0, got '-2'"),
        ("HeaderSize", "100", "expected 48 bytes of voxel data in data file"),
    ):
        keyed(f"mhd_{key}_{len(cases)}", f"{key} = {value}\n", VOXELS, expect)
    # known to differ: Python reads 1e999 as inf, C++ as out of range; the direction checks word it apart
    keyed(
        "mhd_origin_1e999",
        "Origin = 1e999 0 0\n",
        VOXELS,
        "header key Origin must hold 3 finite numbers",
        cpp_expect="header key Origin is not numeric: '1e999 0 0'",
        same=False,
    )
    for name, value, python in (
        ("zero", "0 0 0 0 0 0 0 0 0", "direction matrix is singular (cannot invert)"),
        ("nan", "nan 0 0 0 1 0 0 0 1", "direction must be finite"),
    ):
        cpp = "direction matrix is singular (determinant " + ("nan)" if name == "nan" else "0)")
        keyed(f"mhd_transform_{name}", f"TransformMatrix = {value}\n", VOXELS, python, cpp_expect=cpp, same=False)
    # compressed data that inflate to the wrong size, or not at all
    for name, data, expect in (
        ("mhd_compressed_cut", PACKED[:12], "corrupt compressed data"),
        ("mhd_compressed_too_much", zlib.compress(VOXELS * 2), "compressed data inflates to more than the 48 bytes"),
        ("mhd_compressed_too_little", zlib.compress(VOXELS[:40]), "compressed data inflates to 40 bytes, expected 48"),
        ("mhd_compressed_empty", b"", "no compressed voxel data in data file"),
    ):
        keyed(name, "CompressedData = True\n", data, expect)
    # ElementDataFile
    add("mhd_datafile_empty", GOOD_HEADER + "ElementDataFile =\n", None, "header key ElementDataFile is empty")
    add("mhd_datafile_missing", GOOD_HEADER + tail, None, "not found")
    add("mhd_datafile_dir", GOOD_HEADER + tail, None, "is not a regular file")
    (root / "mhd_datafile_dir" / "scan.raw").mkdir()
    add("mhd_local_short", GOOD_HEADER.encode() + b"ElementDataFile = LOCAL\n" + VOXELS[:30], None, "found 30")
    # the voxel data cut at many lengths
    for keep in (0, 1, 47):
        add(f"mhd_raw_cut_{keep}", GOOD_HEADER + tail, VOXELS[:keep], "expected 48 bytes of voxel data in data file")
    # the header cut at many lengths
    full = GOOD_HEADER + tail
    for keep in (0, 9, 45):
        expect = "is not 'Key = Value'" if keep not in (0, 45) else "missing required header key ElementDataFile"
        add(f"mhd_header_cut_{keep}", full[:keep], VOXELS, expect)
    # garbage headers
    garbage = bytes((i * 73 + 11) % 256 for i in range(600))
    add("mhd_binary_garbage", garbage, VOXELS, "header line 1 is not 'Key = Value': 'T??/x?'")
    add("mhd_binary_nul", b"\0" + garbage, VOXELS, "binary data in the header before ElementDataFile")
    add("mhd_non_utf8_value", header_with(DimSize="4 3 \xff\xfe") + tail, VOXELS, "DimSize is not numeric: '4 3 ??'")
    add("mhd_non_utf8_data_file", GOOD_HEADER + "ElementDataFile = \xe9t\xe9.raw\n", None, "data file '")
    add("mhd_no_equals", "ObjectType Image\n" + GOOD_HEADER + tail, VOXELS, "header line 1 is not 'Key = Value'")
    add("mhd_no_key", " = 3\n" + GOOD_HEADER + tail, VOXELS, "header line 1 has no key")
    add("mhd_duplicate_key", GOOD_HEADER + "NDims = 3\n" + tail, VOXELS, "header key NDims appears twice")
    # voxel values that are no HU
    floats = header_with(ElementType="MET_FLOAT") + tail
    for name, values, expect in (
        ("mhd_float_nan", [np.nan] + [0] * 23, "voxel values include NaN or infinity"),
        ("mhd_float_inf", [np.inf] + [0] * 23, "voxel values include NaN or infinity"),
        ("mhd_float_huge", [1e6] * 24, "HU values 1e+06..1e+06 do not fit int16"),
    ):
        add(name, floats, np.array(values, "<f4").tobytes(), expect)
    # a folder where the file should be, and an empty file
    (root / "mhd_is_folder" / "scan.mhd").mkdir(parents=True)
    cases.append(info(root, "mhd_is_folder", root / "mhd_is_folder" / "scan.mhd", "no DICOM series in"))
    add("mhd_empty_file", b"", None, "missing required header key ElementDataFile")
    return cases


def other_format_cases(root: Path) -> list[Case]:
    """NIfTI and NRRD: lunakit reads them (SimpleITK), luna_infer refuses the extension."""
    from lunakit.io import ct

    cases: list[Case] = []
    good = root / ".good"
    good.mkdir(parents=True, exist_ok=True)
    geometry = ct.Geometry.identity((0.8, 0.8, 2.0))
    volume = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5)
    nii = ct.save(volume, geometry, good / "scan.nii").read_bytes()
    niigz = ct.save(volume, geometry, good / "scan.nii.gz").read_bytes()
    nrrd = ct.save(volume, geometry, good / "scan.nrrd").read_bytes()
    for child in good.iterdir():
        child.unlink()
    good.rmdir()
    refuse = "unknown extension, expected a DICOM directory or a .mhd/.mha file"
    for name, file, data, expect in (
        ("nii_empty", "scan.nii", b"", "too short for a NIfTI header (0 bytes)"),
        ("nii_data_cut", "scan.nii", nii[:-20], "truncated NIfTI data"),
        ("nii_bad_sizeof_hdr", "scan.nii", b"\x07" * 4 + nii[4:], "not a NIfTI file (bad header size field)"),
        ("niigz_cut", "scan.nii.gz", niigz[: len(niigz) // 2], "corrupt or truncated gzip data"),
        ("niigz_not_gzip", "scan.nii.gz", nii, "corrupt or truncated gzip data (Not a gzipped file"),
        ("nrrd_garbage", "scan.nrrd", b"NRRD0004\ntype: nonsense\n\n", 'couldn\'t parse type "nonsense"'),
        ("nrrd_data_cut", "scan.nrrd", nrrd[:-30], "fread got only 105 2-sized things, not 120"),
    ):
        scan = write(root / name / file, data)
        cases.append(info(root, name, scan, expect, cpp_expect=refuse, same=False))
    scan = write(root / "txt_extension" / "scan.txt", GOOD_HEADER)
    cases.append(info(root, "txt_extension", scan, "unknown extension, expected a DICOM directory or", same=False))
    scan = root / "no_such_scan" / "scan.mhd"
    scan.parent.mkdir(parents=True)
    cases.append(info(root, "no_such_scan", scan, "no such file or directory", same=False))
    return cases


# -- DICOM: a few real slices, altered -------------------------------------------------------------


def element(data: bytes, group: int, elem: int) -> tuple[int, int, int]:
    """(start of the element, start of its value, value length) of a short-VR explicit little-endian
    element (the first one with this tag)."""
    tag = struct.pack("<HH", group, elem)
    at = data.find(tag, 132)
    while at >= 0 and not data[at + 4 : at + 6].isalpha():
        at = data.find(tag, at + 1)
    assert at >= 0, f"no element ({group:04x},{elem:04x})"
    length = struct.unpack("<H", data[at + 6 : at + 8])[0]
    return at, at + 8, length


def with_value(data: bytes, group: int, elem: int, value: bytes) -> bytes:
    """data with one element's value replaced (its length fixed up; padded to even length)."""
    at, start, length = element(data, group, elem)
    if len(value) % 2:
        value += b"\0" if data[at + 4 : at + 6] == b"UI" else b" "
    return data[: at + 6] + struct.pack("<H", len(value)) + value + data[start + length :]


def value_of(data: bytes, group: int, elem: int) -> bytes:
    _, start, length = element(data, group, elem)
    return data[start : start + length]


def dicom_cases(root: Path, real_ct: Path) -> list[Case]:
    files = sorted(real_ct.glob("*.dcm"))
    picks = files[48:53]  # five neighbouring slices
    cases: list[Case] = []

    def series(name: str, expect: str, change: dict[int, bytes | None] | None = None, **kw) -> Path:
        """root/<name>/: the five slices, slice i replaced by change[i] (None: left out)."""
        folder = root / name
        folder.mkdir(parents=True)
        for i, file in enumerate(picks):
            data = (change or {}).get(i, file.read_bytes())
            if data is not None:
                write(folder / file.name, data)
        cases.append(info(root, name, folder, expect, **kw))
        return folder

    slice1 = picks[1].read_bytes()
    for keep in (0, 131, 140, 2000, len(slice1) // 2):
        if keep < 132:
            expect = f"{picks[1].name}: not a DICOM file"
        else:
            expect = f"{picks[1].name}: cut short"
        series(f"dicom_cut_{keep}", expect, {1: slice1[:keep]})
    series("dicom_no_dicm", "not a DICOM file", {1: slice1[:128] + b"XXXX" + slice1[132:]})
    series("dicom_text_dcm", "not a DICOM file", {1: b"this is not DICOM\n" * 20})
    # a slice's bytes flipped after the file meta group: an element length that runs past the end
    at, start, length = element(slice1, 0x0028, 0x0030)  # PixelSpacing
    flipped = slice1[: at + 6] + b"\xff\xff" + slice1[at + 8 :]
    series("dicom_length_flipped", f"{picks[1].name}: malformed element", {1: flipped})
    # geometry
    position = value_of(picks[0].read_bytes(), 0x0020, 0x0032)
    # known to differ in words: the readers find duplicates and gaps each their own way
    duplicate = {1: with_value(slice1, 0x0020, 0x0032, position)}
    series("dicom_duplicate_position", "(steps 0..", duplicate, cpp_expect="two slices share one position", same=False)
    series("dicom_missing_slice", "not evenly spaced", {2: None})
    uid = value_of(slice1, 0x0020, 0x000E).rstrip(b"\0")
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    mixed = {1: with_value(slice1, 0x0020, 0x000E, other)}
    series("dicom_mixed_series", "2 DICOM series, pick one with", mixed, same=False)
    rows = {1: with_value(slice1, 0x0028, 0x0010, struct.pack("<H", 256))}
    series("dicom_rows_changed", "cannot read: Size mismatch", rows, cpp_expect="not evenly spaced", same=False)
    # folders: empty, a folder named like a slice, only non-DICOM files
    series("dicom_empty_folder", "no DICOM series in", {i: None for i in range(5)})
    folder = series("dicom_folder_as_slice", "not evenly spaced", {1: None})
    (folder / picks[1].name).mkdir()
    folder = series("dicom_only_text", "no DICOM series in", {i: None for i in range(5)})
    write(folder / "notes.txt", "not a scan\n")
    return cases


# -- output paths ------------------------------------------------------------------------------------


def output_cases(root: Path) -> list[Case]:
    """A bad --out (lunakit analyze) / --output (luna_infer analyze), checked before the scan is read."""
    cases = []
    for name, make, words in (
        ("out_existing_file", lambda f: write(f / "taken", "x"), "exists and is not a folder"),
        ("out_below_a_file", lambda f: write(f / "taken", "x") / "sub", "is a file, not a folder"),
        ("out_unwritable", lambda f: Path("/sys/lunakit-out"), "cannot write in /sys (Permission denied)"),
    ):
        folder = root / name
        folder.mkdir(parents=True)
        out = make(folder)
        scan = mhd(folder, "scan", "ElementSpacing = 0.7 0.7 2.5\n", VOXELS)
        target = out / "f.json"
        cases.append(
            Case(
                name,
                scan,
                ["analyze", str(scan), "--bundle", str(DEMO_BUNDLE), "--out", str(out)],
                ["analyze", "--bundle", str(DEMO_BUNDLE), "--input", str(scan), "--output", str(target)],
                words if name != "out_existing_file" else words,
                cpp_expect=words if name != "out_existing_file" else "",
                same=False,
                outputs=[] if name == "out_existing_file" else [out, target],
            )
        )
    return cases


def make_corpus(root: Path, real_ct: Path | None) -> list[Case]:
    """Write every case under root/<name>/ and return them (the DICOM ones only with real_ct)."""
    root.mkdir(parents=True, exist_ok=True)
    cases = metaimage_cases(root) + other_format_cases(root) + output_cases(root)
    if real_ct is not None:
        cases += dicom_cases(root, real_ct)
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: make_corpus.py OUT_DIR [REAL_CT_FOLDER]")
    made = make_corpus(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else None)
    records = [{k: str(v) if isinstance(v, Path) else v for k, v in vars(c).items()} for c in made]
    json.dump(records, sys.stdout, indent=1, default=str)
    print(f"\n{len(made)} cases under {sys.argv[1]}", file=sys.stderr)
