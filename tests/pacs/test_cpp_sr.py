"""The C++ SR (issue #18): `luna_infer analyze --dicom-out` writes findings-sr.dcm (DCMTK's dcmsr)
with the same content as `lunakit analyze --dicom-out` (highdicom), on a phantom written as a DICOM
series with the seeded bundle of tests/conftest.py (seconds, not the real CT's minute).

Each SR is read back with pydicom alone and compared with its own findings.json
(pacs_helpers.assert_sr_matches); the two SRs are compared with each other: the same document
attributes (patient, study, flags, series number...), the same evidence, the same content tree
(every item's relationship, value type, concept, coded value and unit), and the same findings
(paired by center: the two runtimes may order findings of nearly equal p_nodule differently).
The C++ SR passes dciodvfy without errors. Bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lunakit.cli import main as lunakit_main
from lunakit.io import ct

from helpers import run_luna_infer
from pacs_helpers import assert_sr_matches, dciodvfy, sr_findings

STUDY_UID = "1.2.826.0.1.3680043.9.7.18.1"
SERIES_UID = "1.2.826.0.1.3680043.9.7.18.2"
FRAME_UID = "1.2.826.0.1.3680043.9.7.18.3"

# Attributes each writer sets its own way (new UIDs, creation times, the library's own equipment).
OWN = {
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "ContributingEquipmentSequence",  # highdicom names itself and the source's scanner
    "InstanceCreatorUID",  # DCMTK's
    "ContentSequence",  # compared item by item below
    "CurrentRequestedProcedureEvidenceSequence",  # compared as sets below
}


def write_series(scan_path: Path, folder: Path, modality: str = "CT") -> Path:
    """The phantom scan as an axial series with a study, a frame of reference and a patient."""
    folder.mkdir(parents=True, exist_ok=True)
    scan = ct.load(scan_path)
    spacing = np.round(scan.geometry.spacing_xyz, 3)
    origin = np.round(scan.geometry.origin_xyz, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(scan.hu.shape[0]):
        image = sitk.GetImageFromArray(scan.hu[k : k + 1])
        image.SetSpacing(tuple(float(s) for s in spacing))
        tags = {
            "0008|0060": modality,
            "0008|0020": "20240102",
            "0008|0030": "101500",
            "0008|0050": "ACC18",
            "0010|0010": "Phantom^Lunakit",
            "0010|0020": "PHANTOM-18",
            "0010|0040": "O",
            "0020|000d": STUDY_UID,
            "0020|000e": SERIES_UID,
            "0020|0052": FRAME_UID,
            "0018|0050": f"{spacing[2]:.3f}",  # SliceThickness: highdicom's SEG needs it
            "0020|0011": "7",
            "0008|0018": f"{SERIES_UID}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": f"{origin[0]:.3f}\\{origin[1]:.3f}\\{origin[2] + k * spacing[2]:.3f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]:.3f}\\{spacing[0]:.3f}",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"img{(k * 13) % scan.hu.shape[0]:04d}.dcm"))  # not in slice order
        writer.Execute(image)
    return folder


@pytest.fixture(scope="module")
def dicom_scan(scan_path, tmp_path_factory) -> Path:
    return write_series(scan_path, tmp_path_factory.mktemp("dicom-phantom"))


@pytest.fixture(scope="module")
def both(dicom_scan, bundle, tmp_path_factory) -> dict[str, Path]:
    """{"py": out, "cpp": out}: findings.json and dicom/findings-sr.dcm of each runtime."""
    out = tmp_path_factory.mktemp("sr")
    argv = ["analyze", str(dicom_scan), "--bundle", str(bundle), "--quiet", "--show", "0"]
    assert lunakit_main(argv + ["--out", str(out / "py"), "--dicom-out", str(out / "py" / "dicom")]) == 0
    (out / "cpp").mkdir()
    result = run_luna_infer(
        "analyze", "--bundle", str(bundle), "--input", str(dicom_scan), "--output", str(out / "cpp" / "findings.json"),
        "--dicom-out", str(out / "cpp" / "dicom"), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {"py": out / "py", "cpp": out / "cpp"}


def read(both: dict[str, Path], side: str) -> tuple[pydicom.Dataset, dict]:
    document = json.loads((both[side] / "findings.json").read_text())
    return pydicom.dcmread(both[side] / "dicom" / "findings-sr.dcm"), document


def test_cpp_sr_holds_its_findings_and_references_the_source(both, dicom_scan):
    sr, document = read(both, "cpp")
    assert len(document["findings"]) > 0
    assert sr.file_meta.MediaStorageSOPClassUID == sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.Modality == "SR" and sr.StudyInstanceUID == STUDY_UID and sr.SeriesInstanceUID != SERIES_UID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert_sr_matches(sr, document["findings"], FRAME_UID)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    [series] = evidence.ReferencedSeriesSequence
    assert evidence.StudyInstanceUID == STUDY_UID and series.SeriesInstanceUID == SERIES_UID
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dicom_scan.iterdir()}
    assert {item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence} == sources


def test_cpp_sr_passes_dciodvfy(both):
    assert dciodvfy(both["cpp"] / "dicom" / "findings-sr.dcm") == []


def test_cpp_and_python_srs_have_the_same_attributes(both):
    (py, _), (cpp, _) = read(both, "py"), read(both, "cpp")
    py_keys = {e.keyword for e in py} - OWN
    cpp_keys = {e.keyword for e in cpp} - OWN
    assert py_keys == cpp_keys
    for keyword in sorted(py_keys):
        assert py[keyword].value == cpp[keyword].value, keyword
    assert py.SeriesNumber == 1008 and py.PatientName == "Phantom^Lunakit"  # the source's, as copied


def evidence(sr) -> set[tuple[str, str, str, str]]:
    return {
        (study.StudyInstanceUID, series.SeriesInstanceUID, item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def test_cpp_and_python_srs_reference_the_same_instances(both):
    (py, _), (cpp, _) = read(both, "py"), read(both, "cpp")
    assert evidence(py) == evidence(cpp) and len(evidence(cpp)) == 48


def shape(items) -> list[tuple]:
    """Each content item's relationship, value type, concept, coded value, unit, graphic type and
    template, recursively; values that differ by nature (UIDs, numbers, tracking text) left out."""
    out = []
    for item in items:

        def code(seq):
            return tuple((c.CodingSchemeDesignator, c.CodeValue, c.CodeMeaning) for c in seq)

        row = (
            item.RelationshipType,
            item.ValueType,
            code(item.ConceptNameCodeSequence),
            code(item.get("ConceptCodeSequence", [])),
            code(item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence) if item.ValueType == "NUM" else (),
            item.get("GraphicType"),
            tuple(t.TemplateIdentifier for t in item.get("ContentTemplateSequence", [])),
            item.get("ContinuityOfContent"),
            item.TextValue if item.ValueType == "TEXT" and not item.TextValue.startswith("finding ") else None,
        )
        out.append((row, shape(item.get("ContentSequence", []))))
    return out


def test_cpp_and_python_srs_have_the_same_content_tree(both):
    (py, _), (cpp, _) = read(both, "py"), read(both, "cpp")
    assert shape(cpp.ContentSequence) == shape(py.ContentSequence)
    assert [cpp.ConceptNameCodeSequence[0].CodeValue, cpp.ContinuityOfContent] == [
        py.ConceptNameCodeSequence[0].CodeValue,
        py.ContinuityOfContent,
    ]


def test_cpp_and_python_srs_carry_the_same_findings(both):
    (py, _), (cpp, _) = read(both, "py"), read(both, "cpp")
    py_findings, cpp_findings = sr_findings(py), sr_findings(cpp)
    assert len(cpp_findings) == len(py_findings) > 0
    py_centers = np.array([f["center_xyz"] for f in py_findings])
    for c in cpp_findings:
        distance = np.abs(py_centers - c["center_xyz"]).max(axis=1)
        p = py_findings[int(distance.argmin())]
        assert distance.min() < 1e-2, c  # parity: centers within 1e-3 voxel
        assert c["frame_of_reference"] == p["frame_of_reference"] == FRAME_UID
        assert np.isclose(c["diameter_mm"], p["diameter_mm"], rtol=1e-10)
        assert abs(c["p_nodule"] - p["p_nodule"]) <= 1e-4
        assert (c["p_malignant"] is None) == (p["p_malignant"] is None)
        if p["p_malignant"] is not None:
            assert abs(c["p_malignant"] - p["p_malignant"]) <= 1e-4


def refused(bundle: Path, scan: Path, out: Path, dicom_out: Path, message: str) -> None:
    """luna_infer analyze --dicom-out: one line naming the problem, exit 2, no file in out."""
    out.mkdir(exist_ok=True)
    before = sorted(out.iterdir())
    result = run_luna_infer(
        "analyze", "--bundle", str(bundle), "--input", str(scan), "--output", str(out / "f.json"),
        "--dicom-out", str(dicom_out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("luna_infer: error: ") and message in lines[0], result.stderr
    assert sorted(out.iterdir()) == before


def test_cpp_dicom_out_refuses_a_scan_that_is_not_dicom(scan_path, bundle, tmp_path):
    refused(bundle, scan_path, tmp_path, tmp_path / "dicom", "need a DICOM series folder as input")


def test_cpp_dicom_out_refuses_a_series_that_is_not_ct(scan_path, bundle, tmp_path):
    mr = write_series(scan_path, tmp_path / "mr", modality="MR")
    refused(bundle, mr, tmp_path / "out", tmp_path / "out" / "dicom", "is not CT (Modality MR)")


def test_cpp_dicom_out_refuses_a_dir_that_is_a_file(dicom_scan, bundle, tmp_path):
    (tmp_path / "taken").write_text("a file")
    refused(bundle, dicom_scan, tmp_path, tmp_path / "taken", "--dicom-out")
