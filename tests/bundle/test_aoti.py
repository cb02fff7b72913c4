"""AOTInductor bundles (`lunakit export --format aoti`): export, Python and C++ loading, refusals.

The conftest checkpoints are exported once per module (the AOTInductor compile takes about a
minute per model on two cores), with the options of the conftest TorchScript bundle, so the two
bundles differ only in how the models are stored. References: the eager models (outputs), the
TorchScript bundle (whole-scan findings, Python) and the Python pipeline (luna_infer's findings).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lunakit.bundle import BundleError, load_bundle, read_manifest
from lunakit.cli import main as lunakit_main
from lunakit.models.checkpoint import load_checkpoint
from lunakit.pipeline.options import AnalysisOptions

from helpers import LUNA_INFER, assert_same_findings, component_key, run_luna_infer


def _aoti_unavailable() -> str:
    """Why AOTInductor cannot compile here ("" when it can)."""
    from lunakit.bundle import aoti as aoti_export

    try:
        aoti_export._inductor()
        aoti_export._require_compiler()
    except BundleError as exc:
        return str(exc)
    return ""


pytestmark = pytest.mark.skipif(
    bool(_aoti_unavailable()), reason=f"AOTInductor cannot compile here: {_aoti_unavailable()}"
)


@pytest.fixture(scope="module")
def aoti_bundle(tmp_path_factory, checkpoints, bundle) -> Path:
    """The conftest checkpoints as an AOTInductor bundle with the TorchScript bundle's options."""
    from lunakit.bundle.aoti import export_aoti_bundle

    options = AnalysisOptions.from_dict(read_manifest(bundle)["options"])
    return export_aoti_bundle(tmp_path_factory.mktemp("aoti") / "bundle", checkpoints, options)


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = lunakit_main(args)
    return code, capsys.readouterr().err


