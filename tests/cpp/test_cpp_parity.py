"""Parity: `luna_infer analyze` (C++) and `lunakit analyze --bundle` (Python) give the same findings.

Same candidate count, the same components (bounding box and voxel count), centers within
1e-3 voxel, p_nodule and p_malignant within 1e-4, and the same scan header (series UID, size,
geometry, options, checksums) in findings.json. On phantom scans (.mhd and the same volume as a
DICOM series) with freshly initialised, seeded models. The whole real CT with the book's
weights is held to the book's own result in both runtimes in test_book_pipeline.py. The DICOM
reader is compared with lunakit.io.ct.load on the whole real series.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lunakit.bundle import export_bundle, load_bundle, read_manifest
from lunakit.cli import main as lunakit_main
from lunakit.io import ct
from lunakit.io.luna import find_scans
from lunakit.models import LunaModel, UNetWrapper
from lunakit.models.checkpoint import save_checkpoint
from lunakit.pipeline.analyze import analyze
from lunakit.pipeline.options import AnalysisOptions

from helpers import (
    REAL_CT,
    REAL_SERIES_UID,
    assert_same_findings,
    calibrated,
    component_key,
    hu_normalised,
    require,
    run_luna_infer,
    threshold_for_candidates,
)


def analyze_both(scan: Path, bundle: Path, out: Path, extra: tuple[str, ...] = ()) -> tuple[dict, dict, dict]:
    """findings.json of Python and of C++ for one scan, and the wall time of each."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    assert (
        lunakit_main(["analyze", str(scan), "--bundle", str(bundle), "--out", str(out / "py"), "--quiet", *extra]) == 0
    )
    python_s = time.perf_counter() - start
    start = time.perf_counter()
    result = run_luna_infer(
        "analyze",
        "--bundle",
        str(bundle),
        "--input",
        str(scan),
        "--output",
        str(out / "cpp.json"),
        "--csv",
        str(out / "cpp.csv"),
        *extra,
    )
    cpp_s = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    py = json.loads((out / "py" / "findings.json").read_text())
    cpp = json.loads((out / "cpp.json").read_text())
    csv_rows = [row.split(",") for row in (out / "cpp.csv").read_text().splitlines()]
    assert csv_rows[0] == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    assert len(csv_rows) == len(cpp["findings"]) + 1
    for row, finding in zip(csv_rows[1:], cpp["findings"]):  # the JSON's findings, in its order
        assert row[0] == cpp["series_uid"]
        assert [float(v) for v in row[1:]] == [*finding["center_xyz"], finding["p_nodule"]]
    return py, cpp, {"python_s": python_s, "cpp_s": cpp_s}


# -- phantom scans, seeded random models ---------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_scan(phantom_root: Path) -> Path:
    return next(iter(find_scans(phantom_root).values()))


@pytest.fixture(scope="module")
def phantom_bundle(tmp_path_factory, phantom_scan: Path) -> Path:
    """seg + cls + mal from seeded fresh models; the seg threshold makes some tens of candidates."""
    folder = tmp_path_factory.mktemp("parity_ckpt")
    torch.manual_seed(20240611)
    hu = ct.load(phantom_scan).hu
    models = {
        "seg": hu_normalised(UNetWrapper()),
        "cls": calibrated(hu_normalised(LunaModel()), hu),
        "mal": calibrated(hu_normalised(LunaModel()), hu),
    }
    paths = {kind: save_checkpoint(folder / f"{kind}.pt", model, kind) for kind, model in models.items()}
    threshold = threshold_for_candidates(models["seg"], hu)
    # Malignancy only above a nodule threshold (both branches run); batches of 16 crops.
    options = AnalysisOptions(seg_threshold=threshold, nodule_threshold=0.5, malignancy_on="nodules", cls_batch_size=16)
    return export_bundle(folder / "bundle", paths, options)


def test_phantom_mhd_parity(phantom_scan: Path, phantom_bundle: Path, tmp_path: Path) -> None:
    py, cpp, times = analyze_both(phantom_scan, phantom_bundle, tmp_path)
    diffs = assert_same_findings(py, cpp)
    assert 15 <= len(cpp["findings"]) <= 60
    p_nodule = [f["p_nodule"] for f in cpp["findings"]]
    assert min(p_nodule) < 0.5 < max(p_nodule), "probabilities should spread, not saturate"
    assert any(f["p_malignant"] is None for f in cpp["findings"]) and any(
        f["p_malignant"] is not None for f in cpp["findings"]
    )
    print(f"\nphantom .mhd parity: {json.dumps({**diffs, **times})}")


