"""Whole-scan benchmark: luna_infer (C++) vs lunakit.pipeline.analyze (Python) vs a book-faithful pipeline.

On the real CT (with the book's weights) and on a phantom scan, the same bundle's models and the
same AnalysisOptions go through three pipelines, each in its own process so that each gets its
own peak memory:
  - luna_infer: `luna_infer analyze --timings`, a subprocess (peak RSS from os.wait4);
  - lunakit: the stage functions of lunakit.pipeline.analyze (segment, binary_erode, label_components,
    component_stats, classify, _findings) called as analyze() calls them, then write_results,
    in a spawned child process that keeps freed memory as `lunakit analyze` does;
  - reference: the pipeline as the book's own nodule_analysis runs it, in a spawned child process:
    a torch Dataset that builds one 7-slice stack per item and a DataLoader in batches of 4 (the
    book's default --batch-size) into the same U-Net (the book's average pooling comes with the
    book's weights), threshold 0.5, scipy binary_erosion / label / center_of_mass, then a Dataset
    that cuts one candidate's crop per item around its rounded center and the classifier in
    batches of 4. It does not reproduce the book's disk cache of crops, its DataLoader worker
    processes (--reference-workers sets them) or its xyz round trip of each center (exact here).
Per-stage wall seconds exclude model loading, which is reported on its own. Peak memory is the
process's ru_maxrss (the in-process pipelines' child includes the interpreter, torch and the
models; `peak_rss_after_load_mib` shows that floor). The three must give the same findings
(count, centers within 1e-3 voxel, p_nodule within 1e-4): that is asserted and printed.
In the same run it measures the machine's limits (fp32 and bf16 matmul GFLOP/s, copy bandwidth)
and each network's GFLOP per slice or crop, hence each pipeline's achieved GFLOP/s per stage.
With --precisions fp32,bf16 (the default) luna_infer and lunakit also run in fast mode
(precision bf16): their per-stage seconds, the ratios exact / fast and reference / fast, and
fast mode's tolerance against exact mode ("fast_mode": matched fraction within 0.5 mm, max
|dp_nodule| over the exact positives, new positives; "holds").
Not a test. Prints one JSON object.

    python benchmarks/bench_pipeline.py [--data DIR] [--scan DATA/ct/C3N-00247-chest-ct]
        [--book-weights | --bundle B] [--phantom-slices 300]
        [--phantom-size 512] [--repeat 1] [--threads 2] [--skip-reference] [--skip-real]
        [--skip-phantom] [--luna-infer-default-malloc] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

CENTER_TOLERANCE_VOXELS = 1e-3
PROBABILITY_TOLERANCE = 1e-4
MIB = 1024.0  # ru_maxrss is in KiB on Linux
BOOK_BATCH_SIZE = 4  # nodule_analysis --batch-size default, for the U-Net and the classifier alike
REAL_CT = Path("ct") / "C3N-00247-chest-ct"  # the book's reference scan, under the data folder
REAL_CT_SLICES = 99


def peak_rss_mib() -> float:
    """This process's peak RSS since its exec: VmHWM (ru_maxrss would start from the parent's RSS
    at fork, which Linux carries across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / MIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


class Stopwatch:
    """Wall seconds between marks, keyed by stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


def findings_table(
    centers_irc: np.ndarray,
    p_nodule: np.ndarray,
    voxel_count: np.ndarray,
    bbox_min: np.ndarray,
    bbox_max: np.ndarray,
    centers_xyz: np.ndarray | None = None,
) -> dict[str, list]:
    """Findings as plain lists, ordered by (bbox_min, bbox_max, voxel_count) so that the three
    pipelines' outputs line up whatever order each writes them in (centers in mm too, where
    given: fast mode's tolerance is in mm)."""
    keys = np.concatenate([bbox_min, bbox_max, voxel_count[:, None]], axis=1).astype(np.int64)
    order = np.lexsort(keys.T[::-1]) if len(keys) else np.arange(0)
    table = {
        "center_irc": centers_irc[order].tolist(),
        "p_nodule": p_nodule[order].tolist(),
        "key": keys[order].tolist(),
    }
    if centers_xyz is not None:
        table["center_xyz"] = centers_xyz[order].tolist()
    return table


