"""`luna_infer analyze` on bad input: one line on stderr, exit 2, no output file.

Each case of the deployment issue's list goes through the binary: bundles with a missing file,
a wrong checksum, an unknown format version or a model that does not take the pipeline's input;
a truncated .raw; DICOM folders with mixed series or a missing slice; a float volume with NaN;
`--device cuda` where there is no GPU; and argument mistakes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lunakit.bundle import export_bundle
from lunakit.io import ct
from lunakit.io.files import sha256_of
from lunakit.models import LunaModel, UNetWrapper
from lunakit.models.checkpoint import save_checkpoint
from lunakit.pipeline.options import AnalysisOptions

from helpers import LUNA_INFER, run_luna_infer

UID_A = "1.2.826.0.1.3680043.9.8.111"
UID_B = "1.2.826.0.1.3680043.9.8.222"


def assert_bad_input(result: subprocess.CompletedProcess, *parts: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("luna_infer: error: "), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> dict[str, Path]:
    """Seeded small models (a narrow U-Net) so a bad-input run is quick."""
    folder = tmp_path_factory.mktemp("small_ckpt")
    torch.manual_seed(3)
    models = {"seg": UNetWrapper(depth=2, wf=2), "cls": LunaModel(conv_channels=4)}
    return {kind: save_checkpoint(folder / f"{kind}.pt", m.eval(), kind) for kind, m in models.items()}


@pytest.fixture()
def bundle(tmp_path: Path, small_models: dict[str, Path]) -> Path:
    return export_bundle(tmp_path / "bundle", small_models, AnalysisOptions(seg_threshold=0.9))


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    """A small int16 scan: air with a dense ball."""
    hu = np.full((34, 50, 50), -900, np.int16)
    i, r, c = np.ogrid[:34, :50, :50]
    hu[(i - 17) ** 2 + (r - 25) ** 2 + (c - 25) ** 2 <= 16] = 40
    return ct.save(hu, ct.Geometry.identity((0.8, 0.8, 2.0)), tmp_path_factory.mktemp("scan") / "small.mhd")


def analyze(bundle: Path, scan: Path | str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_luna_infer(
        "analyze",
        "--bundle",
        str(bundle),
        "--input",
        str(scan),
        "--output",
        str(out / "f.json"),
        "--csv",
        str(out / "f.csv"),
        "--quiet",
        *extra,
    )


def assert_no_output(out: Path) -> None:
    assert not (out / "f.json").exists() and not (out / "f.csv").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".f.")], "temporary files left behind"


def test_good_input_writes_both_files(bundle: Path, scan: Path, tmp_path: Path) -> None:
    result = analyze(bundle, scan, tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "f.json").read_text())
    assert document["series_uid"] == "small" and document["size_irc"] == [34, 50, 50]
    assert (tmp_path / "f.csv").read_bytes().startswith(b"seriesuid,coordX,coordY,coordZ,probability\r\n")


def test_progress_goes_to_stderr(bundle: Path, scan: Path, tmp_path: Path) -> None:
    result = run_luna_infer(
        "analyze", "--bundle", str(bundle), "--input", str(scan), "--output", str(tmp_path / "f.json")
    )
    assert result.returncode == 0, result.stderr
    assert "segment" in result.stderr and "classify" in result.stderr or "group" in result.stderr
    assert "candidates" in result.stdout


def test_timings_line_and_malloc_settings_change_nothing(bundle: Path, scan: Path, tmp_path: Path) -> None:
    """--timings: one JSON line of per-stage seconds on stderr (benchmarks/bench_pipeline.py reads it);
    luna_infer's kept-memory malloc setting and glibc's defaults give byte-identical findings."""
    result = analyze(bundle, scan, tmp_path, "--timings")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stderr
    record = json.loads(lines[0])
    document = json.loads((tmp_path / "f.json").read_text())
    assert record["candidates"] == len(document["findings"])
    timings = record["luna_infer_timings"]
    stages = ["load_bundle_s", "read_scan_s", "segment_s", "group_s"]
    stages += ["classify_s"] if document["findings"] else []
    assert list(timings) == stages + ["write_s", "total_s"]
    assert all(v >= 0 for v in timings.values())
    assert sum(timings[s] for s in stages + ["write_s"]) == pytest.approx(timings["total_s"], rel=1e-6, abs=1e-6)
    other = tmp_path / "glibc_defaults"
    other.mkdir()
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"}
    again = subprocess.run(
        [
            str(LUNA_INFER),
            "analyze",
            "--bundle",
            str(bundle),
            "--input",
            str(scan),
            "--output",
            str(other / "f.json"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads((other / "f.json").read_text())["findings"] == document["findings"]


def test_bundle_with_missing_file(bundle: Path, scan: Path, tmp_path: Path) -> None:
    (bundle / "cls.pt").unlink()
    assert_bad_input(analyze(bundle, scan, tmp_path), str(bundle), "model file cls.pt is missing")
    assert_no_output(tmp_path)


def test_bundle_with_wrong_checksum(bundle: Path, scan: Path, tmp_path: Path) -> None:
    with open(bundle / "seg.pt", "ab") as handle:
        handle.write(b"\0")
    assert_bad_input(analyze(bundle, scan, tmp_path), "checksum mismatch for seg.pt")
    assert_no_output(tmp_path)


def test_bundle_with_unknown_format_version(bundle: Path, scan: Path, tmp_path: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert_bad_input(analyze(bundle, scan, tmp_path), "format version 99 is not supported")
    assert_no_output(tmp_path)


def test_bundle_with_model_of_wrong_input_shape(small_models: dict[str, Path], scan: Path, tmp_path: Path) -> None:
    torch.manual_seed(4)
    five = save_checkpoint(tmp_path / "seg5.pt", UNetWrapper(in_channels=5, depth=2, wf=2).eval(), "seg")
    bundle = export_bundle(tmp_path / "bundle5", {"seg": five, "cls": small_models["cls"]})
    assert_bad_input(analyze(bundle, scan, tmp_path), "seg.pt", "does not fit the pipeline's input [1, 7, 64, 64]")
    assert_no_output(tmp_path)


def test_bundle_whose_file_is_not_torchscript(bundle: Path, scan: Path, tmp_path: Path) -> None:
    (bundle / "cls.pt").write_bytes(b"PK\3\4 not really a zip")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["models"]["cls"]["sha256"] = sha256_of(bundle / "cls.pt")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert_bad_input(analyze(bundle, scan, tmp_path), "cls.pt", "not a loadable TorchScript model")


def test_truncated_raw(bundle: Path, scan: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cut.mhd"
    shutil.copy(scan, copy)
    header = copy.read_text().replace("small.raw", "cut.raw")
    copy.write_text(header)
    raw = (scan.parent / "small.raw").read_bytes()
    (tmp_path / "cut.raw").write_bytes(raw[: len(raw) - 1000])
    assert_bad_input(analyze(bundle, copy, tmp_path), str(copy))
    assert_no_output(tmp_path)


def test_float_volume_with_nan(bundle: Path, tmp_path: Path) -> None:
    values = np.full((34, 50, 50), -900.0, np.float32)
    values[10, 20, 30] = np.nan
    image = sitk.GetImageFromArray(values)
    path = tmp_path / "nan.mhd"
    sitk.WriteImage(image, str(path))
    assert_bad_input(analyze(bundle, path, tmp_path), str(path), "NaN")
    assert_no_output(tmp_path)


def write_series(folder: Path, uid: str, n_slices: int, skip: tuple[int, ...] = ()) -> None:
    """A small axial series (34 slices of 50 x 50 at 2 mm), files named out of order."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n_slices):
        if k in skip:
            continue
        image = sitk.GetImageFromArray(np.full((1, 50, 50), -900 + k, np.int16))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{2.0 * k:g}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.8\\0.8",
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-3:]}_{(k * 11) % n_slices:03d}.dcm"))  # 11: coprime with 34, 35
        writer.Execute(image)
    assert len(list(folder.glob(f"{uid[-3:]}_*.dcm"))) == n_slices - len(skip)


