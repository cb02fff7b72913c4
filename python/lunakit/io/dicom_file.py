"""The structure of one DICOM file, checked before ITK/GDCM reads it (the same walk as the C++
cpp/src/io/dicom_file.cpp; rule in docs/design.md, "Errors").

GDCM aborts on some files cut inside their header and reads pixel data cut short as if complete.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from lunakit.errors import ScanError

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# The value representations of PS3.5 6.2.
_KNOWN_VRS = set(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_META = "inside its file meta information"
# The value representations of the file meta elements (PS3.10 7.1); GDCM asserts on others there.
_META_VRS = {b"AE", b"OB", b"SH", b"UI", b"UL"}
_DATA = "inside its data set"
_DEFLATED = b"1.2.840.10008.1.2.1.99"
_MAX_INFLATED = 1 << 30  # a few kilobytes of deflated data can claim gigabytes
_IMAGE_TAGS = {(0x0028, 0x0010): "rows", (0x0028, 0x0011): "columns", (0x0028, 0x0100): "bits"}


def _fail(path: Path, problem: str) -> None:
    raise ScanError(f"{path.name}: {problem}")


def _element(data: bytes, pos: int, explicit: bool, big: bool, path: Path, where: str) -> tuple[int, int, int, int]:
    """(group, element, header bytes, value length) of the element at pos."""
    order = "big" if big else "little"
    left = len(data) - pos
    if left < 8:
        _fail(path, f"cut short {where} ({left} stray bytes at byte {pos})")
    group, number = int.from_bytes(data[pos : pos + 2], order), int.from_bytes(data[pos + 2 : pos + 4], order)
    if not explicit or group == 0xFFFE:
        return group, number, 8, int.from_bytes(data[pos + 4 : pos + 8], order)
    vr = data[pos + 4 : pos + 6]
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        _fail(path, f"malformed element ({group:04X},{number:04X}) at byte {pos} {where}")
    # GDCM reads a VR the standard does not know its own way (found by cpp/fuzz, fuzz_dicom).
    if vr not in _KNOWN_VRS:
        _fail(path, f"malformed element ({group:04X},{number:04X}) at byte {pos} {where} (unknown VR {vr.decode()})")
    if vr not in _LONG_VRS:
        return group, number, 8, int.from_bytes(data[pos + 6 : pos + 8], order)
    if left < 12:
        _fail(path, f"cut short {where} (element ({group:04X},{number:04X}))")
    return group, number, 12, int.from_bytes(data[pos + 8 : pos + 12], order)


def _require_fits(
    data: bytes, pos: int, tag: tuple[int, int], header: int, length: int, path: Path, where: str
) -> None:
    have = len(data) - pos - header
    if have < length:
        _fail(
            path, f"cut short {where}: element ({tag[0]:04X},{tag[1]:04X}) needs {length} bytes, the file holds {have}"
        )


def check(path: Path) -> bool:
    """Whether the file is DICOM Part 10 ("DICM" at byte 128). Walks its meta information and every
    data set element (values skipped); raises ScanError naming the file when one does not fit in it,
    or when its pixel data are shorter than rows x columns x bits allocated say."""
    with path.open("rb") as f:  # a look at 132 bytes before reading all of what may be no DICOM
        head = f.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        return False
    data = path.read_bytes()
    pos, syntax, last = 132, b"", -1
    # The data set starts at the first group other than 0002 (and may have another syntax).
    while len(data) - pos < 8 or data[pos : pos + 2] == b"\x02\x00":
        group, number, header, length = _element(data, pos, True, False, path, _META)
        if length == _UNDEFINED:
            _fail(path, "malformed file meta information (undefined length)")
        if len(data) - pos >= 6 and data[pos + 4 : pos + 6] not in _META_VRS:
            vr = data[pos + 4 : pos + 6].decode("ascii")
            _fail(path, f"malformed file meta information (element ({group:04X},{number:04X}) has VR {vr})")
        _require_fits(data, pos, (group, number), header, length, path, _META)
        # Ascending tags (PS3.5 7.1): GDCM reads repeated meta elements another way than this walk
        # (found by cpp/fuzz, fuzz_dicom).
        if number <= last:
            _fail(path, f"malformed file meta information (element (0002,{number:04X}) out of order)")
        last = number
        if number == 0x0010:
            syntax = data[pos + header : pos + header + length]
        pos += header + length
    syntax = syntax.rstrip(b"\0 ")
    if not syntax:
        _fail(path, "file meta information lacks the transfer syntax (0002,0010)")
    if syntax == _DEFLATED:
        _walk_data_set(_inflated(data, pos, path), 0, True, False, path)
    else:
        _walk_data_set(data, pos, syntax != b"1.2.840.10008.1.2", syntax == b"1.2.840.10008.1.2.2", path)
    return True


def _inflated(data: bytes, pos: int, path: Path) -> bytes:
    """A deflated data set (PS3.5 A.5), inflated so that the walk sees what GDCM will read."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data[pos:], _MAX_INFLATED + 1)
    except zlib.error:
        _fail(path, "corrupt deflated data set")
    if len(out) > _MAX_INFLATED:
        _fail(path, f"deflated data set inflates to over {_MAX_INFLATED >> 20} MiB")
    if not inflater.eof:
        _fail(path, "cut short inside its deflated data set")
    return out


def _walk_data_set(data: bytes, pos: int, explicit: bool, big: bool, path: Path) -> None:
    """Every element of a data set from pos: defined-length items and values are skipped; undefined
    lengths are entered and left at their delimiters (depth counts them)."""
    depth, pixel_bytes, image = 0, -1, {}
    while pos < len(data):
        group, number, header, length = _element(data, pos, explicit, big, path, _DATA)
        if group == 0xFFFE and number in (0xE00D, 0xE0DD):
            depth -= 1
            if depth < 0:
                _fail(path, f"malformed data set (a delimiter outside any sequence at byte {pos})")
            pos += 8
            continue
        if length == _UNDEFINED:
            depth, pos = depth + 1, pos + header
            continue
        pixels = depth == 0 and (group, number) == (0x7FE0, 0x0010)
        _require_fits(data, pos, (group, number), header, length, path, "inside its pixel data" if pixels else _DATA)
        if pixels:
            pixel_bytes = length
        if depth == 0 and (group, number) in _IMAGE_TAGS and length == 2:
            image[_IMAGE_TAGS[group, number]] = int.from_bytes(
                data[pos + header : pos + header + 2], "big" if big else "little"
            )
        pos += header + length
    if depth:
        _fail(path, "cut short inside a sequence (no end delimiter)")
    if pixel_bytes >= 0 and len(image) == 3:
        needed = image["rows"] * image["columns"] * ((image["bits"] + 7) // 8)
        if pixel_bytes < needed:
            _fail(
                path,
                f"pixel data hold {pixel_bytes} bytes, {image['rows']} x {image['columns']} pixels of"
                f" {image['bits']} bits need {needed}",
            )