def load_timed(scan_path: str, bundle: str, threads: int) -> tuple[Stopwatch, Any, Any, Any]:
    """(stopwatch, scan, models, options), the scan read and the models loaded, each timed."""
    import torch

    from lunakit.bundle import load_bundle
    from lunakit.io import ct

    torch.set_num_threads(threads)
    clock = Stopwatch()
    scan = ct.load(scan_path)
    clock.mark("read_scan_s")
    models, options, _ = load_bundle(bundle)
    clock.mark("load_models_s")
    return clock, scan, models, options


# ---------------------------------------------------------------- lunakit (in a child process)


def run_lunakit(scan_path: str, bundle: str, threads: int, out_dir: str, precision: str = "fp32") -> dict[str, Any]:
    """lunakit.pipeline.analyze, stage by stage as analyze() runs them, then write_results; in
    fast mode (precision bf16) segment_s includes the fp32 recheck of near-threshold tiles."""
    import dataclasses

    import torch

    from lunakit.io.findings import write_results
    from lunakit.pipeline import analyze as analysis
    from lunakit.pipeline.analyze import _check_scan, _findings, classify, segment
    from lunakit.pipeline.memory import keep_freed_memory

    keep_freed_memory()  # as `lunakit analyze` does
    clock, scan, models, options = load_timed(scan_path, bundle, threads)
    options = dataclasses.replace(options, precision=precision)
    rss_after_load = peak_rss_mib()
    clock.restart()
    with torch.inference_mode():
        _check_scan(scan, options)
        hu = torch.from_numpy(np.ascontiguousarray(scan.hu))
        mask = segment(hu, models.seg, options)
        clock.mark("segment_s")
        stats = analysis._large_enough(
            analysis.group(hu, mask, options, scan.geometry.spacing_xyz[::-1]), scan, options.min_diameter_mm
        )
        clock.mark("group_s")
        p_nodule, p_malignant = classify(hu, stats["center_irc"], models, options)
        clock.mark("classify_s")
        findings = _findings(scan, stats, p_nodule, p_malignant)
    write_results(out_dir, scan, findings, options, models.checksums)
    clock.mark("write_s")
    table = findings_table(
        stats["center_irc"].numpy(),
        p_nodule.numpy(),
        stats["voxel_count"].numpy(),
        stats["bbox_min"].numpy(),
        stats["bbox_max"].numpy(),
        scan.geometry.irc_to_xyz(stats["center_irc"].numpy()),
    )
    return {
        "seconds": clock.seconds,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_after_load_mib": rss_after_load,
        "findings": table,
    }


# ---------------------------------------------------------------- book-style reference (child process)


