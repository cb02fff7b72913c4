"""The MetaImage (.mhd/.mha) header, parsed and checked before SimpleITK reads the file, by the
rules and with the messages of the C++ reader (cpp/src/io/metaimage.cpp, lunakit/metaimage.h).

ITK reads corrupt compressed data as zeros, turns a negative spacing positive, fails on absurd
sizes with a traceback and prints its complaints to stderr; these checks refuse such files first.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from lunakit.errors import ScanError

MAX_HEADER_BYTES = 1 << 20  # a header longer than this is not a header
MAX_VOXELS = 1 << 34
ELEMENT_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


@dataclass
class Header:
    path: Path
    fields: dict[str, str] = field(default_factory=dict)
    local_data_offset: int = 0  # the byte after the ElementDataFile line

    def fail(self, problem: str) -> None:
        raise ScanError(f"{self.path}: {problem}")

    def first_of(self, *keys: str) -> tuple[str, str] | None:
        """The first of several synonymous keys that the header holds, in MetaIO's order."""
        return next(((k, self.fields[k]) for k in keys if k in self.fields), None)

    def required(self, key: str) -> str:
        if key not in self.fields:
            self.fail(f"missing required header key {key}")
        return self.fields[key]

    def numbers(self, key: str, value: str, count: int, kind: type = float) -> list:
        """`count` whitespace-separated numbers (int or float), each read whole."""
        try:
            if "_" in value:  # Python reads 1_000 as a number, C++ does not
                raise ValueError
            out = [kind(word.removeprefix("+")) if kind is int else float(word) for word in value.split()]
        except ValueError:
            self.fail(f"header key {key} is not numeric: {shown(value)}")
        if len(out) != count:
            what = "integer(s)" if kind is int else "numbers"
            self.fail(f"header key {key} must hold {count} {what}, got {shown(value)}")
        return out

    def boolean(self, key: str) -> bool:
        word = self.fields[key].lower()
        if word not in ("true", "1", "false", "0"):
            self.fail(f"header key {key} must be True or False, got {shown(self.fields[key])}")
        return word in ("true", "1")


def shown(text: str) -> str:
    """A header value quoted in a message: one line of ASCII (other bytes as '?'), at most 80 characters."""
    cut = "".join("?" if ord(ch) < 0x20 or ord(ch) >= 0x7F else ch for ch in text[:80])
    return f"'{cut}{'...' if len(text) > 80 else ''}'"


def read_header(path: Path) -> Header:
    """The "Key = Value" lines up to and including ElementDataFile."""
    header = Header(path)
    with open(path, "rb") as handle:
        head = handle.read(MAX_HEADER_BYTES + 1)
    pos, number = 0, 0
    while "ElementDataFile" not in header.fields:
        end = head.find(b"\n", pos)
        line = head[pos:] if end < 0 else head[pos:end]
        if b"\0" in line:
            header.fail("binary data in the header before ElementDataFile (not a MetaImage header?)")
        if (end < 0 and len(head) > MAX_HEADER_BYTES) or end >= MAX_HEADER_BYTES:
            header.fail("no ElementDataFile within the first 1 MiB (not a MetaImage header?)")
        if end < 0 and not line:
            header.fail("missing required header key ElementDataFile")
        pos = len(head) if end < 0 else end + 1
        number += 1
        text = line.decode("latin-1").strip()
        if not text:
            continue
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            header.fail(f"header line {number} is not 'Key = Value': {shown(text)}")
        if not key:
            header.fail(f"header line {number} has no key: {shown(text)}")
        if key in header.fields:
            header.fail(f"header key {key} appears twice")
        header.fields[key] = value
    header.local_data_offset = pos
    return header


