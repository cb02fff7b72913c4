"""Property tests of the Python readers (issue #17): whatever bytes a file holds, a reader gives
either a valid result or a LunakitError with one line, never another exception. Hypothesis
generates both raw bytes and near-valid tables/headers (valid lines with cells or values
mutated), which reach the deeper checks that random bytes never do."""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lunakit.errors import LunakitError
from lunakit.evaluation.tables import read_annotations_table, read_candidates_table, read_series_list
from lunakit.io import ct
from lunakit.io.luna import read_annotations, read_candidates, read_excluded

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)

CELLS = st.one_of(
    st.sampled_from(["1.3.6.1.4.1.14519", "-63.5", "0", "1", "-1", "True", "nan", "inf", "", " ", "1e400", '"', ","]),
    st.text(alphabet=string.printable + "é\x00", max_size=12),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
HEADERS = st.sampled_from(
    [
        "seriesuid,coordX,coordY,coordZ,diameter_mm",
        "seriesuid,coordX,coordY,coordZ,class",
        "seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool",
        "seriesuid,coordX,coordY,coordZ,probability",
        "seriesuid",
    ]
)


@st.composite
def tables(draw) -> bytes:
    """A header and rows of mutated cells, sometimes with a BOM, odd line ends or raw bytes."""
    header = draw(HEADERS)
    width = header.count(",") + 1
    rows = draw(st.lists(st.lists(CELLS, min_size=width - 1, max_size=width + 1), max_size=5))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = end.join([header, *(",".join(row) for row in rows)]) + draw(st.sampled_from(["", end]))
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + text.encode("utf-8", "surrogatepass")
    return data + draw(st.binary(max_size=4))


TABLE_INPUTS = st.one_of(st.binary(max_size=200), tables())


def one_line_error(call, *args):
    """The call's result, or None after a LunakitError of one line; anything else fails the test."""
    try:
        return call(*args)
    except LunakitError as exc:
        assert "\n" not in str(exc).strip(), str(exc)
        return None


@pytest.mark.parametrize("reader", [read_annotations, read_candidates, read_excluded])
@SETTINGS
@given(data=TABLE_INPUTS)
def test_luna_tables_read_or_refuse(tmp_path, reader, data):
    path = tmp_path / "table.csv"
    path.write_bytes(data)
    records = one_line_error(reader, path)
    if records is not None:
        assert len(records) > 0
        for record in records:
            assert record.series_uid.strip() == record.series_uid and record.series_uid
            assert all(math.isfinite(v) for v in record.center_xyz)
            if getattr(record, "diameter_mm", None) is not None and reader is read_annotations:
                assert record.diameter_mm > 0


@pytest.mark.parametrize("reader", [read_annotations_table, read_candidates_table, read_series_list])
@SETTINGS
@given(data=TABLE_INPUTS)
def test_evaluation_tables_read_or_refuse(tmp_path, reader, data):
    path = tmp_path / "table.csv"
    path.write_bytes(data)
    one_line_error(reader, path)


HEADER_VALUES = {
    "NDims": st.sampled_from(["3", "2", "4", "-3", "x", "3.0", ""]),
    "DimSize": st.sampled_from(["2 3 4", "2 3", "0 3 4", "-2 3 4", "4294967296 4294967296 16", "2 3 4 5", "a b c"]),
    "ElementType": st.sampled_from(["MET_SHORT", "MET_FLOAT", "MET_UCHAR", "MET_USHORT", "MET_DOUBLE", "MET_NONE"]),
    "ElementSpacing": st.sampled_from(["1 1 1", "0.7 0.7 2.5", "0 1 1", "-1 1 1", "nan 1 1", "inf 1 1", "1 1"]),
    "Offset": st.sampled_from(["0 0 0", "-10 20 -300", "nan 0 0", "1e308 1e308 1e308", "1 2"]),
    "TransformMatrix": st.sampled_from(["1 0 0 0 1 0 0 0 1", "0 1 0 1 0 0 0 0 -1", "0 0 0 0 0 0 0 0 0", "1 0 0"]),
    "CompressedData": st.sampled_from(["True", "False", "maybe"]),
    "CompressedDataSize": st.sampled_from(["0", "5", "48", "-1", "99999999999"]),
    "HeaderSize": st.sampled_from(["0", "-1", "7", "99999"]),
    "BinaryDataByteOrderMSB": st.sampled_from(["True", "False"]),
    "ElementDataFile": st.sampled_from(["LOCAL", "scan.raw", "missing.raw", ".", "/dev/null"]),
}


@st.composite
def metaimage_headers(draw) -> bytes:
    keys = draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), unique=True, max_size=len(HEADER_VALUES)))
    if draw(st.booleans()):  # mostly near-valid: the required keys, ElementDataFile last
        keys = ["NDims", "DimSize", "ElementType", *[k for k in keys if k not in ("NDims", "DimSize", "ElementType")]]
    keys = [k for k in keys if k != "ElementDataFile"] + ["ElementDataFile"]
    lines = [f"{key} = {draw(HEADER_VALUES[key])}" for key in keys]
    return ("\n".join(lines) + "\n").encode() + draw(st.binary(max_size=120))


def issue_17_header(*lines: str) -> bytes:
    """A header the issue's probe used: NDims, DimSize 2 2 2 and MET_UCHAR unless `lines` say otherwise."""
    keys = {line.split(" = ")[0] for line in lines}
    base = [
        f"{k} = {v}" for k, v in (("NDims", "3"), ("DimSize", "2 2 2"), ("ElementType", "MET_UCHAR")) if k not in keys
    ]
    return ("\n".join([*base, *lines, "ElementDataFile = scan.raw"]) + "\n").encode()


def header_value(header: bytes, key: str) -> list[str] | None:
    for line in header.decode("latin-1").splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.split()
    return None


@SETTINGS
@given(header=st.one_of(st.binary(max_size=200), metaimage_headers()), raw=st.binary(max_size=120))
@example(header=issue_17_header("DimSize = 4294967296 4294967296 16"), raw=bytes(100))
@example(header=issue_17_header("ElementSpacing = -1 1 1"), raw=bytes(8))
@example(header=issue_17_header("ElementSpacing = nan 1 1"), raw=bytes(8))
@example(header=issue_17_header("ElementSpacing = 0 1 1"), raw=bytes(8))
@example(header=issue_17_header("CompressedData = True"), raw=bytes(range(8)))
def test_metaimage_reads_or_refuses(tmp_path, header, raw):
    path = tmp_path / "scan.mhd"
    path.write_bytes(header)
    (tmp_path / "scan.raw").write_bytes(raw)
    scan = one_line_error(ct.load, path)
    spacing = header_value(header, "ElementSpacing")
    if scan is not None and spacing is not None:  # the rule of both runtimes: a spacing > 0, as written
        try:
            written = [float(v) for v in spacing]
        except ValueError:
            written = [math.nan]
        assert all(math.isfinite(v) and v > 0 for v in written), f"accepted ElementSpacing {spacing}"
    if scan is not None:
        assert scan.hu.ndim == 3 and min(scan.hu.shape) >= 1 and scan.hu.dtype == np.int16
        assert all(s > 0 and math.isfinite(s) for s in scan.geometry.spacing_xyz)
        assert all(math.isfinite(v) for v in scan.geometry.origin_xyz)
        assert abs(abs(np.linalg.det(np.asarray(scan.geometry.direction))) - 1.0) < 1e-3
