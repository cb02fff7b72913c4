"""Fast mode (precision bf16) on CUDA, in both runtimes, against exact mode on the same GPU with
the tolerance the mode promises (docs/pipeline.md, "Fast mode"); tests/gpu/run.sh runs these."""

from __future__ import annotations

import pytest
import torch

import lunakit._core
from lunakit.bundle import load_bundle
from lunakit.io import ct
from lunakit.pipeline import precision
from lunakit.pipeline.analyze import analyze
from lunakit.pipeline.cpp_engine import CppAnalyzer

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and lunakit._core.built_with_cuda()),
    reason="needs a GPU and lunakit built with CUDA (tests/gpu/run.sh)",
)


def test_cuda_auto_precision_follows_the_compute_capability():
    native = torch.cuda.get_device_capability(0) >= (8, 0)
    assert precision.resolve("auto", torch.device("cuda")) == ("bf16" if native else "fp32")
    assert lunakit._core.native_bf16("cuda") == native


@pytest.mark.parametrize("runtime", ["python", "cpp"])
def test_cuda_fast_mode_holds_the_tolerance(bundle, scan_path, runtime):
    scan = ct.load(scan_path)
    device = torch.device("cuda")
    if runtime == "python":
        models, options, _ = load_bundle(bundle, device=device)
        found = {
            mode: analyze(scan, models, precision.with_precision(options, mode, device), device=device)
            for mode in ("fp32", "bf16")
        }
    else:
        found = {mode: CppAnalyzer(bundle, device="cuda", precision=mode).analyze(scan) for mode in ("fp32", "bf16")}
        options = CppAnalyzer(bundle, device="cuda").options
    report = precision.tolerance(found["fp32"], found["bf16"], options.nodule_threshold)
    assert report["candidates_exact"] > 20 and report["positives"] > 0, report
    assert report["matched"] >= 0.99, report
    assert report["max_dp_positives"] < 0.01, report
    assert report["new_positives"] == 0, report
