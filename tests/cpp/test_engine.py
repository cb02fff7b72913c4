"""The C++ runtime in-process (lunakit._core, pipeline.cpp_engine) against the Python pipeline.

Same findings on a phantom scan (seeded models) and on the real CT with the book's weights; the CLI's
`--engine cpp` writes the findings.json `--engine python` writes; `lunakit serve --engine cpp`
answers /v1/analyze with them; the scan's array is read in place, not copied; bad arrays, bundles
and engine choices are refused in one line.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from lunakit import _core
from lunakit.bundle import load_bundle
from lunakit.cli import main as lunakit_main
from lunakit.errors import LunakitError
from lunakit.io import ct
from lunakit.io.ct import CtScan
from lunakit.io.findings import findings_document
from lunakit.pipeline.analyze import analyze
from lunakit.pipeline.cpp_engine import CppAnalyzer, CppEngineError

from helpers import assert_same_findings


@pytest.fixture(scope="module")
def cpp(bundle) -> CppAnalyzer:
    return CppAnalyzer(bundle)


@pytest.fixture(scope="module")
def phantom(scan_path) -> CtScan:
    return ct.load(scan_path)


def documents(scan: CtScan, bundle: Path, cpp: CppAnalyzer) -> tuple[dict, dict, dict]:
    """findings.json documents of both engines for one scan, and each one's wall time."""
    models, options, _ = load_bundle(bundle)
    start = time.perf_counter()
    py = findings_document(scan, analyze(scan, models, options), options, models.checksums)
    python_s = time.perf_counter() - start
    start = time.perf_counter()
    cc = findings_document(scan, cpp.analyze(scan), cpp.options, cpp.checksums)
    return py, cc, {"python_s": python_s, "cpp_s": time.perf_counter() - start}


# -- the bindings --------------------------------------------------------------------------------


def test_readers_give_what_io_ct_load_gives(scan_path, phantom):
    voxels, origin, spacing, direction, series_uid, source = _core.load_scan(str(scan_path))
    assert voxels.dtype == np.int16 and voxels.flags.c_contiguous
    np.testing.assert_array_equal(voxels, phantom.hu)
    assert ct.Geometry(origin, spacing, direction).allclose(phantom.geometry, atol=1e-9)
    assert (series_uid, source) == (phantom.series_uid, str(scan_path))
    raw, *geometry = _core.read_metaimage(str(scan_path))
    np.testing.assert_array_equal(raw, phantom.hu)
    assert ct.Geometry(*geometry).allclose(phantom.geometry, atol=1e-9)
    with pytest.raises(_core.Error, match="not found"):
        _core.load_scan(str(scan_path.with_name("missing.mhd")))
    with pytest.raises(_core.Error, match="not the requested other"):
        _core.load_scan(str(scan_path), "other")


def test_options_and_checksums_are_the_bundles(bundle, cpp):
    _, options, manifest = load_bundle(bundle)
    assert cpp.options == options
    assert cpp.checksums == {kind: entry["sha256"] for kind, entry in manifest["models"].items()}
    assert cpp.device == "cpu"


# -- parity --------------------------------------------------------------------------------------


def test_phantom_parity(bundle, cpp, phantom):
    py, cc, seconds = documents(phantom, bundle, cpp)
    diffs = assert_same_findings(py, cc)
    assert diffs["count"] > 0 and any(f["p_malignant"] is not None for f in cc["findings"])
    print(json.dumps({"phantom_parity": diffs, **seconds}))


def test_real_ct_parity_with_the_books_weights(book_bundle, real_scan):
    py, cc, seconds = documents(real_scan, book_bundle, CppAnalyzer(book_bundle))
    diffs = assert_same_findings(py, cc)
    assert diffs["count"] > 1000  # 1532 components (docs/cpp.md)
    print(json.dumps({"real_ct_parity": diffs, **seconds}))


def test_cli_engine_cpp_writes_the_same_findings(bundle, scan_path, tmp_path, capsys):
    for engine in ("python", "cpp"):
        argv = ["analyze", str(scan_path), "--bundle", str(bundle), "--out", str(tmp_path / engine), "--quiet"]
        assert lunakit_main([*argv, "--engine", engine]) == 0
    assert "candidates" in capsys.readouterr().out
    py, cc = (json.loads((tmp_path / e / "findings.json").read_text()) for e in ("python", "cpp"))
    assert {k: v for k, v in cc.items() if k != "findings"} == {k: v for k, v in py.items() if k != "findings"}
    assert_same_findings(py, cc)
    csv = [(tmp_path / e / "findings.csv").read_text().splitlines() for e in ("python", "cpp")]
    assert len(csv[0]) == len(csv[1]) == len(py["findings"]) + 1


def test_serve_engine_cpp_analyzes_uploads_with_the_cpp_runtime(bundle, cpp, scan_path, phantom, tmp_path):
    from fastapi.testclient import TestClient

    from lunakit.serve.app import ServeConfig, create_app

    files = [
        ("files", (scan_path.name, scan_path.read_bytes(), "text/plain")),
        ("files", (scan_path.with_suffix(".raw").name, scan_path.with_suffix(".raw").read_bytes(), "x/raw")),
    ]
    with TestClient(create_app(bundle, ServeConfig(engine="cpp", upload_dir=str(tmp_path)))) as client:
        assert client.get("/readyz").json()["engine"] == "cpp"
        response = client.post("/v1/analyze", files=files)
    assert response.status_code == 200, response.text
    served = response.json()
    direct = findings_document(phantom, cpp.analyze(phantom), cpp.options, cpp.checksums)
    assert served["findings"] == direct["findings"]
    with pytest.raises(LunakitError, match="engine must be"):
        ServeConfig(engine="java")


