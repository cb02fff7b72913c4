"""Benchmark of the lunakit kernels against the baselines they replace, in one process.

Prints one JSON object: medians (seconds) and speedup ratios of
  - grouping: lunakit label_components + component_stats (weighted by clip(HU) + 1001)
    vs scipy.ndimage.label + scipy.ndimage.center_of_mass (weighted), the book's way, and vs
    cc3d.connected_components + cc3d.statistics (unweighted; when connected-components-3d
    is installed), on a sparse mask (~0.1 % foreground in ~50 blobs) and a dense one (~15 %
    smooth blobs);
  - crops: lunakit extract_crops of --crops centers vs a numpy slicing loop, and the time of
    one contiguous int16 -> float32 copy of the same size (the memory bound);
  - erosion: lunakit binary_erode vs scipy.ndimage.binary_erosion;
  - cores: lunakit component_cores vs scipy (per-slice taxicab distance_transform_cdt, then
    ndimage.maximum per label), on the sparse and the dense mask's components.
Not a test: nothing is asserted but that both sides found the same components.

    python benchmarks/bench_kernels.py [--size 300 512 512] [--device cpu|cuda] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import numpy as np
import scipy.ndimage as ndi
import torch

from lunakit.pipeline import ops


def scipy_cores(labels: np.ndarray, count: int) -> np.ndarray:
    """Each component's voxels of greatest in-plane taxicab depth, the scipy way."""
    mask = labels > 0
    depth = np.stack([ndi.distance_transform_cdt(np.pad(s, 1), metric="taxicab")[1:-1, 1:-1] for s in mask])
    deepest = np.asarray(ndi.maximum(depth, labels, np.arange(count + 1)))
    return mask & (depth == deepest[labels])