def run_reference(
    scan_path: str, bundle: str, threads: int, batch_workers: int, eager: dict[str, str] | None = None
) -> dict[str, Any]:
    """The pipeline as the book's nodule_analysis runs it: Dataset + DataLoader (batches of 4)
    over slices and over candidates, scipy for erosion, labels and centers, one numpy crop per
    candidate around its rounded center. With `eager` (kind -> lunakit checkpoint), the eager
    models of those checkpoints run, as the book runs its own, instead of the bundle's."""
    import scipy.ndimage as ndi
    import torch
    from torch.utils.data import DataLoader, Dataset

    class SliceStacks(Dataset):
        """Item i: slices i-ctx..i+ctx (edges repeated) as float32, HU clipped, like the book's
        segmentation dataset does per slice."""

        def __init__(self, hu: np.ndarray, context: int, hu_min: float, hu_max: float) -> None:
            self.hu, self.context, self.hu_min, self.hu_max = hu, context, hu_min, hu_max

        def __len__(self) -> int:
            return self.hu.shape[0]

        def __getitem__(self, i: int):
            index = np.clip(np.arange(i - self.context, i + self.context + 1), 0, self.hu.shape[0] - 1)
            stack = torch.from_numpy(self.hu[index].astype(np.float32))  # (7, R, C)
            stack.clamp_(self.hu_min, self.hu_max)
            return stack, i

    class CandidateCrops(Dataset):
        """Item k: the crop around candidate k, moved inside the volume (shift mode), clipped."""

        def __init__(self, hu: np.ndarray, centers_irc: np.ndarray, size, hu_min: float, hu_max: float) -> None:
            self.hu, self.centers_irc, self.size, self.hu_min, self.hu_max = hu, centers_irc, size, hu_min, hu_max

        def __len__(self) -> int:
            return len(self.centers_irc)

        def __getitem__(self, k: int):
            window = []
            center_irc = np.round(self.centers_irc[k])  # the book crops around the rounded center
            for axis, width in enumerate(self.size):
                start = int(round(center_irc[axis] - width / 2))
                start = min(max(start, 0), self.hu.shape[axis] - width)
                window.append(slice(start, start + width))
            crop = torch.from_numpy(self.hu[tuple(window)].astype(np.float32))  # (32, 48, 48)
            crop.clamp_(self.hu_min, self.hu_max)
            return crop.unsqueeze(0)  # (1, 32, 48, 48)

    clock, scan, models, options = load_timed(scan_path, bundle, threads)
    if eager:
        from lunakit.models.checkpoint import load_checkpoint

        models.seg, models.cls = (load_checkpoint(eager[kind], kind=kind)[0] for kind in ("seg", "cls"))
        clock.mark("load_models_s")
    if (
        options.crop_mode != "shift"
        or options.connectivity != 6
        or options.min_diameter_mm > 0
        or options.center_mode != "mass"
    ):
        raise SystemExit(
            "the book-style reference implements crop_mode shift, connectivity 6, centers of mass "
            "and no min_diameter_mm only"
        )
    rss_after_load = peak_rss_mib()
    clock.restart()
    hu = scan.hu
    with torch.no_grad():
        probability = np.zeros(hu.shape, dtype=np.float32)
        slices = DataLoader(
            SliceStacks(hu, options.context_slices, options.hu_min, options.hu_max),
            batch_size=BOOK_BATCH_SIZE,
            num_workers=batch_workers,
        )
        for stacks, index in slices:  # (B, 7, R, C)
            probability[index.numpy()] = models.seg(stacks)[:, 0].numpy()
        mask = probability > options.seg_threshold
        clock.mark("segment_s")
        clean = ndi.binary_erosion(mask, iterations=options.erosion_iterations) if options.erosion_iterations else mask
        labels, count = ndi.label(clean)
        centers_irc = np.array(
            ndi.center_of_mass(
                hu.clip(options.hu_min, options.hu_max) + (1.0 - options.hu_min),
                labels=labels,
                index=np.arange(1, count + 1),
            )
        ).reshape(-1, 3)
        clock.mark("group_s")
        crops = DataLoader(
            CandidateCrops(hu, centers_irc, options.crop_size, options.hu_min, options.hu_max),
            batch_size=BOOK_BATCH_SIZE,
            num_workers=batch_workers,
        )
        p_nodule = []
        for batch in crops:  # (B, 1, 32, 48, 48)
            _, softmax = models.cls(batch)
            p_nodule.append(softmax[:, 1].to(torch.float64).numpy())
        p_nodule = np.concatenate(p_nodule) if p_nodule else np.zeros(0)
        clock.mark("classify_s")
    # For lining the findings up with the other pipelines only (not timed).
    boxes = ndi.find_objects(labels)
    bbox_min = np.array([[s.start for s in box] for box in boxes], dtype=np.int64).reshape(-1, 3)
    bbox_max = np.array([[s.stop - 1 for s in box] for box in boxes], dtype=np.int64).reshape(-1, 3)
    voxel_count = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return {
        "seconds": clock.seconds,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_after_load_mib": rss_after_load,
        "findings": findings_table(centers_irc, p_nodule, voxel_count, bbox_min, bbox_max),
    }


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a fresh spawned process, so its peak RSS is its own."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------- luna_infer (subprocess)

# A glibc tunable set to its default value: luna_infer then leaves glibc's malloc settings alone
# (it keeps freed memory otherwise; cpp/tools/luna_infer.cpp keep_freed_memory).
GLIBC_DEFAULTS = "glibc.malloc.tcache_count=7"


