"""The installable C++ package: `cmake --install` of a standalone build, then examples/cpp_embed
(a PACS-plug-in-style program) configured with find_package(lunakit) against that prefix.

The standalone build lives in build/standalone and is reused between runs (only the first run
compiles lunakit_core, several minutes on two cores; later runs rebuild what changed). The
example itself is one small translation unit. Its findings on a phantom's pixel buffer must
equal those of the installed luna_infer on the same scan.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lunakit.bundle import export_bundle
from lunakit.io import ct
from lunakit.io.luna import find_scans
from lunakit.models import LunaModel, UNetWrapper
from lunakit.models.checkpoint import save_checkpoint
from lunakit.pipeline.options import AnalysisOptions

from helpers import calibrated, hu_normalised, threshold_for_candidates

ROOT = Path(__file__).resolve().parents[2]
STANDALONE = ROOT / "build" / "standalone"
VENV_BIN = Path(sys.executable).parent


def run(*cmd: str | Path, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def installed_prefix(tmp_path_factory) -> Path:
    """lunakit built stand-alone (no Python module, no tests) and installed into a fresh prefix."""
    STANDALONE.mkdir(parents=True, exist_ok=True)
    prefix = tmp_path_factory.mktemp("prefix")
    with open(STANDALONE.parent / "standalone.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build of this folder at a time
        run(
            "cmake",
            "-S",
            ROOT,
            "-B",
            STANDALONE,
            "-G",
            "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLUNAKIT_BUILD_PYTHON=OFF",
            "-DLUNAKIT_BUILD_TESTS=OFF",
            f"-DPython_EXECUTABLE={sys.executable}",
        )
        run("cmake", "--build", STANDALONE)
        run("cmake", "--install", STANDALONE, "--prefix", prefix)
    return prefix


@pytest.fixture(scope="module")
def bundle_and_scan(tmp_path_factory, phantom_root: Path) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("embed_bundle")
    torch.manual_seed(11)
    scan_path = next(iter(find_scans(phantom_root).values()))
    hu = ct.load(scan_path).hu
    models = {"seg": hu_normalised(UNetWrapper(depth=2, wf=3)), "cls": calibrated(hu_normalised(LunaModel()), hu)}
    paths = {kind: save_checkpoint(folder / f"{kind}.pt", m, kind) for kind, m in models.items()}
    threshold = threshold_for_candidates(models["seg"], hu, low=5, high=40)
    bundle = export_bundle(folder / "bundle", paths, AnalysisOptions(seg_threshold=threshold))
    return bundle, scan_path


@pytest.fixture(scope="module")
def embed_binary(installed_prefix: Path, tmp_path_factory) -> Path:
    """examples/cpp_embed configured with find_package(lunakit) against the installed prefix."""
    build = tmp_path_factory.mktemp("embed")
    run(
        "cmake",
        "-S",
        ROOT / "examples" / "cpp_embed",
        "-B",
        build,
        "-G",
        "Ninja",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={installed_prefix}",
    )
    run("cmake", "--build", build)
    return build / "cpp_embed"


def test_install_layout(installed_prefix: Path) -> None:
    for header in ("analyzer.h", "bundle.h", "finding.h", "volume.h", "dicom.h", "ops.h", "error.h"):
        assert (installed_prefix / "include" / "lunakit" / header).is_file(), header
    configs = list(installed_prefix.glob("lib*/cmake/lunakit/lunakitConfig.cmake"))
    assert configs, "no lunakitConfig.cmake installed"
    assert (installed_prefix / "bin" / "luna_infer").is_file()


def test_cpp_embed_against_installed_package(
    installed_prefix: Path, embed_binary: Path, bundle_and_scan: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, scan_path = bundle_and_scan

    # The host's buffer: the phantom's raw int16 voxels, with the scan's geometry.
    scan = ct.load(scan_path)
    assert np.allclose(scan.geometry.direction, np.eye(3))
    raw = tmp_path / "pixels.raw"
    np.ascontiguousarray(scan.hu, dtype="<i2").tofile(raw)
    i, r, c = scan.hu.shape
    numbers = [*scan.geometry.spacing_xyz, *scan.geometry.origin_xyz]
    embedded = run(embed_binary, bundle, raw, str(i), str(r), str(c), *[repr(float(v)) for v in numbers])
    lines = embedded.stdout.strip().splitlines()
    count = int(lines[0].split()[0])
    assert count > 0 and len(lines) == count + 1

    out = tmp_path / "f.json"
    run(
        installed_prefix / "bin" / "luna_infer",
        "analyze",
        "--bundle",
        bundle,
        "--input",
        scan_path,
        "--output",
        out,
        "--quiet",
    )
    findings = json.loads(out.read_text())["findings"]
    assert len(findings) == count
    for line, finding in zip(lines[1:], findings):
        p_nodule = float(re.search(r"p_nodule=([\d.eE+-]+)", line).group(1))
        center_irc = [float(v) for v in re.search(r"center_irc=\(([^)]*)\)", line).group(1).split(",")]
        assert p_nodule == pytest.approx(finding["p_nodule"], abs=1e-6)
        assert center_irc == pytest.approx(finding["center_irc"], abs=1e-4)


def test_cpp_embed_reports_bad_bundle(embed_binary: Path, tmp_path: Path) -> None:
    result = subprocess.run([str(embed_binary), str(tmp_path / "no-bundle")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"cpp_embed: error: {tmp_path / 'no-bundle'}: bundle folder does not exist"
