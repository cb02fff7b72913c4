"""LUNA16 tables (lunakit.io.luna) against the real tables, handmade tables and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from lunakit.errors import LunakitError, TableError
from lunakit.io import luna

from helpers import require

UID_A = "1.2.3.100"
UID_B = "1.2.3.200"
UID_C = "1.2.3.300"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def raw_lines(path: Path) -> list[list[str]]:
    """Data lines split on commas: a reference reader independent of the csv module.
    (The first six columns of the LUNA16 tables never hold quotes or commas.)"""
    lines = path.read_text().splitlines()[1:]
    return [line.split(",") for line in lines if line.strip()]


# --------------------------------------------------------------------------- real tables


def test_malignancy_table_gives_1182_nodules_378_malignant(test_data):
    path = require(test_data / "luna" / "annotations_with_malignancy.csv")
    cands = luna.candidate_list(path)
    assert len(cands) == 1182
    assert all(c.is_nodule for c in cands)
    assert sum(c.is_malignant is True for c in cands) == 378
    assert sum(c.is_malignant is False for c in cands) == 1182 - 378
    # the same numbers from a plain reading of the file: column 5 is mal_bool
    lines = raw_lines(path)
    assert len(lines) == 1182
    assert sum(fields[5] == "True" for fields in lines) == 378
    # every row is there with its values
    expected = sorted(
        (fields[0], tuple(float(v) for v in fields[1:4]), float(fields[4]), fields[5] == "True") for fields in lines
    )
    got = sorted((c.series_uid, c.center_xyz, c.diameter_mm, c.is_malignant) for c in cands)
    assert got == expected


def test_plain_annotations_1186_rows_without_malignancy(test_data):
    path = require(test_data / "luna" / "annotations.csv")
    annotations = luna.read_annotations(path)
    lines = raw_lines(path)
    assert len(annotations) == len(lines) == 1186
    assert all(a.is_malignant is None for a in annotations)
    for a, fields in zip(annotations, lines):  # file order is kept
        assert a.series_uid == fields[0]
        assert a.center_xyz == tuple(float(v) for v in fields[1:4])
        assert a.diameter_mm == float(fields[4])


def test_excluded_35192_rows_unknown_diameter_is_none(test_data):
    path = require(test_data / "luna" / "annotations_excluded.csv")
    excluded = luna.read_excluded(path)
    lines = raw_lines(path)
    assert len(excluded) == len(lines) == 35192
    assert sum(e.diameter_mm is None for e in excluded) == sum(float(f[4]) < 0 for f in lines)
    assert sum(e.diameter_mm is None for e in excluded) > 0
    assert excluded[0].series_uid == lines[0][0]
    assert excluded[-1].center_xyz == tuple(float(v) for v in lines[-1][1:4])


def test_load_excluded_reads_the_root_table_or_none(tmp_path):
    assert luna.load_excluded(tmp_path) == []
    (tmp_path / "annotations_excluded.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1.5,-2,3,-1\n1.2.3,4,5,6,2.5\n"
    )
    assert luna.load_excluded(tmp_path) == [
        luna.ExcludedFinding("1.2.3", (1.5, -2.0, 3.0), None),
        luna.ExcludedFinding("1.2.3", (4.0, 5.0, 6.0), 2.5),
    ]


def test_scan_filter_on_real_table(test_data):
    path = require(test_data / "luna" / "annotations_with_malignancy.csv")
    lines = raw_lines(path)
    keep = sorted({fields[0] for fields in lines})[:5]
    cands = luna.candidate_list(path, scans=set(keep))
    assert {c.series_uid for c in cands} == set(keep)
    assert len(cands) == sum(fields[0] in keep for fields in lines)


# --------------------------------------------------------------------------- handmade tables

# columns shuffled, extra column, a blank line, a quoted field with a comma
ANNOTATIONS = f"""diameter_mm,mal_bool,coordZ,note,seriesuid,coordY,coordX
5.5,True,-30.0,"a, b",{UID_A},-20.0,-10.0
12.0,False,3.0,,{UID_B},2.0,1.0

