"""Model bundles (export, checks, load) and `lunakit analyze` end to end through the CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

from lunakit.bundle import BundleError, export_bundle, load_bundle, read_manifest
from lunakit.cli import main
from lunakit.io import ct
from lunakit.io.luna import find_scans
from lunakit.pipeline.analyze import analyze


def test_manifest_records_everything(bundle, checkpoints):
    manifest = read_manifest(bundle)
    assert manifest["format_version"] == 1
    assert set(manifest["models"]) == {"seg", "cls", "mal"}
    assert manifest["options"]["crop_size"] == [32, 48, 48]
    assert manifest["torch_version"] == torch.__version__.split("+")[0]
    import hashlib

    for entry in manifest["models"].values():
        assert hashlib.sha256((bundle / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]


def test_bundle_models_match_the_checkpoints(bundle, checkpoints):
    from lunakit.models.checkpoint import load_checkpoint

    models, options, _ = load_bundle(bundle)
    eager, _ = load_checkpoint(checkpoints["cls"])
    crops = torch.randn(3, 1, 32, 48, 48) * 300
    torch.testing.assert_close(models.cls(crops)[1], eager(crops)[1])
    assert isinstance(models.seg, torch.jit.ScriptModule)
    assert options.nodule_threshold == 0.4


@pytest.mark.parametrize(
    "damage, message",
    [
        ("remove_model", "missing"),
        ("flip_byte", "checksum mismatch"),
        ("future_version", "format version"),
        ("no_manifest", "no manifest.json"),
        ("bad_json", "not valid JSON"),
    ],
)
def test_damaged_bundles_are_refused(bundle, tmp_path, damage, message):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest_path = copy / "manifest.json"
    if damage == "remove_model":
        (copy / "cls.pt").unlink()
    elif damage == "flip_byte":
        data = bytearray((copy / "seg.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / "seg.pt").write_bytes(bytes(data))
    elif damage == "future_version":
        manifest = json.loads(manifest_path.read_text())
        manifest["format_version"] = 99
        manifest_path.write_text(json.dumps(manifest))
    elif damage == "no_manifest":
        manifest_path.unlink()
    elif damage == "bad_json":
        manifest_path.write_text("{not json")
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_export_refuses_existing_folder_and_missing_models(tmp_path, checkpoints):
    (tmp_path / "taken").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(tmp_path / "taken", checkpoints)
    with pytest.raises(BundleError, match="needs a seg"):
        export_bundle(tmp_path / "new", {"cls": checkpoints["cls"]})
    assert not (tmp_path / "new").exists()


def test_export_cli_takes_options(tmp_path, checkpoints):
    out = tmp_path / "b"
    assert (
        main(
            [
                "export",
                "--seg",
                str(checkpoints["seg"]),
                "--cls",
                str(checkpoints["cls"]),
                "--out",
                str(out),
                "--option",
                "seg_threshold=0.7",
                "--option",
                "crop_mode=pad",
            ]
        )
        == 0
    )
    _, options, _ = load_bundle(out)
    assert options.seg_threshold == 0.7 and options.crop_mode == "pad"
    assert (
        main(
            [
                "export",
                "--seg",
                str(checkpoints["seg"]),
                "--cls",
                str(checkpoints["cls"]),
                "--out",
                str(tmp_path / "c"),
                "--option",
                "nonsense=1",
            ]
        )
        == 2
    )
    assert not (tmp_path / "c").exists()


def test_analyze_cli_writes_findings_csv_and_report(bundle, scan_path, tmp_path, capsys):
    out = tmp_path / "result"
    assert main(["analyze", str(scan_path), "--bundle", str(bundle), "--out", str(out), "--report", "--quiet"]) == 0
    document = json.loads((out / "findings.json").read_text())
    scan = ct.load(scan_path)
    models, options, manifest = load_bundle(bundle)
    expected = analyze(scan, models, options)
    assert len(document["findings"]) == len(expected) > 0
    assert document["findings"] == [f.to_dict() for f in expected]
    assert document["series_uid"] == scan.series_uid
    assert document["options"] == manifest["options"]
    assert document["model_sha256"] == {k: e["sha256"] for k, e in manifest["models"].items()}
    assert ct.Geometry.from_dict(document["geometry"]) == scan.geometry

    with open(out / "findings.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    assert len(rows) == len(expected)
    assert float(rows[0]["probability"]) == pytest.approx(expected[0].p_nodule)
    assert [float(rows[0][k]) for k in ("coordX", "coordY", "coordZ")] == pytest.approx(expected[0].center_xyz)

    html = (out / "report.html").read_text()
    above = [i for i, f in enumerate(expected, start=1) if f.p_nodule > options.nodule_threshold]
    assert (out / "report_images" / "overview.png").stat().st_size > 0
    for rank in above:
        for view in ("axial", "coronal", "sagittal"):
            name = f"finding{rank:03d}_{view}.png"
            assert (out / "report_images" / name).is_file() and name in html
    assert f"{len(expected)} candidates, {len(above)} above" in capsys.readouterr().out
    for f in expected:
        assert math.isfinite(f.p_malignant)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bundle", "/nonexistent/bundle"], "does not exist"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    ],
)
def test_analyze_cli_bad_input_writes_nothing(bundle, scan_path, tmp_path, capsys, args, message):
    if "--bundle" not in args:
        args = ["--bundle", str(bundle), *args]
    out = tmp_path / "never"
    assert main(["analyze", str(scan_path), "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_analyze_cli_refuses_a_truncated_scan(bundle, scan_path, tmp_path, capsys):
    broken = tmp_path / "scan"
    broken.mkdir()
    shutil.copy(scan_path, broken / scan_path.name)
    raw = scan_path.with_suffix(".raw")
    (broken / raw.name).write_bytes(raw.read_bytes()[: raw.stat().st_size // 2])
    out = tmp_path / "never"
    assert main(["analyze", str(broken / scan_path.name), "--bundle", str(bundle), "--out", str(out), "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_report_command_from_a_findings_file(bundle, scan_path, phantom_root, tmp_path, capsys):
    """`lunakit report` turns any findings.json (e.g. from luna_infer) into the same report."""
    analyzed = tmp_path / "a"
    assert main(["analyze", str(scan_path), "--bundle", str(bundle), "--out", str(analyzed), "--quiet"]) == 0
    out = tmp_path / "r"
    assert main(["report", str(scan_path), "--findings", str(analyzed / "findings.json"), "--out", str(out)]) == 0
    findings = json.loads((analyzed / "findings.json").read_text())["findings"]
    above = [rank for rank, f in enumerate(findings, start=1) if f["p_nodule"] > 0.4]
    pictures = sorted(p.name for p in (out / "report_images").iterdir())
    assert pictures == sorted(
        ["overview.png"] + [f"finding{r:03d}_{v}.png" for r in above for v in ("axial", "coronal", "sagittal")]
    )
    other = sorted(find_scans(phantom_root).items())[1][1]
    if ct.load(other).hu.shape != ct.load(scan_path).hu.shape:
        assert (
            main(
                ["report", str(other), "--findings", str(analyzed / "findings.json"), "--out", str(tmp_path / "never")]
            )
            == 2
        )
        assert not (tmp_path / "never").exists()
    (tmp_path / "bad.json").write_text('{"findings": [{"center_xyz": 1}]}')
    assert main(["report", str(scan_path), "--findings", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")]) == 2
    assert "not a lunakit findings file" in capsys.readouterr().err


def test_a_model_that_does_not_fit_the_pipeline_is_refused_at_load(bundle, tmp_path):
    """A cls model scripted for another crop size passes the checksum but not the probe."""
    import hashlib

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["options"]["crop_size"] = [16, 24, 24]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"cls.pt: does not take input \[1, 1, 16, 24, 24\]"):
        load_bundle(copy)
    assert hashlib.sha256((copy / "cls.pt").read_bytes()).hexdigest() == manifest["models"]["cls"]["sha256"]
