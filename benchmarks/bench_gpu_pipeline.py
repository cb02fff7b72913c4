"""Whole-pipeline timing on a device (tests/gpu/run.sh runs it when a GPU is lent).

One phantom scan (default: the life-size family, 512 x 512 or 512 x 400) and a bundle (default
models/demo-bundle; the real CT and the book's weights do not travel to the GPU machine) go
through lunakit.pipeline.analyze on the device in exact (fp32) and fast (bf16) mode, each run
once to warm up (cuDNN autotuning, the caching allocator) and then --repeat times, and in exact
mode on this machine's CPU as the baseline. It reports the median seconds, the ratios, the
device's peak memory, fast mode's tolerance against exact mode on the device, and exact mode on
the device against the CPU (bench_pipeline's comparison: the same components, centers within
1e-3 voxel, p_nodule within 1e-4). Not a test; exits 1 when fast mode misses its tolerance.

    python benchmarks/bench_gpu_pipeline.py [--device cuda] [--bundle models/demo-bundle]
        [--family life] [--seed 5] [--repeat 3] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_pipeline import compare, findings_table  # exact mode's rule: same components, centers, p_nodule

ROOT = Path(__file__).resolve().parents[1]


def timed(scan: Any, models: Any, options: Any, device: torch.device, repeat: int) -> tuple[list, float]:
    """The findings and the median wall seconds of analyze() after one warm-up run."""
    from lunakit.pipeline.analyze import analyze

    analyze(scan, models, options, device)
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        findings = analyze(scan, models, options, device)  # findings come back to the host: synchronized
        seconds.append(time.perf_counter() - start)
    return findings, statistics.median(seconds)


def table(findings: list) -> dict[str, list]:
    """Findings as bench_pipeline compares them (ordered by box and voxel count)."""
    rows = len(findings)
    return findings_table(
        np.array([f.center_irc for f in findings], dtype=np.float64).reshape(rows, 3),
        np.array([f.p_nodule for f in findings], dtype=np.float64),
        np.array([f.voxel_count for f in findings], dtype=np.int64),
        np.array([f.bbox_irc[0] for f in findings], dtype=np.int64).reshape(rows, 3),
        np.array([f.bbox_irc[1] for f in findings], dtype=np.int64).reshape(rows, 3),
    )


def phantom(family: str, seed: int) -> Any:
    """One phantom scan of that family, loaded as the pipeline reads scans."""
    from lunakit.io import ct
    from lunakit.io.luna import find_scans
    from lunakit.synth import make_dataset

    with tempfile.TemporaryDirectory(prefix="bench_gpu_pipeline-") as tmp:
        make_dataset(Path(tmp) / "phantom", n_scans=1, seed=seed, family=family)
        return ct.load(next(iter(find_scans(Path(tmp) / "phantom").values())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--bundle", default=str(ROOT / "models" / "demo-bundle"))
    parser.add_argument("--family", default="life", help="phantom family of the scan (default life)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per mode after the warm-up (median)")
    parser.add_argument("--skip-cpu", action="store_true", help="no CPU baseline")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device visible to torch")

    from lunakit.bundle import load_bundle
    from lunakit.pipeline import precision

    scan = phantom(args.family, args.seed)
    models, options, _ = load_bundle(args.bundle, device)
    result: dict[str, Any] = {
        "benchmark": "lunakit pipeline on a device",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "bundle": args.bundle,
        "scan": {"family": args.family, "seed": args.seed, "shape_irc": list(scan.hu.shape)},
        "statistic": f"median wall seconds of analyze() over {args.repeat} runs after one warm-up",
        "seconds": {},
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = result["seconds"]
    exact, seconds["exact_fp32"] = timed(
        scan, models, dataclasses.replace(options, precision="fp32"), device, args.repeat
    )
    fast, seconds["fast_bf16"] = timed(
        scan, models, dataclasses.replace(options, precision="bf16"), device, args.repeat
    )
    if device.type == "cuda":
        result["peak_device_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["fast_mode"] = precision.tolerance(exact, fast, options.nodule_threshold)
    result["ratios"] = {"exact/fast": seconds["exact_fp32"] / seconds["fast_bf16"]}
    if not args.skip_cpu:
        cpu_models, _, _ = load_bundle(args.bundle, "cpu")
        cpu_options = dataclasses.replace(options, precision="fp32")
        cpu, seconds["cpu_exact_fp32"] = timed(scan, cpu_models, cpu_options, torch.device("cpu"), 1)
        result["cpu_threads"] = torch.get_num_threads()
        result["ratios"]["cpu/exact"] = seconds["cpu_exact_fp32"] / seconds["exact_fp32"]
        result["ratios"]["cpu/fast"] = seconds["cpu_exact_fp32"] / seconds["fast_bf16"]
        result["exact_vs_cpu"] = compare(table(cpu), table(exact))
    print(json.dumps(result, indent=2))
    return 0 if result["fast_mode"]["holds"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