4.0,,6.0,x,{UID_A},5.0,4.0
"""

CANDIDATES = f"""class,coordZ,coordY,coordX,seriesuid
0,0.5,0.25,0.125,{UID_A}
1,-30.0,-20.0,-10.0,{UID_A}
0,9.0,8.0,7.0,{UID_C}
0,1.0,1.0,1.0,{UID_B}
"""


def test_handmade_annotations_shuffled_columns(tmp_path):
    annotations = luna.read_annotations(write(tmp_path / "a.csv", ANNOTATIONS))
    assert annotations == [
        luna.Annotation(UID_A, (-10.0, -20.0, -30.0), 5.5, True),
        luna.Annotation(UID_B, (1.0, 2.0, 3.0), 12.0, False),
        luna.Annotation(UID_A, (4.0, 5.0, 6.0), 4.0, None),
    ]


def test_handmade_candidates(tmp_path):
    candidates = luna.read_candidates(write(tmp_path / "c.csv", CANDIDATES))
    assert [c.is_nodule for c in candidates] == [False, True, False, False]
    assert candidates[0] == luna.Candidate(UID_A, (0.125, 0.25, 0.5), False)


def test_candidate_list_order_and_no_class1_duplicates(tmp_path):
    a = write(tmp_path / "a.csv", ANNOTATIONS)
    c = write(tmp_path / "c.csv", CANDIDATES)
    cands = luna.candidate_list(a, c)
    assert cands == [
        luna.CandidateInfo(UID_B, (1.0, 2.0, 3.0), True, 12.0, False),
        luna.CandidateInfo(UID_A, (-10.0, -20.0, -30.0), True, 5.5, True),
        luna.CandidateInfo(UID_A, (4.0, 5.0, 6.0), True, 4.0, None),
        luna.CandidateInfo(UID_A, (0.125, 0.25, 0.5), False, 0.0, None),
        luna.CandidateInfo(UID_B, (1.0, 1.0, 1.0), False, 0.0, None),
        luna.CandidateInfo(UID_C, (7.0, 8.0, 9.0), False, 0.0, None),
    ]
    # deterministic: the order does not depend on the order of the input rows
    lines = CANDIDATES.splitlines()
    reversed_table = write(tmp_path / "c_rev.csv", "\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert luna.candidate_list(a, reversed_table) == cands


def test_candidate_list_scan_filter(tmp_path):
    a = write(tmp_path / "a.csv", ANNOTATIONS)
    c = write(tmp_path / "c.csv", CANDIDATES)
    cands = luna.candidate_list(a, c, scans={UID_A: Path("x.mhd"), UID_C: Path("y.mhd")})
    assert [(x.series_uid, x.is_nodule) for x in cands] == [
        (UID_A, True),
        (UID_A, True),
        (UID_A, False),
        (UID_C, False),
    ]
    assert luna.candidate_list(a, c, scans=[]) == []


def test_candidates_by_series(tmp_path):
    cands = luna.candidate_list(write(tmp_path / "a.csv", ANNOTATIONS), write(tmp_path / "c.csv", CANDIDATES))
    groups = luna.candidates_by_series(cands)
    assert sorted(groups) == [UID_A, UID_B, UID_C]
    assert [len(groups[u]) for u in (UID_A, UID_B, UID_C)] == [3, 2, 1]
    assert groups[UID_A] == [c for c in cands if c.series_uid == UID_A]


# --------------------------------------------------------------------------- bad tables


@pytest.mark.parametrize("reader", [luna.read_annotations, luna.read_candidates, luna.read_excluded])
def test_missing_file(tmp_path, reader):
    with pytest.raises(TableError, match="nope.csv.*not found"):
        reader(tmp_path / "nope.csv")


@pytest.mark.parametrize("reader", [luna.read_annotations, luna.read_candidates, luna.read_excluded])
def test_empty_file(tmp_path, reader):
    with pytest.raises(TableError, match="empty.csv: empty file"):
        reader(write(tmp_path / "empty.csv", ""))


@pytest.mark.parametrize("reader", [luna.read_annotations, luna.read_excluded])
def test_header_only(tmp_path, reader):
    with pytest.raises(TableError, match="h.csv: table has a header but no rows"):
        reader(write(tmp_path / "h.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\n"))


def test_missing_columns_are_named(tmp_path):
    path = write(tmp_path / "a.csv", f"seriesuid,coordX,coordZ\n{UID_A},1,2\n")
    with pytest.raises(TableError, match=r"a\.csv: missing column\(s\) coordY, diameter_mm"):
        luna.read_annotations(path)
    path = write(tmp_path / "c.csv", f"seriesuid,coordX,coordY,coordZ\n{UID_A},1,2,3\n")
    with pytest.raises(TableError, match=r"c\.csv: missing column\(s\) class"):
        luna.read_candidates(path)


@pytest.mark.parametrize(
    "row, line, column, problem",
    [
        (f"{UID_A},1.0,abc,3.0,5.0", 3, "coordY", "not a number: 'abc'"),
        (f"{UID_A},1.0,2.0,nan,5.0", 3, "coordZ", "not a finite number"),
        (f"{UID_A},,2.0,3.0,5.0", 3, "coordX", "empty value"),
        (f"{UID_A},1.0,2.0", 3, "", "3 fields, the header has 5"),
        (f"{UID_A},1.0,2.0,3.0,5.0,6.0", 3, "", "6 fields, the header has 5"),
        (",1.0,2.0,3.0,5.0", 3, "seriesuid", "empty value"),
        (f"{UID_A},1.0,2.0,3.0,big", 3, "diameter_mm", "not a number"),
    ],
)
def test_bad_cell_names_line_and_column(tmp_path, row, line, column, problem):
    good = f"{UID_B},1.0,2.0,3.0,4.0"
    path = write(tmp_path / "t.csv", f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{good}\n{row}\n")
    for reader in (luna.read_annotations, luna.read_excluded):
        with pytest.raises(TableError) as info:
            reader(path)
        message = str(info.value)
        assert "t.csv" in message and f"line {line}" in message and column in message and problem in message


def test_bad_class_and_bad_malignancy(tmp_path):
    path = write(tmp_path / "c.csv", f"seriesuid,coordX,coordY,coordZ,class\n{UID_A},1,2,3,2\n")
    with pytest.raises(TableError, match="c.csv: line 2, column class: class must be 0 or 1"):
        luna.read_candidates(path)
    path = write(tmp_path / "m.csv", f"seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool\n{UID_A},1,2,3,4,maybe\n")
    with pytest.raises(TableError, match="m.csv: line 2, column mal_bool: not a boolean"):
        luna.read_annotations(path)


def test_nodule_diameter_must_be_positive(tmp_path):
    path = write(tmp_path / "a.csv", f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{UID_A},1,2,3,-1\n")
    with pytest.raises(TableError, match="a.csv: line 2, column diameter_mm: nodule diameter must be > 0"):
        luna.read_annotations(path)
    assert luna.read_excluded(path)[0].diameter_mm is None  # allowed in the excluded table


def test_not_utf8_and_malformed_csv(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"seriesuid,coordX,coordY,coordZ,class\n\xff\xfe\x00,1,2,3,0\n")
    with pytest.raises(TableError, match="bin.csv: not a UTF-8"):
        luna.read_candidates(path)
    path = write(tmp_path / "nul.csv", 'seriesuid,coordX,coordY,coordZ,class\n"a\x00b,1,2,3,0\n')
    with pytest.raises(TableError, match="nul.csv"):
        luna.read_candidates(path)


# --------------------------------------------------------------------------- scans on disk


def fake_root(tmp_path: Path, layout: dict[str, list[str]]) -> Path:
    """A LUNA16-like root with empty .mhd files (find_scans only lists them)."""
    root = tmp_path / "luna"
    for subset, uids in layout.items():
        (root / subset).mkdir(parents=True)
        for uid in uids:
            (root / subset / f"{uid}.mhd").write_text("")
            (root / subset / f"{uid}.raw").write_text("")
    return root


def test_find_scans_and_subsets(tmp_path):
    root = fake_root(tmp_path, {"subset1": [UID_C, UID_A], "subset0": [UID_B], "subset10": ["9.9"]})
    (root / "notasubset").mkdir()
    (root / "notasubset" / "1.2.3.400.mhd").write_text("")
    (root / "subset0" / "readme.txt").write_text("")
    scans = luna.find_scans(root)
    assert list(scans) == sorted([UID_A, UID_B, UID_C, "9.9"])
    assert scans[UID_A] == root / "subset1" / f"{UID_A}.mhd"
    assert luna.subset_of(root) == {UID_A: 1, UID_B: 0, UID_C: 1, "9.9": 10}


def test_find_scans_errors(tmp_path):
    with pytest.raises(luna.DatasetError, match="nowhere: LUNA16 root folder not found"):
        luna.find_scans(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(luna.DatasetError, match="no scans found"):
        luna.find_scans(tmp_path / "empty")
    root = fake_root(tmp_path, {"subset0": [UID_A], "subset1": [UID_A]})
    with pytest.raises(luna.DatasetError, match=f"series {UID_A} is also in"):
        luna.find_scans(root)


def test_subset_without_number(tmp_path):
    root = fake_root(tmp_path, {"subset_extra": [UID_A]})
    assert list(luna.find_scans(root)) == [UID_A]
    with pytest.raises(luna.DatasetError, match="subset_extra: folder name has no subset number"):
        luna.subset_of(root)


def test_load_candidates_prefers_malignancy_and_v2(tmp_path):
    root = fake_root(tmp_path, {"subset0": [UID_A], "subset1": [UID_C]})
    write(root / "annotations.csv", f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{UID_A},0,0,0,7\n")
    with pytest.raises(TableError, match="no candidates_V2.csv or candidates.csv"):
        luna.load_candidates(root)
    assert [c.is_malignant for c in luna.load_candidates(root, with_candidates=False)] == [None]
    write(root / "annotations_with_malignancy.csv", ANNOTATIONS)
    write(root / "candidates.csv", f"seriesuid,coordX,coordY,coordZ,class\n{UID_A},0,0,0,0\n")
    write(root / "candidates_V2.csv", CANDIDATES)
    cands = luna.load_candidates(root)
    assert cands == luna.candidate_list(
        root / "annotations_with_malignancy.csv", root / "candidates_V2.csv", scans={UID_A, UID_C}
    )
    assert {c.series_uid for c in cands} == {UID_A, UID_C}


def test_load_candidates_without_annotations(tmp_path):
    root = fake_root(tmp_path, {"subset0": [UID_A]})
    with pytest.raises(TableError, match="no annotations_with_malignancy.csv or annotations.csv"):
        luna.load_candidates(root)


# --------------------------------------------------------------------------- splits


def test_split_series_every_nth_to_validation():
    uids = [f"1.2.{n:03d}" for n in range(25)]
    train, val = luna.split_series(reversed(uids + uids[:3]), val_stride=10)  # order, duplicates don't matter
    assert val == [uids[0], uids[10], uids[20]]
    assert train == [u for u in uids if u not in val]
    assert luna.split_series(uids, 1) == ([], uids)
    for bad in (0, -3, 2.5):
        with pytest.raises(LunakitError, match="val_stride"):
            luna.split_series(uids, bad)


def test_fold_split():
    subsets = {"c": 1, "a": 0, "b": 1, "d": 2}
    assert luna.fold_split(subsets, 1) == (["a", "d"], ["b", "c"])
    assert luna.fold_split(subsets, 0) == (["b", "c", "d"], ["a"])
    with pytest.raises(LunakitError, match=r"fold 7 not among the subsets present: \[0, 1, 2\]"):
        luna.fold_split(subsets, 7)