def run_luna_infer(
    luna_infer: str,
    scan_path: str,
    bundle: str,
    threads: int,
    out_dir: str,
    default_malloc: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """luna_infer analyze --timings; wall time, its per-stage seconds and its own peak RSS (GNU time's
    "Maximum resident set size" where /usr/bin/time exists: a child of a small process, so the
    benchmark's own RSS does not leak into it; else os.wait4's ru_maxrss, an upper bound)."""
    output = Path(out_dir) / "findings.json"
    gnu_time = Path("/usr/bin/time")
    wrapper = [str(gnu_time), "-f", "GNU_TIME_MAXRSS_KB %M"] if gnu_time.is_file() else []
    command = [
        *wrapper,
        luna_infer,
        "analyze",
        "--bundle",
        bundle,
        "--input",
        scan_path,
        "--output",
        str(output),
        "--threads",
        str(threads),
        "--quiet",
        "--timings",
        "--precision",
        precision,
    ]
    start = time.perf_counter()
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_DEFAULTS) if default_malloc else None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = process.stdout.read(), process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"luna_infer failed ({process.returncode}): {stderr.strip()}")
    timings = None
    peak_kib = usage.ru_maxrss
    for line in stderr.splitlines():
        if line.startswith("GNU_TIME_MAXRSS_KB "):
            peak_kib = int(line.split()[1])
        if line.startswith('{"luna_infer_timings"'):
            timings = json.loads(line)["luna_infer_timings"]
    if timings is None:
        raise SystemExit(f"{luna_infer}: printed no --timings line (rebuild it?)")
    seconds = {"read_scan_s": timings["read_scan_s"], "load_models_s": timings["load_bundle_s"]}
    for stage in ("segment_s", "group_s", "classify_s", "write_s"):
        seconds[stage] = timings.get(stage, 0.0)
    records = json.loads(output.read_text())["findings"]
    table = findings_table(
        np.array([f["center_irc"] for f in records], dtype=np.float64).reshape(-1, 3),
        np.array([f["p_nodule"] for f in records], dtype=np.float64),
        np.array([f["voxel_count"] for f in records], dtype=np.int64),
        np.array([f["bbox_irc"][0] for f in records], dtype=np.int64).reshape(-1, 3),
        np.array([f["bbox_irc"][1] for f in records], dtype=np.int64).reshape(-1, 3),
        np.array([f["center_xyz"] for f in records], dtype=np.float64).reshape(-1, 3),
    )
    return {
        "seconds": seconds,
        "process_wall_s": wall,
        "peak_rss_mib": peak_kib / MIB,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "findings": table,
        "stdout": stdout.strip(),
    }


# ---------------------------------------------------------------- comparing and summing up