def assert_one_line_refusal(code: int, err: str, *parts: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_manifest_is_the_torchscript_one_plus_model_format(aoti_bundle, bundle, checkpoints):
    from lunakit.io.files import sha256_of

    aoti, scripted = read_manifest(aoti_bundle), read_manifest(bundle)
    assert "model_format" not in scripted  # TorchScript manifests stay as they were
    assert aoti["model_format"] == "aoti"
    for field in ("format", "format_version", "lunakit_version", "torch_version", "options"):
        assert aoti[field] == scripted[field], field
    assert sorted(aoti["models"]) == ["cls", "mal", "seg"]
    for kind, entry in aoti["models"].items():
        assert entry["file"] == f"{kind}.pt2"
        assert entry["sha256"] == sha256_of(aoti_bundle / entry["file"])
        assert entry["source"] == Path(checkpoints[kind]).name
        assert entry["device"] == "cpu"
        assert entry["input_shape"] == ([-1, 7, -1, -1] if kind == "seg" else [-1, 1, 32, 48, 48])
    assert sorted(p.name for p in aoti_bundle.iterdir()) == ["cls.pt2", "mal.pt2", "manifest.json", "seg.pt2"]
    assert not [p for p in aoti_bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left


@torch.no_grad()
def test_models_match_the_eager_models(aoti_bundle, checkpoints):
    """Dynamic batch and, for the U-Net, any slice size: odd sizes are padded as the eager model pads."""
    models, _, _ = load_bundle(aoti_bundle)
    generator = torch.Generator().manual_seed(3)
    seg, _ = load_checkpoint(checkpoints["seg"], kind="seg")
    for shape in ((1, 7, 64, 64), (3, 7, 45, 37), (2, 7, 96, 96)):
        x = torch.rand(shape, generator=generator) * 2000 - 1000
        got, expected = models.seg(x), seg.eval()(x)
        assert got.shape == expected.shape == (shape[0], 1, *shape[2:])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    for kind in ("cls", "mal"):
        eager, _ = load_checkpoint(checkpoints[kind], kind=kind)
        for batch in (1, 5):
            x = torch.rand((batch, 1, 32, 48, 48), generator=generator) * 2000 - 1000
            (logits, prob), (logits_ref, prob_ref) = getattr(models, kind)(x), eager.eval()(x)
            torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(prob, prob_ref, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match=r"seg.pt2: input of shape \[1, 5, 64, 64\] does not match"):
        models.seg(torch.zeros(1, 5, 64, 64))  # the compiled code itself would run on garbage
    with pytest.raises(RuntimeError, match=r"cls.pt2: input of shape \[1, 32, 48, 48\] does not match"):
        models.cls(torch.zeros(1, 32, 48, 48))


def test_python_analyze_equals_the_torchscript_bundle(aoti_bundle, bundle, scan_path, tmp_path):
    for name, source in (("aoti", aoti_bundle), ("ts", bundle)):
        assert (
            lunakit_main(["analyze", str(scan_path), "--bundle", str(source), "--out", str(tmp_path / name), "--quiet"])
            == 0
        )
    aoti = json.loads((tmp_path / "aoti" / "findings.json").read_text())
    scripted = json.loads((tmp_path / "ts" / "findings.json").read_text())
    assert aoti["model_sha256"] != scripted["model_sha256"]  # each names its own files
    assert_same_findings(scripted, {**aoti, "model_sha256": scripted["model_sha256"]})
    assert len(aoti["findings"]) > 0
    assert sorted(map(component_key, aoti["findings"])) == sorted(map(component_key, scripted["findings"]))


def test_the_cpp_runtime_gives_the_python_findings(aoti_bundle, scan_path, tmp_path):
    """luna_infer and the in-process C++ engine (lunakit analyze --engine cpp) run AOTInductor bundles too."""
    for name, engine in (("py", "python"), ("engine", "cpp")):
        args = ["analyze", str(scan_path), "--bundle", str(aoti_bundle), "--out", str(tmp_path / name)]
        assert lunakit_main([*args, "--engine", engine, "--quiet"]) == 0
    result = run_luna_infer(
        "analyze", "--bundle", str(aoti_bundle), "--input", str(scan_path), "--output", str(tmp_path / "cpp.json")
    )
    assert result.returncode == 0, result.stderr
    py = json.loads((tmp_path / "py" / "findings.json").read_text())
    assert len(py["findings"]) > 0
    for cpp in (
        json.loads((tmp_path / "cpp.json").read_text()),
        json.loads((tmp_path / "engine" / "findings.json").read_text()),
    ):
        assert_same_findings(py, cpp)


def test_compiled_models_run_and_record_fp32_only(aoti_bundle, scan_path, tmp_path, capsys):
    """Autocast does not reach AOTInductor models: "auto" records fp32 in both runtimes, and
    "bf16" is refused in one line by lunakit (both engines) and luna_infer, writing nothing."""
    for engine in ("python", "cpp"):
        out = tmp_path / f"auto-{engine}"
        args = ["analyze", str(scan_path), "--bundle", str(aoti_bundle), "--out", str(out), "--quiet"]
        assert lunakit_main([*args, "--engine", engine, "--precision", "auto"]) == 0
        assert json.loads((out / "findings.json").read_text())["options"]["precision"] == "fp32"
        refused = tmp_path / f"bf16-{engine}"
        args = ["analyze", str(scan_path), "--bundle", str(aoti_bundle), "--out", str(refused), "--quiet"]
        code, err = run_cli([*args, "--engine", engine, "--precision", "bf16"], capsys)
        assert_one_line_refusal(code, err, "precision bf16: a compiled bundle (AOTInductor, ONNX) runs in fp32")
        assert not refused.exists()
    target = tmp_path / "cpp.json"
    result = run_luna_infer(
        "analyze",
        "--bundle",
        str(aoti_bundle),
        "--input",
        str(scan_path),
        "--output",
        str(target),
        "--precision",
        "bf16",
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "a compiled bundle (AOTInductor, ONNX) runs in fp32" in result.stderr and not target.exists()


def damaged_copy(aoti_bundle: Path, tmp_path: Path, how: str) -> Path:
    target = tmp_path / how
    shutil.copytree(aoti_bundle, target)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if how == "tampered":
        with open(target / "seg.pt2", "ab") as handle:
            handle.write(b"\0")
    elif how == "missing":
        (target / "cls.pt2").unlink()
    elif how == "garbage":  # right checksum, not a package
        from lunakit.io.files import sha256_of

        (target / "cls.pt2").write_bytes(b"this is not an AOTInductor package")
        manifest["models"]["cls"]["sha256"] = sha256_of(target / "cls.pt2")
    elif how == "unknown_format":
        manifest["model_format"] = "tensorrt"
    elif how == "five_slices":  # the package takes 7 channels; compiled code would not notice
        manifest["options"]["context_slices"] = 2
    elif how == "other_crop":
        manifest["options"]["crop_size"] = [32, 48, 40]
    manifest_path.write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize(
    "how, message",
    [
        ("tampered", "checksum mismatch for seg.pt2"),
        ("missing", "model file cls.pt2 is missing"),
        ("garbage", "cls.pt2: not a loadable AOTInductor package"),
        ("unknown_format", "model format 'tensorrt' is not supported"),
        ("five_slices", ("seg.pt2", "[1, 5, 64, 64]", "does not match the package's [*, 7, *, *]")),
        ("other_crop", ("cls.pt2", "[1, 1, 32, 48, 40]", "does not match the package's [*, 1, 32, 48, 48]")),
    ],
)
def test_damaged_bundles_are_refused_by_both_runtimes(aoti_bundle, scan_path, tmp_path, capsys, how, message):
    parts = (message,) if isinstance(message, str) else message
    damaged = damaged_copy(aoti_bundle, tmp_path, how)
    out = tmp_path / "out"
    code, err = run_cli(["analyze", str(scan_path), "--bundle", str(damaged), "--out", str(out), "--quiet"], capsys)
    assert_one_line_refusal(code, err, *parts)
    assert not out.exists()
    assert LUNA_INFER.exists()
    result = run_luna_infer(
        "analyze", "--bundle", str(damaged), "--input", str(scan_path), "--output", str(tmp_path / "cpp.json")
    )
    assert_one_line_refusal(result.returncode, result.stderr, "luna_infer: error: ", *parts)
    assert not (tmp_path / "cpp.json").exists()


def test_an_aoti_bundle_refuses_another_device(aoti_bundle):
    with pytest.raises(BundleError, match="holds cpu code; it cannot run on cuda"):
        load_bundle(aoti_bundle, device="cuda")


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "failure, message",
    [
        ("compile", "AOTInductor compile of the cls model failed (no compiler today)"),
        ("no_aoti", "has no AOTInductor packaging"),
        ("no_compiler", "AOTInductor needs a C++ compiler"),
    ],
)
def test_export_failures_are_one_line_and_write_nothing(checkpoints, tmp_path, capsys, monkeypatch, failure, message):
    import torch._inductor
    import torch._inductor.cpp_builder as cpp_builder

    if failure == "compile":

        def fail(program, package_path=None, **kwargs):
            if Path(package_path).name == "cls.pt2":
                raise RuntimeError("no compiler today\nsecond line")
            Path(package_path).write_bytes(b"stub")  # seg "compiles"; the bundle must still not appear
            return package_path

        monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fail)
    elif failure == "no_aoti":
        monkeypatch.delattr(torch._inductor, "aoti_compile_and_package")
    else:  # inductor's config is patched its own way: monkeypatch's undo deletes the entry
        monkeypatch.setattr(cpp_builder, "cpp_compiler_search", cpp_builder.cpp_compiler_search.__wrapped__)
    out = tmp_path / "bundle"
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/cxx",)} if failure == "no_compiler" else {}):
        code, err = run_cli(
            [
                "export",
                "--format",
                "aoti",
                "--seg",
                str(checkpoints["seg"]),
                "--cls",
                str(checkpoints["cls"]),
                "--out",
                str(out),
            ],
            capsys,
        )
    assert_one_line_refusal(code, err, message)
    assert _listing(tmp_path) == []


def test_export_cli_refusals(checkpoints, tmp_path, capsys):
    code, err = run_cli(
        [
            "export",
            "--format",
            "aoti",
            "--seg",
            str(checkpoints["seg"]),
            "--cls",
            str(checkpoints["cls"]),
            "--out",
            str(tmp_path / "q"),
            "--quantize",
            "int8",
        ],
        capsys,
    )
    assert_one_line_refusal(code, err, "--quantize int8 is available with --format torchscript only")
    (tmp_path / "exists").mkdir()
    code, err = run_cli(
        [
            "export",
            "--format",
            "aoti",
            "--seg",
            str(checkpoints["seg"]),
            "--cls",
            str(checkpoints["cls"]),
            "--out",
            str(tmp_path / "exists"),
        ],
        capsys,
    )
    assert_one_line_refusal(code, err, "already exists")
    code, err = run_cli(
        [
            "export",
            "--format",
            "aoti",
            "--seg",
            str(checkpoints["seg"]),
            "--cls",
            str(checkpoints["cls"]),
            "--out",
            str(tmp_path / "o"),
            "--option",
            "crop_mode=wrap",
        ],
        capsys,
    )
    assert code == 2 and "crop_mode" in err
    assert _listing(tmp_path) == ["exists"]


def test_an_aoti_manifest_over_torchscript_files_is_one_line(bundle, scan_path, tmp_path):
    """torch logged two warning lines before the refusal (issue #17); now only lunakit's line."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "model_format": "aoti"}))
    args = [sys.executable, "-m", "lunakit.cli", "analyze", str(scan_path), "--bundle", str(copy)]
    result = subprocess.run([*args, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert "not a loadable AOTInductor package" in result.stderr
    assert not (tmp_path / "out").exists()