# -- no copy -------------------------------------------------------------------------------------


def test_the_array_is_read_in_place(cpp, phantom):
    """After grouping, the test overwrites the scan's own buffer: the classifiers, which crop the
    volume next, see the change (every crop the same, so every p_nodule the same). A copy made at
    the call would keep the original crops and their varied probabilities."""
    hu = phantom.hu.copy()
    scan = CtScan(hu=hu, geometry=phantom.geometry, series_uid=phantom.series_uid, path=phantom.path)
    before = [f.p_nodule for f in cpp.analyze(scan)]

    def overwrite_after_grouping(stage: str, done: int, total: int) -> None:
        if stage == "group":
            hu[...] = -1000

    after = cpp.analyze(scan, progress=overwrite_after_grouping)
    assert len(after) == len(before) > 1
    assert len(set(before)) > 1
    assert len({f.p_nodule for f in after}) == 1


def test_an_exception_in_progress_stops_the_analysis(cpp, phantom):
    """A Python exception raised in the callback (Ctrl-C in the CLI's progress) crosses the C++
    analysis unchanged; the analyzer (and its lock) can be used again afterwards."""

    class Stop(Exception):
        pass

    def stop(stage: str, done: int, total: int) -> None:
        raise Stop(stage)

    with pytest.raises(Stop, match="segment"):
        cpp.analyze(phantom, progress=stop)
    assert len(cpp.analyze(phantom)) > 0


# -- refusals ------------------------------------------------------------------------------------


def refused_arrays(hu: np.ndarray) -> dict[str, tuple[object, str]]:
    return {
        "float64": (hu.astype(np.float64), "expected int16 .HU. or float32 voxels, got float64"),
        "2D": (np.ascontiguousarray(hu[0]), r"expected a 3D array \[I, R, C\], got shape \(96, 96\)"),
        "non-contiguous": (hu[:, ::2], "not C-contiguous"),
        "big-endian": (hu.astype(">i2"), "got >i2"),
        "list": (hu.tolist(), "expected a numpy array, got list"),
    }


@pytest.mark.parametrize("case", ["float64", "2D", "non-contiguous", "big-endian", "list"])
def test_bad_arrays_are_refused_in_one_line(cpp, phantom, case):
    array, message = refused_arrays(phantom.hu)[case]
    g = phantom.geometry
    with pytest.raises(_core.Error, match=message) as raw:
        cpp._analyzer.analyze(array, g.origin_xyz, g.spacing_xyz, g.direction)
    assert "\n" not in str(raw.value)
    scan = CtScan(hu=array, geometry=g, series_uid="s", path="scan.mhd")
    with pytest.raises(CppEngineError, match=f"^scan.mhd: volume: .*{message}") as wrapped:
        cpp.analyze(scan)
    assert isinstance(wrapped.value, LunakitError) and "\n" not in str(wrapped.value)


def test_bad_geometry_and_float32_volumes(cpp, phantom):
    g = phantom.geometry
    with pytest.raises(_core.Error, match="spacing_xyz: expected 3 numbers"):
        cpp._analyzer.analyze(phantom.hu, g.origin_xyz, [1.0, 1.0], g.direction)
    as_float = phantom.hu.astype(np.float32)
    assert len(cpp._analyzer.analyze(as_float, g.origin_xyz, g.spacing_xyz, g.direction)) > 0
    as_float[0, 0, 0] = np.nan
    with pytest.raises(_core.Error, match="NaN"):
        cpp._analyzer.analyze(as_float, g.origin_xyz, g.spacing_xyz, g.direction)


def copy_with_manifest(bundle: Path, out: Path, **changes: object) -> Path:
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, **changes}))
    return out


def test_cli_refuses_what_the_cpp_engine_cannot_run(bundle, scan_path, tmp_path, capsys):
    aoti = copy_with_manifest(bundle, tmp_path / "aoti", model_format="aoti")
    onnx = copy_with_manifest(bundle, tmp_path / "onnx", format="lunakit-onnx-bundle")
    cases = {
        "missing bundle": (
            ["--bundle", str(tmp_path / "none")],
            "bundle folder does not exist|not found|does not exist",
        ),
        "no bundle": (["--seg", "a.pt", "--cls", "b.pt"], "--engine cpp needs --bundle"),
        "TorchScript files under an aoti manifest": (["--bundle", str(aoti)], "not a loadable AOTInductor package"),
        "ONNX bundle": (["--bundle", str(onnx)], "not a lunakit bundle manifest .its format is 'lunakit-onnx-bundle'"),
        "bad device": (["--bundle", str(bundle), "--device", "tpu"], "tpu"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / name.replace(" ", "-")
        code = lunakit_main(["analyze", str(scan_path), "--out", str(out), "--engine", "cpp", "--quiet", *args])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("lunakit: error: ") and err.count("\n") == 1, (name, err)
        assert re.search(message, err), (name, err)
        assert not out.exists(), name