PIPELINE_STAGES = ("segment_s", "group_s", "classify_s")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per stage over repeats; pipeline_s = segment + group + classify (no read, load, write)."""
    stages = runs[0]["seconds"].keys()
    seconds = {s: statistics.median(r["seconds"][s] for r in runs) for s in stages}
    summary: dict[str, Any] = {
        "seconds": seconds,
        "pipeline_s": statistics.median(sum(r["seconds"][s] for s in PIPELINE_STAGES) for r in runs),
        "end_to_end_s": statistics.median(sum(r["seconds"].values()) for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
    }
    for key in ("peak_rss_after_load_mib", "process_wall_s", "user_s", "system_s"):
        if key in runs[0]:
            summary[key] = statistics.median(r[key] for r in runs)
    summary["share"] = {s: seconds[s] / summary["pipeline_s"] for s in PIPELINE_STAGES}
    return summary


def compare(a: dict[str, list], b: dict[str, list]) -> dict[str, Any]:
    """Same findings? Count, matching components, center and probability differences."""
    result: dict[str, Any] = {"count": [len(a["p_nodule"]), len(b["p_nodule"])]}
    same_components = result["count"][0] == result["count"][1] and a["key"] == b["key"]
    result["same_components"] = same_components
    if same_components and result["count"][0]:
        result["max_center_diff_voxels"] = float(np.abs(np.subtract(a["center_irc"], b["center_irc"])).max())
        result["max_p_nodule_diff"] = float(np.abs(np.subtract(a["p_nodule"], b["p_nodule"])).max())
    result["same_findings"] = bool(
        same_components
        and result.get("max_center_diff_voxels", 0.0) <= CENTER_TOLERANCE_VOXELS
        and result.get("max_p_nodule_diff", 0.0) <= PROBABILITY_TOLERANCE
    )
    return result


def compare_with_book(table: dict[str, list], book: dict[str, Any]) -> dict[str, Any]:
    """A pipeline's findings against the book's own (bookref/candidates.json): every book
    component matched by its nearest center, with its voxel count and p_nodule."""
    expected = book["candidates"]
    result: dict[str, Any] = {"count": [len(table["p_nodule"]), len(expected)]}
    if not expected or len(table["p_nodule"]) != len(expected):
        return {**result, "same_findings": False}
    ours = np.asarray(table["center_irc"], dtype=np.float64)  # (K, 3)
    theirs = np.array([c["center_irc"] for c in expected])  # (K, 3)
    distance = ((theirs[:, None, :] - ours[None, :, :]) ** 2).sum(axis=2)
    nearest = distance.argmin(axis=1)
    voxels = np.array([key[-1] for key in table["key"]])
    result["one_to_one"] = len(set(nearest.tolist())) == len(expected)
    result["max_center_diff_voxels"] = float(np.sqrt(distance.min(axis=1)).max())
    result["same_voxel_counts"] = bool((voxels[nearest] == [c["voxel_count"] for c in expected]).all())
    result["max_p_nodule_diff"] = float(
        np.abs(np.asarray(table["p_nodule"])[nearest] - [c["prob_nodule"] for c in expected]).max()
    )
    result["same_findings"] = bool(
        result["one_to_one"]
        and result["same_voxel_counts"]
        and result["max_center_diff_voxels"] <= CENTER_TOLERANCE_VOXELS
        and result["max_p_nodule_diff"] <= PROBABILITY_TOLERANCE
    )
    return result


def bench_scan(
    name: str,
    scan_path: str,
    bundle: str,
    args: argparse.Namespace,
    work: Path,
    luna_infer: str,
    slices: int,
    book: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    runs: dict[str, list] = {"luna_infer": [], "luna_infer_default_malloc": [], "lunakit": [], "reference": []}
    fast = "bf16" in args.precisions
    if fast:
        runs.update({"luna_infer_bf16": [], "lunakit_bf16": []})
    for k in range(args.repeat):
        out = work / f"{name}-{k}"
        (out / "luna_infer").mkdir(parents=True)
        print(f"[{name}] run {k + 1}/{args.repeat}: luna_infer", file=sys.stderr, flush=True)
        runs["luna_infer"].append(run_luna_infer(luna_infer, scan_path, bundle, args.threads, str(out / "luna_infer")))
        if args.luna_infer_default_malloc:
            print(
                f"[{name}] run {k + 1}/{args.repeat}: luna_infer (glibc malloc defaults)", file=sys.stderr, flush=True
            )
            runs["luna_infer_default_malloc"].append(
                run_luna_infer(
                    luna_infer, scan_path, bundle, args.threads, str(out / "luna_infer"), default_malloc=True
                )
            )
        print(f"[{name}] run {k + 1}/{args.repeat}: lunakit", file=sys.stderr, flush=True)
        runs["lunakit"].append(in_child(run_lunakit, scan_path, bundle, args.threads, str(out / "lunakit")))
        if fast:
            print(f"[{name}] run {k + 1}/{args.repeat}: luna_infer --precision bf16", file=sys.stderr, flush=True)
            runs["luna_infer_bf16"].append(
                run_luna_infer(luna_infer, scan_path, bundle, args.threads, str(out / "luna_infer"), precision="bf16")
            )
            print(f"[{name}] run {k + 1}/{args.repeat}: lunakit precision bf16", file=sys.stderr, flush=True)
            runs["lunakit_bf16"].append(
                in_child(run_lunakit, scan_path, bundle, args.threads, str(out / "lunakit"), "bf16")
            )
        if not args.skip_reference:
            print(f"[{name}] run {k + 1}/{args.repeat}: reference", file=sys.stderr, flush=True)
            runs["reference"].append(
                in_child(run_reference, scan_path, bundle, args.threads, args.reference_workers, args.eager)
            )
    names = [n for n in runs if runs[n]]
    exact_names = [n for n in names if not n.endswith("_bf16")]
    result: dict[str, Any] = {"scan": scan_path, "pipelines": {n: summarize(runs[n]) for n in names}}
    first = {n: runs[n][0]["findings"] for n in names}
    result["candidates"] = len(first["luna_infer"]["p_nodule"])
    if limits is not None:
        for n in names:
            result["pipelines"][n]["achieved_gflops"] = achieved_gflops(
                result["pipelines"][n], limits, slices, result["candidates"]
            )
    result["above_nodule_threshold"] = int(np.sum(np.asarray(first["luna_infer"]["p_nodule"]) > 0.5))
    result["agreement"] = {"lunakit_vs_luna_infer": compare(first["lunakit"], first["luna_infer"])}
    if "reference" in first:
        result["agreement"]["reference_vs_luna_infer"] = compare(first["reference"], first["luna_infer"])
        result["agreement"]["reference_vs_lunakit"] = compare(first["reference"], first["lunakit"])
    if book is not None:  # the book's own result on this scan
        for n in exact_names:
            result["agreement"][f"{n}_vs_book"] = compare_with_book(first[n], book)
    p = result["pipelines"]
    ratios = {"lunakit/luna_infer": ratio_block(p["lunakit"], p["luna_infer"])}
    if "luna_infer_default_malloc" in p:
        ratios["luna_infer_default_malloc/luna_infer"] = ratio_block(p["luna_infer_default_malloc"], p["luna_infer"])
        result["agreement"]["luna_infer_default_malloc_vs_luna_infer"] = compare(
            first["luna_infer_default_malloc"], first["luna_infer"]
        )
    if "reference" in p:
        ratios["reference/luna_infer"] = ratio_block(p["reference"], p["luna_infer"])
        ratios["reference/lunakit"] = ratio_block(p["reference"], p["lunakit"])
    if fast:
        result["fast_mode"] = {}
        for n in ("luna_infer", "lunakit"):
            ratios[f"{n}/{n}_bf16"] = ratio_block(p[n], p[f"{n}_bf16"])
            if "reference" in p:
                ratios[f"reference/{n}_bf16"] = ratio_block(p["reference"], p[f"{n}_bf16"])
            result["fast_mode"][f"{n}_bf16_vs_{n}"] = fast_mode_tolerance(first[n], first[f"{n}_bf16"])
    result["ratios"] = ratios
    return result


def fast_mode_tolerance(exact: dict[str, list], fast: dict[str, list], threshold: float = 0.5) -> dict[str, Any]:
    """Fast mode's promise (docs/pipeline.md): >= 99 % of the exact candidates matched within
    0.5 mm, every one above the threshold within 0.01 in p_nodule, none new above it."""
    from lunakit.pipeline.precision import tolerance

    def records(table: dict[str, list]) -> list[dict[str, Any]]:
        return [{"center_xyz": c, "p_nodule": p} for c, p in zip(table["center_xyz"], table["p_nodule"])]

    return tolerance(records(exact), records(fast), threshold)


def ratio_block(slow: dict[str, Any], fast: dict[str, Any]) -> dict[str, float]:
    """slow / fast, for the pipeline (segment + group + classify), end to end, and per stage."""
    block = {
        "pipeline": slow["pipeline_s"] / fast["pipeline_s"],
        "end_to_end": slow["end_to_end_s"] / fast["end_to_end_s"],
    }
    for stage in PIPELINE_STAGES:
        if fast["seconds"][stage] > 0:
            block[stage[:-2]] = slow["seconds"][stage] / fast["seconds"][stage]
    block["peak_rss"] = slow["peak_rss_mib"] / fast["peak_rss_mib"]
    return block


# ---------------------------------------------------------------- the machine's limits (child process)

MATMUL_SIZE = 2048
COPY_MIB = 256


def seconds_per_call(fn: Callable[[], Any], min_seconds: float = 1.0) -> float:
    """Best wall seconds of one fn() call over repeated calls for at least min_seconds (after one warm-up)."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def matmul_gflops(dtype_name: str) -> float:
    """GFLOP/s of a square MATMUL_SIZE matmul in the given dtype (float32, bfloat16)."""
    import torch

    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(getattr(torch, dtype_name))
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(a.dtype)
    return 2.0 * MATMUL_SIZE**3 / seconds_per_call(lambda: torch.mm(a, b)) / 1e9


