"""DICOM results and the PACS round trip on the real CT with the book's weights (issue #18):
`lunakit analyze --dicom-out` writes an SR and a SEG that dciodvfy accepts and that pydicom reads
back as findings.json's findings; `lunakit pacs analyze` fetches the CT from a real Orthanc over
DICOMweb and stores the same SR and SEG into it; bad input is one line, exit 2, nothing stored."""

from __future__ import annotations

import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lunakit.cli import main

from helpers import REAL_CT, REAL_SERIES_UID, require
from pacs_helpers import assert_sr_matches, dciodvfy, free_port, seg_voxels


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def ct_files(test_data) -> list[Path]:
    return sorted(require(test_data / REAL_CT).glob("*.dcm"))


@pytest.fixture(scope="module")
def ct_headers(ct_files) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in ct_files)}


@pytest.fixture(scope="module")
def local_run(test_data, book_bundle, tmp_path_factory) -> Path:
    """`lunakit analyze REAL_CT --out R --dicom-out R/dicom` once (the book's weights, ~1 min)."""
    out = tmp_path_factory.mktemp("local")
    argv = ["analyze", str(test_data / REAL_CT), "--bundle", str(book_bundle), "--quiet", "--show", "0"]
    assert main(argv + ["--out", str(out), "--dicom-out", str(out / "dicom")]) == 0
    return out


def test_analyze_dicom_out_writes_an_sr_with_the_findings(local_run, ct_headers):
    document = json.loads((local_run / "findings.json").read_text())
    sr = pydicom.dcmread(local_run / "dicom" / "findings-sr.dcm")
    first = next(iter(ct_headers.values()))
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == first.StudyInstanceUID and sr.SeriesInstanceUID != REAL_SERIES_UID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == first.StudyInstanceUID
    [series] = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == REAL_SERIES_UID
    assert {item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence} == set(ct_headers)
    assert_sr_matches(sr, document["findings"], first.FrameOfReferenceUID)


def test_analyze_dicom_out_writes_a_seg_of_the_findings_voxels(local_run, ct_headers):
    document = json.loads((local_run / "findings.json").read_text())
    seg = pydicom.dcmread(local_run / "dicom" / "findings-seg.dcm")
    first = next(iter(ct_headers.values()))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID and seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == REAL_SERIES_UID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Nodule candidates"]
    # slice index of each CT instance: its position along z (identity direction, origin -288 mm)
    z0 = min(float(ds.ImagePositionPatient[2]) for ds in ct_headers.values())
    spacing = float(document["geometry"]["spacing_xyz"][2])
    index = {uid: round((float(ds.ImagePositionPatient[2]) - z0) / spacing) for uid, ds in ct_headers.items()}
    volume = seg_voxels(seg, index, tuple(document["size_irc"]))
    findings = document["findings"]
    assert volume.sum() == sum(f["voxel_count"] for f in findings)  # the findings' components, disjoint
    inside = np.zeros_like(volume)
    for f in findings:
        (i0, r0, c0), (i1, r1, c1) = f["bbox_irc"]
        assert volume[i0 : i1 + 1, r0 : r1 + 1, c0 : c1 + 1].sum() >= f["voxel_count"]
        inside[i0 : i1 + 1, r0 : r1 + 1, c0 : c1 + 1] = True
    assert not (volume & ~inside).any()


@pytest.mark.parametrize("name", ["findings-sr.dcm", "findings-seg.dcm"])
def test_dicom_results_pass_dciodvfy(local_run, name):
    assert dciodvfy(local_run / "dicom" / name) == []


def test_dicom_out_refuses_a_scan_that_is_not_dicom(tmp_path, scan_path, book_bundle, capsys):
    argv = ["analyze", str(scan_path), "--bundle", str(book_bundle), "--out", str(tmp_path / "r")]
    code, _, err = run(argv + ["--dicom-out", str(tmp_path / "d"), "--quiet"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "need a DICOM series as input" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


# -- the PACS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_ct(orthanc, ct_files) -> str:
    """The real CT stored into Orthanc (REST /instances); its StudyInstanceUID."""
    for path in ct_files:
        orthanc.post_instance(path.read_bytes())
    return str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)


def _derived_study(orthanc, ct_files, modality: str, count: int) -> tuple[str, str]:
    """A new study of `count` slices of the real CT relabelled with `modality`: (study, series) UIDs."""
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    for path in ct_files[:count]:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, modality
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer)
        orthanc.post_instance(buffer.getvalue())
    return study, series