def test_min_diameter_drops_the_same_components(phantom_scan: Path, phantom_bundle: Path, tmp_path: Path) -> None:
    """min_diameter_mm removes, in both runtimes, exactly the components below that equal-volume
    diameter, and leaves the others' findings as they were."""
    py_all, cpp_all, _ = analyze_both(phantom_scan, phantom_bundle, tmp_path / "all")
    sizes = sorted({f["diameter_mm"] for f in py_all["findings"]})
    cut = (sizes[len(sizes) // 2 - 1] + sizes[len(sizes) // 2]) / 2  # between two sizes found
    options = AnalysisOptions.from_dict({**read_manifest(phantom_bundle)["options"], "min_diameter_mm": cut})
    folder = phantom_bundle.parent
    bundle = export_bundle(tmp_path / "bundle", {k: folder / f"{k}.pt" for k in ("seg", "cls", "mal")}, options)
    py, cpp, _ = analyze_both(phantom_scan, bundle, tmp_path / "cut")
    assert_same_findings(py, cpp)
    assert cpp["options"]["min_diameter_mm"] == cut
    expected = sorted(component_key(f) for f in py_all["findings"] if f["diameter_mm"] >= cut)
    assert 0 < len(expected) < len(py_all["findings"])
    assert sorted(component_key(f) for f in py["findings"]) == expected
    by_key = {component_key(f): f for f in py_all["findings"]}
    for f in py["findings"]:
        assert f["p_nodule"] == pytest.approx(by_key[component_key(f)]["p_nodule"], abs=1e-6)  # other batches


@pytest.mark.parametrize("mode", ["core", "core3d"])
def test_core_centers_agree(phantom_scan: Path, phantom_bundle: Path, tmp_path: Path, mode: str) -> None:
    """center_mode "core" and "core3d" move centers in both runtimes alike; components stay those
    of "mass". Without erosion the components are thick enough for cores to differ from the whole."""
    options = {**read_manifest(phantom_bundle)["options"], "center_mode": mode, "erosion_iterations": 0}
    folder = phantom_bundle.parent
    bundle = export_bundle(
        tmp_path / "bundle", {k: folder / f"{k}.pt" for k in ("seg", "cls", "mal")}, AnalysisOptions.from_dict(options)
    )
    py, cpp, _ = analyze_both(phantom_scan, bundle, tmp_path / "core")
    assert_same_findings(py, cpp)
    assert cpp["options"]["center_mode"] == mode
    models = load_bundle(bundle)[0]
    mass_options = AnalysisOptions.from_dict({**options, "center_mode": "mass"})
    mass = {component_key(f.to_dict()): f.center_irc for f in analyze(ct.load(phantom_scan), models, mass_options)}
    assert sorted(mass) == sorted(component_key(f) for f in cpp["findings"])
    moved = [np.abs(np.subtract(f["center_irc"], mass[component_key(f)])).max() for f in cpp["findings"]]
    assert max(moved) > 0.5


def test_lung_margin_agrees(phantom_scan: Path, phantom_bundle: Path, tmp_path: Path) -> None:
    """lung_margin_mm drops the same candidates in both runtimes (the others keep their scores)."""
    options = {**read_manifest(phantom_bundle)["options"], "lung_margin_mm": 1.5}
    folder = phantom_bundle.parent
    bundle = export_bundle(
        tmp_path / "bundle", {k: folder / f"{k}.pt" for k in ("seg", "cls", "mal")}, AnalysisOptions.from_dict(options)
    )
    py, cpp, _ = analyze_both(phantom_scan, bundle, tmp_path / "lungs")
    assert_same_findings(py, cpp)
    every, _, _ = analyze_both(phantom_scan, phantom_bundle, tmp_path / "every")
    assert 0 < len(cpp["findings"]) < len(every["findings"])
    assert {component_key(f) for f in cpp["findings"]} < {component_key(f) for f in every["findings"]}


def test_mirror_means_agree(phantom_scan: Path, phantom_bundle: Path, tmp_path: Path) -> None:
    """cls_flips averages both classifiers over the crops' 8 mirror images alike in both runtimes;
    the components stay those of the single pass, the scores move."""
    options = {**read_manifest(phantom_bundle)["options"], "cls_flips": True, "malignancy_on": "all"}
    folder = phantom_bundle.parent
    bundle = export_bundle(
        tmp_path / "bundle", {k: folder / f"{k}.pt" for k in ("seg", "cls", "mal")}, AnalysisOptions.from_dict(options)
    )
    py, cpp, _ = analyze_both(phantom_scan, bundle, tmp_path / "flips")
    assert_same_findings(py, cpp)
    assert cpp["options"]["cls_flips"] is True
    single = AnalysisOptions.from_dict({**options, "cls_flips": False})
    once = {component_key(f.to_dict()): f for f in analyze(ct.load(phantom_scan), load_bundle(bundle)[0], single)}
    assert sorted(once) == sorted(component_key(f) for f in cpp["findings"])
    moved = [abs(f["p_nodule"] - once[component_key(f)].p_nodule) for f in cpp["findings"]]
    assert max(moved) > 1e-3
    assert all(f["p_malignant"] is not None for f in cpp["findings"])


def write_dicom_volume(
    folder: Path, hu: np.ndarray, geometry: ct.Geometry, series_uid: str, skip: tuple[int, ...] = ()
) -> None:
    """An axial DICOM series of `hu` (int16 [I, R, C]), one file per slice, names not in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = hu.shape[0]
    spacing = geometry.spacing_xyz
    for k in range(n):
        if k in skip:
            continue
        image = sitk.GetImageFromArray(hu[k : k + 1])
        image.SetSpacing(tuple(float(s) for s in spacing))
        position = geometry.irc_to_xyz((k, 0, 0))
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.9.7",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"img{(k * 13) % n:04d}.dcm"))  # needs n coprime with 13
        writer.Execute(image)
    assert len(list(folder.iterdir())) == n - len(skip)


def test_phantom_dicom_parity(phantom_scan: Path, phantom_bundle: Path, tmp_path: Path) -> None:
    scan = ct.load(phantom_scan)
    geometry = ct.Geometry(np.round(scan.geometry.origin_xyz, 3), np.round(scan.geometry.spacing_xyz, 3))
    folder = tmp_path / "dicom"
    write_dicom_volume(folder, scan.hu, geometry, "1.2.826.0.1.3680043.9.7.1")
    py, cpp, times = analyze_both(folder, phantom_bundle, tmp_path / "out")
    assert cpp["series_uid"] == "1.2.826.0.1.3680043.9.7.1"
    assert cpp["size_irc"] == list(scan.hu.shape)
    diffs = assert_same_findings(py, cpp)
    print(f"\nphantom DICOM parity: {json.dumps({**diffs, **times})}")


# -- the real CT ----------------------------------------------------------------------------------


def test_real_dicom_reader_matches_python(test_data: Path) -> None:
    folder = require(test_data / REAL_CT)
    reference = ct.load(folder)
    result = run_luna_infer("info", str(folder), "--voxel-sha256")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["series_uid"] == REAL_SERIES_UID == reference.series_uid
    assert info["size_irc"] == [99, 512, 512]
    assert info["dtype"] == "int16"
    assert info["voxel_sha256"] == hashlib.sha256(np.ascontiguousarray(reference.hu, dtype="<i2").tobytes()).hexdigest()
    assert (info["hu_min"], info["hu_max"]) == (int(reference.hu.min()), int(reference.hu.max()))
    g = reference.geometry.to_dict()
    for field in ("origin_xyz", "spacing_xyz", "direction"):
        np.testing.assert_allclose(info[field], g[field], rtol=0, atol=1e-6)
    # Naming the series works, naming another is refused.
    assert run_luna_infer("info", str(folder), "--series-uid", REAL_SERIES_UID).returncode == 0
    wrong = run_luna_infer("info", str(folder), "--series-uid", "1.2.3")
    assert wrong.returncode == 2 and REAL_SERIES_UID in wrong.stderr