def copy_gb_per_s() -> float:
    """GB/s of a COPY_MIB MiB float32 tensor copy (bytes read + bytes written)."""
    import torch

    source = torch.randn(COPY_MIB * 1024 * 1024 // 4)
    target = torch.empty_like(source)
    return 2.0 * source.numel() * 4 / seconds_per_call(lambda: target.copy_(source)) / 1e9


def network_gflop(bundle: str) -> dict[str, float]:
    """GFLOP of one U-Net slice (7 x 512 x 512) and of one classifier crop, counted by torch's
    FlopCounterMode on the bundle's models (convolutions and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lunakit.bundle import load_bundle

    models, options, _ = load_bundle(bundle)
    inputs = {
        "seg": (models.seg, torch.zeros(1, 2 * options.context_slices + 1, 512, 512)),
        "cls": (models.cls, torch.zeros(1, 1, *options.crop_size)),
    }
    gflop = {}
    with torch.inference_mode():
        for kind, (model, x) in inputs.items():
            with FlopCounterMode(display=False) as counter:
                model(x)
            gflop[kind] = counter.get_total_flops() / 1e9
    return gflop


def measure_limits(bundle: str, threads: int) -> dict[str, Any]:
    """What these cores reach with torch: fp32 and bf16 matmul GFLOP/s, copy bandwidth, and the
    networks' GFLOP per slice / crop (for each pipeline's achieved GFLOP/s)."""
    import torch

    torch.set_num_threads(threads)
    gflop = network_gflop(bundle)
    return {
        "matmul_fp32_gflops": matmul_gflops("float32"),
        "matmul_bf16_gflops": matmul_gflops("bfloat16"),
        "copy_gb_per_s": copy_gb_per_s(),
        "seg_gflop_per_slice": gflop["seg"],
        "cls_gflop_per_crop": gflop["cls"],
    }


def achieved_gflops(summary: dict[str, Any], limits: dict[str, Any], slices: int, candidates: int) -> dict[str, float]:
    """GFLOP/s a pipeline's U-Net and classifier stages reached (their seconds include input
    preparation: stacks, crops)."""
    seconds = summary["seconds"]
    return {
        "segment": limits["seg_gflop_per_slice"] * slices / seconds["segment_s"],
        "classify": limits["cls_gflop_per_crop"] * candidates / seconds["classify_s"],
    }


def make_book_bundle(data: Path, work: Path) -> Path:
    """The book's weights -> lunakit checkpoints -> TorchScript bundle, as README's second section does."""
    lunakit = [sys.executable, "-m", "lunakit.cli"]
    models = data / "book-models"
    seg = sorted(models.glob("seg_*.state"))
    cls = sorted(models.glob("cls_*.state"))
    if not seg or not cls:
        raise SystemExit(f"{models}: the book's seg_*.state and cls_*.state are needed")
    for state, kind in ((seg[0], "seg"), (cls[0], "cls")):
        subprocess.run(
            [*lunakit, "import-book", str(state), "--kind", kind, "--out", str(work / f"{kind}.pt")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    bundle = work / "book-bundle"
    subprocess.run(
        [*lunakit, "export", "--seg", str(work / "seg.pt"), "--cls", str(work / "cls.pt"), "--out", str(bundle)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return bundle


def make_phantom(work: Path, slices: int, size: int, seed: int) -> tuple[Path, float]:
    """A phantom scan of (slices, size, size) from lunakit.synth.make_scan, saved as .mhd
    (run in a child process, so that its memory never counts in the pipelines' peaks)."""
    from lunakit.io import ct
    from lunakit.synth.scan import make_scan

    start = time.perf_counter()
    scan = make_scan(seed, 0, (slices, size, size))
    (work / "phantom").mkdir(exist_ok=True)
    path = ct.save(scan.hu, scan.geometry, work / "phantom" / f"{scan.series_uid}.mhd")
    return path, time.perf_counter() - start


def find_luna_infer(given: str | None) -> str:
    candidates = [given] if given else [str(Path(sys.executable).with_name("luna_infer")), shutil.which("luna_infer")]
    for c in candidates:
        if c and Path(c).is_file():
            return c
    raise SystemExit("luna_infer not found: build lunakit (pip install -e .) or pass --luna-infer")


def real_ct(data: Path, scan: str | None) -> tuple[Path, tuple[int, int, int]]:
    """The scan to time (default: the book's reference CT, whose shape is known) and its shape;
    another scan is read once here for its shape, which the GFLOP/s figures need."""
    if scan is None:
        return (data / REAL_CT).resolve(), (REAL_CT_SLICES, 512, 512)
    from lunakit.io import ct

    path = Path(scan).resolve()
    return path, tuple(int(n) for n in ct.load(path).hu.shape)  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=os.environ.get("LUNAKIT_TEST_DATA"), help="the real data folder (default: $LUNAKIT_TEST_DATA)"
    )
    parser.add_argument(
        "--bundle", help="model bundle (default: the book's weights, imported and exported to a temp dir)"
    )
    parser.add_argument(
        "--book-weights",
        action="store_true",
        help="the book's weights from the data folder (the default; says so explicitly, not with --bundle)",
    )
    parser.add_argument("--scan", help="the real CT (default: DATA/ct/C3N-00247-chest-ct, the book's reference scan)")
    parser.add_argument("--phantom-slices", type=int, default=300)
    parser.add_argument("--phantom-size", type=int, default=512, help="rows = columns of the phantom (default 512)")
    parser.add_argument("--phantom-seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per pipeline (medians are reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads in every pipeline")
    parser.add_argument("--reference-workers", type=int, default=0, help="DataLoader workers of the reference")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--luna-infer-default-malloc",
        action="store_true",
        help="also run luna_infer with glibc's default malloc settings (its before/after)",
    )
    parser.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="fp32 (exact) always runs; with bf16 also luna_infer and lunakit in fast mode (default fp32,bf16)",
    )
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-phantom", action="store_true")
    parser.add_argument("--luna-infer", help="the luna_infer binary (default: next to this Python, else PATH)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not set(args.precisions) <= {"fp32", "bf16"}:
        parser.error("--precisions: fp32 and/or bf16")
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be >= 1")
    if args.book_weights and args.bundle:
        parser.error("--book-weights and --bundle exclude each other")
    luna_infer = find_luna_infer(args.luna_infer)
    data = Path(args.data) if args.data else None
    if (data is None or not data.is_dir()) and (not args.skip_real or not args.bundle):
        parser.error("--data (or $LUNAKIT_TEST_DATA) must name the real data folder")
    if not args.skip_real:
        from lunakit.errors import LunakitError

        try:
            scan, shape = real_ct(data, args.scan)
        except LunakitError as e:
            parser.error(f"--scan: {e}")

    import torch

    result: dict[str, Any] = {
        "benchmark": "lunakit pipeline",
        "device": "cpu",
        "torch_threads": args.threads,
        "repeat": args.repeat,
        "statistic": "median wall seconds per stage (model loading and scan reading excluded from pipeline_s)",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "peak_memory": "peak RSS of each pipeline's own process: luna_infer from /usr/bin/time, lunakit and "
        "reference each in a spawned child, VmHWM (includes interpreter, torch and models)",
        "reference": f"book-faithful: Dataset/DataLoader (batches of {BOOK_BATCH_SIZE}) over slices and "
        "candidates, scipy erosion/label/center_of_mass, one numpy crop per candidate around its "
        f"rounded center; DataLoader workers {args.reference_workers}",
        "scans": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_pipeline-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or str(make_book_bundle(data, work))
        args.eager = None if args.bundle else {kind: str(work / f"{kind}.pt") for kind in ("seg", "cls")}
        result["bundle"] = args.bundle or "book weights (import-book + export, temp dir)"
        print("[limits] matmul, copy bandwidth, network GFLOP", file=sys.stderr, flush=True)
        result["limits"] = in_child(measure_limits, bundle, args.threads)
        if not args.skip_real:
            book_file = data / "bookref" / "candidates.json"
            is_book_scan = scan == (data / REAL_CT).resolve()
            book = (
                json.loads(book_file.read_text()) if is_book_scan and book_file.is_file() and not args.bundle else None
            )
            result["scans"]["real_ct"] = bench_scan(
                "real_ct", str(scan), bundle, args, work, luna_infer, shape[0], book, result["limits"]
            )
            result["scans"]["real_ct"]["shape_irc"] = list(shape)
        if not args.skip_phantom:
            phantom, seconds = in_child(make_phantom, work, args.phantom_slices, args.phantom_size, args.phantom_seed)
            print(f"[phantom] made {phantom.name} in {seconds:.0f} s", file=sys.stderr, flush=True)
            entry = bench_scan(
                "phantom", str(phantom), bundle, args, work, luna_infer, args.phantom_slices, None, result["limits"]
            )
            entry["shape_irc"] = [args.phantom_slices, args.phantom_size, args.phantom_size]
            entry["generation_s"] = seconds
            result["scans"]["phantom"] = entry
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    failed = [
        f"{scan}: {pair}"
        for scan, entry in result["scans"].items()
        for pair, agreement in entry["agreement"].items()
        if not agreement["same_findings"]
    ]
    failed += [
        f"{scan}: fast mode {pair} {report}"
        for scan, entry in result["scans"].items()
        for pair, report in entry.get("fast_mode", {}).items()
        if not report["holds"]
    ]
    if failed:
        print("findings differ: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