def _study_objects(orthanc, study_uid: str, modality: str) -> list[pydicom.Dataset]:
    [study] = [s for s in orthanc.get("/studies?expand") if s["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    found = []
    for series_id in study["Series"]:
        series = orthanc.get(f"/series/{series_id}")
        if series["MainDicomTags"].get("Modality") == modality:
            for instance in series["Instances"]:
                found.append(pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{instance}/file"))))
    return found


def test_pacs_analyze_stores_sr_and_seg_with_the_findings(orthanc, stored_ct, local_run, book_bundle, tmp_path, capsys):
    before = orthanc.instance_count()
    argv = ["pacs", "analyze", "--url", orthanc.dicomweb, "--study", stored_ct, "--bundle", str(book_bundle)]
    code, out, err = run(argv + ["--quiet"], capsys)
    assert code == 0, err
    assert orthanc.instance_count() == before + 2
    assert "stored in the PACS" in out
    [sr] = _study_objects(orthanc, stored_ct, "SR")
    [seg] = _study_objects(orthanc, stored_ct, "SEG")
    document = json.loads((local_run / "findings.json").read_text())  # the local analysis of the same CT
    assert_sr_matches(sr, document["findings"], seg.FrameOfReferenceUID)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID == (
        REAL_SERIES_UID
    )
    local_seg = pydicom.dcmread(local_run / "dicom" / "findings-seg.dcm")
    assert np.array_equal(seg.pixel_array, local_seg.pixel_array)


class _Stub(http.server.BaseHTTPRequestHandler):
    """A DICOMweb server that knows one study, with no series, or answers 500 to everything."""

    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.status != 200:
            self.send_response(self.status)
            self.end_headers()
            return
        body = b"[]"
        if self.path.startswith("/studies?"):
            body = json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.3.4"]}}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(params=[200, 500], ids=["no-series", "http-500"])
def stub(request):
    handler = type("Handler", (_Stub,), {"status": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", request.param
    server.shutdown()
    server.server_close()


def test_pacs_analyze_refuses_a_study_without_series_and_a_5xx(stub, book_bundle, capsys):
    url, status = stub
    code, _, err = run(["pacs", "analyze", "--url", url, "--study", "1.2.3.4", "--bundle", str(book_bundle)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert ("HTTP 500" in err) if status == 500 else ("study 1.2.3.4 has no series" in err)


def test_pacs_analyze_bad_input_is_one_line_and_stores_nothing(orthanc, stored_ct, ct_files, book_bundle, capsys):
    mr_study, mr_series = _derived_study(orthanc, ct_files, "MR", 3)
    small_study, _ = _derived_study(orthanc, ct_files, "CT", 2)
    bundle = ["--bundle", str(book_bundle), "--quiet"]
    cases = {
        "not CT": (["--url", orthanc.dicomweb, "--study", mr_study], "has no CT series (found: MR)"),
        "series not CT": (
            ["--url", orthanc.dicomweb, "--study", mr_study, "--series", mr_series],
            f"series {mr_series} is MR, not CT",
        ),
        "unknown study": (["--url", orthanc.dicomweb, "--study", "1.2.3.999"], "no study 1.2.3.999"),
        "HTTP 404": (["--url", f"{orthanc.root}/no-such-root", "--study", stored_ct], "HTTP 404"),
        "PACS down": (["--url", f"http://127.0.0.1:{free_port()}/dicom-web", "--study", stored_ct], "cannot reach"),
        "too small to analyze": (["--url", orthanc.dicomweb, "--study", small_study], "smaller than the crop"),
        "not a URL": (["--url", "127.0.0.1:8042", "--study", stored_ct], "must start with http"),
    }
    before = orthanc.instance_count()
    for name, (args, message) in cases.items():
        code, out, err = run(["pacs", "analyze", *args, *bundle], capsys)
        assert code == 2, name
        assert err.count("\n") == 1 and message in err, (name, err)
        assert orthanc.instance_count() == before, name