def test_dicom_with_mixed_series(bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dicom"
    write_series(folder, UID_A, 34)
    write_series(folder, UID_B, 34)
    assert_bad_input(analyze(bundle, folder, tmp_path), "2 DICOM series", UID_A, UID_B, "--series-uid")
    assert_no_output(tmp_path)
    assert analyze(bundle, folder, tmp_path, "--series-uid", UID_B).returncode == 0
    assert json.loads((tmp_path / "f.json").read_text())["series_uid"] == UID_B


def test_dicom_with_missing_slice(bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dicom"
    write_series(folder, UID_A, 35, skip=(17,))
    assert_bad_input(analyze(bundle, folder, tmp_path), str(folder), "not evenly spaced", "missing")
    assert_no_output(tmp_path)


def test_dicom_with_mixed_sizes(bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dicom"
    write_series(folder, UID_A, 34)
    odd = sitk.ReadImage(str(sorted(folder.iterdir())[0]))
    bigger = sitk.GetImageFromArray(np.zeros((1, 52, 50), np.int16))
    for key in odd.GetMetaDataKeys():
        if key.startswith(("0008|", "0020|")):
            bigger.SetMetaData(key, odd.GetMetaData(key))
    bigger.SetMetaData("0020|0032", "0\\0\\68")
    bigger.SetMetaData("0028|0030", "0.8\\0.8")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "zz_bigger.dcm"))
    writer.Execute(bigger)
    assert_bad_input(analyze(bundle, folder, tmp_path), "different sizes")
    assert_no_output(tmp_path)


def test_empty_folder_and_missing_scan(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_bad_input(analyze(bundle, tmp_path / "empty", tmp_path), "no DICOM series")
    assert_bad_input(analyze(bundle, tmp_path / "absent.mhd", tmp_path), "absent.mhd", "no such file")
    assert_bad_input(analyze(bundle, tmp_path / "f.nii", tmp_path), "f.nii")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_gpu(bundle: Path, scan: Path, tmp_path: Path) -> None:
    assert_bad_input(analyze(bundle, scan, tmp_path, "--device", "cuda"), "--device cuda", "no CUDA GPU")
    assert_no_output(tmp_path)


def test_argument_mistakes(bundle: Path, scan: Path, tmp_path: Path) -> None:
    assert_bad_input(run_luna_infer("analyze", "--bundle", str(bundle), "--input", str(scan)), "--output is required")
    assert_bad_input(analyze(bundle, scan, tmp_path, "--threads", "zero"), "--threads")
    assert_bad_input(analyze(bundle, scan, tmp_path, "--frobnicate"), "unknown option --frobnicate")
    assert_bad_input(analyze(bundle, scan, tmp_path, "--device", "tpu"), "tpu")
    assert_no_output(tmp_path)
    # An output below a file is refused before the work (a missing folder is created instead:
    # tests/cli/test_bad_input.py); nothing is left behind.
    (tmp_path / "no").write_text("a file")
    result = run_luna_infer(
        "analyze", "--bundle", str(bundle), "--input", str(scan), "--output", str(tmp_path / "no" / "f.json"), "--quiet"
    )
    assert_bad_input(result, str(tmp_path / "no" / "f.json"), "is a file, not a folder")