def check(path: Path) -> None:
    """Header, geometry and data of a MetaImage as the C++ reader checks them (metaimage.h)."""
    header = read_header(path)
    ndims = header.numbers("NDims", header.required("NDims"), 1, int)[0]
    if ndims != 3:
        header.fail(f"NDims is {ndims}, only 3D images are supported")
    dim_text = header.required("DimSize")
    dims = header.numbers("DimSize", dim_text, 3, int)
    voxels = 1
    for n in dims:  # in the C++ reader's order, for the same message
        if n <= 0:
            header.fail(f"DimSize must be positive, got {shown(dim_text)}")
        if n > MAX_VOXELS // voxels:
            header.fail(f"DimSize {shown(dim_text)} holds more than 2^34 voxels")
        voxels *= n
    element_type = header.required("ElementType")
    _check_geometry(header)
    compressed = "CompressedData" in header.fields and header.boolean("CompressedData")
    size = None
    if "CompressedDataSize" in header.fields:
        size = header.numbers("CompressedDataSize", header.fields["CompressedDataSize"], 1, int)[0]
        if size <= 0:
            header.fail(f"CompressedDataSize must be positive, got {shown(header.fields['CompressedDataSize'])}")
    skip = 0
    if "HeaderSize" in header.fields:
        skip = header.numbers("HeaderSize", header.fields["HeaderSize"], 1, int)[0]
        if skip < -1:
            header.fail(f"HeaderSize must be -1 or at least 0, got {shown(header.fields['HeaderSize'])}")
    channels = int(header.fields.get("ElementNumberOfChannels", "1") or 1)
    binary = "BinaryData" not in header.fields or header.boolean("BinaryData")
    data_name = header.required("ElementDataFile")
    if element_type not in ELEMENT_BYTES or channels != 1 or not binary or data_name == "LIST" or "%" in data_name:
        return  # variants only ITK reads (the C++ reader refuses them)
    voxel_bytes = voxels * ELEMENT_BYTES[element_type]
    _check_data(header, data_name, voxel_bytes, compressed, size if compressed else None, skip)


def _check_geometry(header: Header) -> None:
    from lunakit.io.geometry import Geometry, GeometryError

    for keys, check in (
        (("Offset", "Position", "Origin"), lambda v: math.isfinite(v)),
        (("ElementSpacing", "ElementSize"), lambda v: math.isfinite(v) and v > 0),
    ):
        found = header.first_of(*keys)
        if found and not all(check(v) for v in header.numbers(*found, 3)):
            kind = "finite numbers" if keys[0] == "Offset" else "finite positive numbers"
            header.fail(f"header key {found[0]} must hold 3 {kind}, got {shown(found[1])}")
    found = header.first_of("TransformMatrix", "Rotation", "Orientation")
    if found:
        matrix = header.numbers(*found, 9)
        try:
            Geometry([0, 0, 0], [1, 1, 1], [[matrix[3 * c + r] for c in range(3)] for r in range(3)])
        except GeometryError as exc:
            header.fail(str(exc))


def _check_data(header: Header, name: str, voxel_bytes: int, compressed: bool, size: int | None, skip: int) -> None:
    """The data file holds exactly the voxel data (after HeaderSize bytes); compressed data inflate
    to exactly voxel_bytes and their stream ends exactly at the end of the data."""
    if not name:
        header.fail("header key ElementDataFile is empty")
    local = name == "LOCAL"
    data = header.path if local else header.path.parent / name
    if not local and not data.exists():
        header.fail(f"data file {shown(str(data))} not found")
    if not local and not data.is_file():
        header.fail(f"data file {shown(str(data))} is not a regular file")
    file_bytes = data.stat().st_size
    start = header.local_data_offset if local else 0
    where = "after the header" if local else f"in data file {shown(str(data))}"
    what = "compressed voxel data " if compressed else "voxel data "
    wanted = (size if size is not None else -1) if compressed else voxel_bytes
    if skip == -1:
        if wanted < 0:
            header.fail("HeaderSize = -1 with compressed data needs CompressedDataSize")
        start = max(file_bytes - wanted, start)
    else:
        start += skip
    available = max(file_bytes - start, 0)
    if wanted >= 0 and available != wanted:
        header.fail(f"expected {wanted} bytes of {what}{where}, found {available}")
    if available == 0:
        header.fail(f"no {what}{where}")
    if compressed:
        _check_inflates(header, data, start, available, voxel_bytes)


def _check_inflates(header: Header, data: Path, start: int, packed: int, expected: int) -> None:
    stream = zlib.decompressobj(15 + 32)  # zlib or gzip
    produced, left = 0, packed
    with open(data, "rb") as handle:
        handle.seek(start)
        while left and not stream.eof:
            chunk = handle.read(min(left, 1 << 22))
            left -= len(chunk)
            while chunk and not stream.eof:
                try:
                    produced += len(stream.decompress(chunk, 1 << 24))
                except zlib.error as exc:
                    header.fail(f"corrupt compressed data ({str(exc).split(': ', 1)[-1]})")
                if produced > expected:
                    header.fail(
                        f"compressed data inflates to more than the {expected} bytes that DimSize and ElementType call for"
                    )
                chunk = stream.unconsumed_tail
    if not stream.eof:
        if produced < expected:
            header.fail(f"corrupt compressed data: it ends after {produced} of {expected} bytes")
        header.fail("corrupt compressed data (stream does not end)")
    if produced != expected:
        header.fail(f"compressed data inflates to {produced} bytes, expected {expected}")
    used = packed - left - len(stream.unused_data)
    if used != packed:
        header.fail(f"the compressed stream ends after {used} of the {packed} bytes of compressed data")
