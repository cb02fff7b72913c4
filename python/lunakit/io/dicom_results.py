"""Analysis results as DICOM objects a PACS can store and display (docs/pacs.md):

- a Comprehensive 3D SR holding a TID 1500 measurement report, one measurement group (TID 1411)
  per finding: its center as an SCOORD3D point in the source's frame of reference, its
  equal-volume diameter, p_nodule and p_malignant;
- a binary Segmentation with one segment, "Nodule candidates": the voxels of every finding's
  component (one segment for all, so the object stays small and valid however many candidates
  a scan gives; each finding's center and bounding box in the SR tell them apart).

Both reference the source CT series: its Study, Series and SOP Instance UIDs and its Frame of
Reference UID. highdicom builds them; they need the source series' DICOM headers, so only a
DICOM input can have DICOM results.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

import lunakit
from lunakit.errors import LunakitError
from lunakit.io.ct import CtScan

if TYPE_CHECKING:
    from lunakit.pipeline.options import Finding

SR_FILE = "findings-sr.dcm"
SEG_FILE = "findings-seg.dcm"
# lunakit's own codes, for the two probabilities DICOM has no concept for (PS3.16 8.2: a
# private coding scheme designator starts with 99).
SCHEME = "99LUNAKIT"
SEGMENT_LABEL = "Nodule candidates"


class DicomResultsError(LunakitError):
    """DICOM results cannot be made for this input (not DICOM, not CT, inconsistent series)."""


def read_source_series(scan: CtScan) -> list:
    """The DICOM headers of the scan's series, one per slice, in the scan's slice order (I).

    Refuses a scan that was not read from a DICOM folder, a series that is not CT, and a series
    whose files do not match the scan's slices."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(scan.path)
    if not folder.is_dir():
        raise DicomResultsError(
            f"{folder}: DICOM results (SR, SEG) need a DICOM series as input; this scan is a file (docs/pacs.md)"
        )
    headers = []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if getattr(ds, "SeriesInstanceUID", None) == scan.series_uid:
            headers.append(ds)
    if not headers:
        raise DicomResultsError(f"{folder}: no DICOM file of series {scan.series_uid}")
    modality = sorted({str(getattr(ds, "Modality", "")) for ds in headers})
    if modality != ["CT"]:
        raise DicomResultsError(f"{folder}: series {scan.series_uid} is not CT (Modality {', '.join(modality)})")
    return _in_slice_order(headers, scan, folder)


def _in_slice_order(headers: list, scan: CtScan, folder: Path) -> list:
    """Match slice i to the header whose ImagePositionPatient is the scan's position of (i, 0, 0)."""
    count = scan.hu.shape[0]
    if len(headers) != count:
        raise DicomResultsError(f"{folder}: series {scan.series_uid} has {len(headers)} files for {count} slices")
    try:
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    except AttributeError:
        raise DicomResultsError(f"{folder}: a file of series {scan.series_uid} lacks ImagePositionPatient") from None
    expected = scan.geometry.irc_to_xyz(np.stack([np.arange(count), np.zeros(count), np.zeros(count)], axis=1))
    distance = np.linalg.norm(expected[:, None, :] - positions[None, :, :], axis=2)  # (slice, file)
    order = distance.argmin(axis=1)
    tolerance = 0.25 * float(scan.geometry.spacing_xyz[2])
    if len(set(order.tolist())) != count or distance[np.arange(count), order].max() > tolerance:
        raise DicomResultsError(f"{folder}: the files of series {scan.series_uid} do not match the scan's slices")
    return [headers[k] for k in order]


def _device_context(hd):
    from pydicom.sr.codedict import codes

    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name="lunakit", model_name=f"lunakit {lunakit.__version__}"
            ),
        )
    )


def _algorithm(hd, checksums: dict[str, str]):
    names = ", ".join(f"{kind} {sha[:12]}" for kind, sha in sorted(checksums.items()))
    return hd.sr.AlgorithmIdentification(
        name="lunakit", version=lunakit.__version__, parameters=[names] if names else None
    )


def _probability(hd, value: str, meaning: str, p: float):
    from pydicom.sr.coding import Code

    return hd.sr.Measurement(name=Code(value, SCHEME, meaning), value=float(p), unit=Code("1", "UCUM", "no units"))


def _finding_group(hd, k: int, finding: Finding, series_uid: str, frame_of_reference: str, algorithm):
    from pydicom.sr.codedict import codes

    measurements = [
        hd.sr.Measurement(name=codes.SCT.Diameter, value=float(finding.diameter_mm), unit=codes.UCUM.Millimeter),
        _probability(hd, "p_nodule", "Probability of nodule", finding.p_nodule),
    ]
    if finding.p_malignant is not None:
        measurements.append(_probability(hd, "p_malignant", "Probability of malignancy", finding.p_malignant))
    center = hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.center_xyz], dtype=np.float64),
        frame_of_reference_uid=frame_of_reference,
        source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"finding {k}"),
        referenced_volume_surface=center,
        finding_type=codes.SCT.Nodule,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        geometric_purpose=codes.DCM.Center,
        algorithm_id=algorithm,
        measurements=measurements,
    )


def build_sr(sources: Sequence, findings: Sequence[Finding], checksums: dict[str, str]):
    """The TID 1500 measurement report of the findings (in their order), as a Comprehensive 3D SR."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    first = sources[0]
    algorithm = _algorithm(hd, checksums)
    groups = [
        _finding_group(hd, k, f, first.SeriesInstanceUID, first.FrameOfReferenceUID, algorithm)
        for k, f in enumerate(findings, start=1)
    ]
    if not groups:  # TID 1500 needs a group: an empty one says "analyzed, nothing found"
        groups = [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="no findings"),
                algorithm_id=algorithm,
            )
        ]
    report = hd.sr.MeasurementReport(
        observation_context=_device_context(hd),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(sources),
        content=report,
        series_instance_uid=hd.UID(),
        series_number=_next_series_number(first, 1),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lunakit",
        series_description="lunakit nodule findings",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )


def build_seg(sources: Sequence, mask: np.ndarray):
    """A binary SEG of the findings' voxels (mask [I, R, C], slices in the sources' order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="lunakit", version=lunakit.__version__, family=codes.cid7162.ArtificialIntelligence
        ),
    )
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=np.ascontiguousarray(mask, dtype=bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=_next_series_number(sources[0], 2),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lunakit",
        manufacturer_model_name="lunakit",
        software_versions=lunakit.__version__,
        device_serial_number="0",
        series_description="lunakit nodule candidates",
    )


def _next_series_number(source, offset: int) -> int:
    number = getattr(source, "SeriesNumber", None)
    return (int(number) if number not in (None, "") else 0) + 1000 + offset


def build_results(
    sources: Sequence, findings: Sequence[Finding], mask: Callable[[], np.ndarray], checksums: dict[str, str]
) -> dict[str, object]:
    """{file name: dataset}: the SR and the SEG of one analysis of a DICOM scan whose headers
    read_source_series gave."""
    with warnings.catch_warnings():
        # highdicom warns about the source's patient name form (e.g. a de-identified "C3N-00247"),
        # which the results copy unchanged
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        return {SR_FILE: build_sr(sources, findings, checksums), SEG_FILE: build_seg(sources, mask())}


def save_results(staging: Path, results: dict[str, object]) -> None:
    """Write each dataset as staging/name (a file of the DICOM File Format)."""
    for name, dataset in results.items():
        dataset.save_as(os.fspath(staging / name), enforce_file_format=True)