def median_seconds(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    """Median wall time of fn over `repeat` runs, after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sparse_mask(rng: np.random.Generator, shape, n_blobs: int = 50, fraction: float = 0.001) -> np.ndarray:
    """~n_blobs balls holding ~fraction of the voxels."""
    mask = np.zeros(shape, dtype=bool)
    radius = max(1.0, (fraction * np.prod(shape) / n_blobs * 3 / (4 * np.pi)) ** (1 / 3))
    r = int(np.ceil(radius))
    grid = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    ball = (grid**2).sum(0) <= radius**2
    for _ in range(n_blobs):
        corner = [rng.integers(0, max(1, s - ball.shape[k])) for k, s in enumerate(shape)]
        window = tuple(slice(c, c + ball.shape[k]) for k, c in enumerate(corner))
        mask[window] |= ball[tuple(slice(0, mask[window].shape[k]) for k in range(3))]
    return mask


def dense_mask(rng: np.random.Generator, shape, fraction: float = 0.15) -> np.ndarray:
    """Smooth blobs covering ~fraction of the voxels: a coarse noise field, upsampled, thresholded."""
    coarse = [max(2, s // 8) for s in shape]
    field = torch.from_numpy(ndi.gaussian_filter(rng.standard_normal(coarse), 1.0).astype(np.float32))
    field = torch.nn.functional.interpolate(field[None, None], size=tuple(shape), mode="trilinear")[0, 0]
    threshold = torch.quantile(field[::4, ::4, ::4].flatten(), 1.0 - fraction)
    return (field > threshold).numpy()


def book_crop_loop(hu: np.ndarray, centers_irc: np.ndarray, size, out: np.ndarray) -> None:
    """The book's getRawCandidate, per center: shift the window inside, slice, clip."""
    for n, center in enumerate(centers_irc):
        slices = []
        for axis, width in enumerate(size):
            start = int(round(center[axis] - width / 2))
            start = min(max(start, 0), hu.shape[axis] - width)
            slices.append(slice(start, start + width))
        out[n, 0] = np.clip(hu[tuple(slices)], -1000, 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(300, 512, 512), metavar=("I", "R", "C"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--crops", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-baselines", action="store_true", help="time only lunakit (e.g. on a GPU box)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    shape = tuple(args.size)

    hu = rng.integers(-1100, 1600, size=shape, dtype=np.int16)
    hu_t = torch.from_numpy(hu).to(device)
    weights_np = np.clip(hu, -1000, 1000).astype(np.float32) + 1001
    weights_t = torch.from_numpy(weights_np).to(device)
    try:
        import cc3d  # connected-components-3d, optional
    except ImportError:
        cc3d = None

    result: dict = {
        "benchmark": "lunakit.pipeline.ops",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "shape_irc": list(shape),
        "torch_threads": torch.get_num_threads(),
        "repeat": args.repeat,
        "statistic": "median seconds",
        "machine": platform.machine(),
        "torch": torch.__version__,
        "grouping": {},
    }

    for name, mask in (("sparse", sparse_mask(rng, shape)), ("dense", dense_mask(rng, shape))):
        mask_t = torch.from_numpy(mask).to(device)
        labels_t, count = ops.label_components(mask_t)

        def ours():
            labels, n = ops.label_components(mask_t)
            return ops.component_stats(labels, n, weights_t)

        case = {"foreground_fraction": float(mask.mean()), "components": count}
        case["lunakit_label_s"] = median_seconds(lambda: ops.label_components(mask_t), args.repeat, sync)
        case["lunakit_stats_s"] = median_seconds(
            lambda: ops.component_stats(labels_t, count, weights_t), args.repeat, sync
        )
        case["lunakit_label_stats_s"] = median_seconds(ours, args.repeat, sync)
        if not args.no_baselines:
            labels_np, scipy_count = ndi.label(mask)
            assert scipy_count == count, (scipy_count, count)
            index = np.arange(1, scipy_count + 1)

            def scipy_way():
                labels, n = ndi.label(mask)
                return ndi.center_of_mass(weights_np, labels, np.arange(1, n + 1))

            case["scipy_label_center_of_mass_s"] = median_seconds(scipy_way, args.repeat, sync)
            case["speedup_vs_scipy"] = case["scipy_label_center_of_mass_s"] / case["lunakit_label_stats_s"]
            centers_scipy = np.array(ndi.center_of_mass(weights_np, labels_np, index)).reshape(-1, 3)
            centers_ours = ours()["center_irc"].cpu().numpy()
            case["max_center_rel_diff"] = float(np.max(np.abs(centers_ours - centers_scipy) / np.abs(centers_scipy)))
            if cc3d is not None:

                def cc3d_way():
                    labels = cc3d.connected_components(mask, connectivity=6)
                    return cc3d.statistics(labels, no_slice_conversion=True)

                case["cc3d_label_statistics_s"] = median_seconds(cc3d_way, args.repeat, sync)
                case["speedup_vs_cc3d"] = case["cc3d_label_statistics_s"] / case["lunakit_label_stats_s"]
        result["grouping"][name] = case

    # Crops: --crops centers inside the volume, the pipeline's 32 x 48 x 48.
    size = (32, 48, 48)
    centers = rng.uniform(0, np.array(shape) - 1, size=(args.crops, 3))
    centers_t = torch.from_numpy(centers).to(device)
    out_t = torch.empty((args.crops, 1, *size), device=device)
    crops = {"count": args.crops, "size_irc": list(size)}
    crops["lunakit_s"] = median_seconds(lambda: ops.extract_crops(hu_t, centers_t, size, out=out_t), args.repeat, sync)
    if not args.no_baselines:
        out_np = np.empty((args.crops, 1, *size), dtype=np.float32)
        crops["numpy_loop_s"] = median_seconds(lambda: book_crop_loop(hu, centers, size, out_np), args.repeat, sync)
        crops["speedup_vs_numpy"] = crops["numpy_loop_s"] / crops["lunakit_s"]
        crops["equal"] = bool(np.array_equal(out_np, out_t.cpu().numpy()))
    # The memory bound: one contiguous int16 -> float32 copy of as many voxels as the crops
    # hold (reads half, writes all of the output): no gather can beat it.
    flat_in = hu_t.flatten().repeat(-(-out_t.numel() // hu_t.numel()))[: out_t.numel()]  # volume may be smaller
    crops["contiguous_copy_s"] = median_seconds(lambda: out_t.view(-1).copy_(flat_in), args.repeat, sync)
    crops["fraction_of_copy_speed"] = crops["contiguous_copy_s"] / crops["lunakit_s"]
    result["crops"] = crops

    # Erosion of the dense mask.
    mask = dense_mask(rng, shape)
    mask_t = torch.from_numpy(mask).to(device)
    erosion = {"lunakit_s": median_seconds(lambda: ops.binary_erode(mask_t), args.repeat, sync)}
    if not args.no_baselines:
        erosion["scipy_s"] = median_seconds(lambda: ndi.binary_erosion(mask), args.repeat, sync)
        erosion["speedup_vs_scipy"] = erosion["scipy_s"] / erosion["lunakit_s"]
        erosion["equal"] = bool(np.array_equal(ndi.binary_erosion(mask), ops.binary_erode(mask_t).cpu().numpy()))
    result["erosion"] = erosion

    # Cores of the components of both masks.
    result["cores"] = {}
    for name, mask in (("sparse", sparse_mask(rng, shape)), ("dense", mask)):
        labels_np, count = ndi.label(mask)
        labels_t = torch.from_numpy(labels_np.astype(np.int32)).to(device)
        cores = {
            "components": count,
            "lunakit_s": median_seconds(lambda: ops.component_cores(labels_t, count), args.repeat, sync),
        }
        if not args.no_baselines:
            cores["scipy_s"] = median_seconds(lambda: scipy_cores(labels_np, count), args.repeat, sync)
            cores["speedup_vs_scipy"] = cores["scipy_s"] / cores["lunakit_s"]
            cores["equal"] = bool(
                np.array_equal(scipy_cores(labels_np, count), ops.component_cores(labels_t, count).cpu().numpy())
            )
        result["cores"][name] = cores

    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
