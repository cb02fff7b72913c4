"""Crops per second of the classification data path, against the book's way of reading crops.

Makes a phantom LUNA16 folder (lunakit.synth) in a temporary directory, caches it
(lunakit.io.cache), then times:

  dataset_workers   ClassificationDataset through a DataLoader with --workers workers
                    (memory-mapped int16 volumes, crops cut by lunakit.pipeline.ops.extract_crops)
  dataset_workers_batch_loader  the same through lunakit.data.batch_loader (each worker
                    call cuts a whole batch straight into shared memory: no collate copy)
  dataset_workers_batch_loader_int16  the same with int16 crops (crop_dtype=torch.int16:
                    the same clipped HU in half the shared memory)
  dataset_inprocess the same dataset read in this process (num_workers=0)
  book_gzip         the book's cache: each crop stored pickled and gzip-compressed
                    (diskcache + GzipDisk), read back per item with decompress + unpickle
  book_sitk         no cache at all: SimpleITK reads the .mhd for each crop (a few only)

and prints one JSON object. Run: .venv/bin/python benchmarks/bench_data.py [--help]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from lunakit.data import ClassificationDataset, batch_loader
from lunakit.io.cache import VolumeCache, prepcache
from lunakit.io.luna import find_scans, load_candidates
from lunakit.synth import make_dataset

CROP = (32, 48, 48)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rate_dataloader(
    ds: ClassificationDataset, batch_size: int, workers: int, batched: bool = False
) -> dict[str, float]:
    """Crops/s through a DataLoader: steady state (from the first batch on), cold (with
    start-up), and per CPU-second of all processes involved (less sensitive to other load).
    batched: lunakit.data.batch_loader (whole batches per worker call) instead of a plain DataLoader."""
    if batched:
        loader = batch_loader(ds, batch_size, num_workers=workers)
    else:
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t1 = time.perf_counter()
    n = 0
    for batch in it:
        n += batch[0].shape[0]
    t2 = time.perf_counter()
    del it  # joins the workers, so their CPU time is counted
    cpu = cpu_seconds() - cpu0
    total = n + first[0].shape[0]
    return {
        "crops_per_s": n / (t2 - t1),
        "crops_per_s_with_startup": total / (t2 - t0),
        "crops_per_cpu_s": total / cpu,
        "crops": total,
    }


def book_gzip_store(ds: ClassificationDataset, cache: VolumeCache, count: int, folder: Path) -> list[Path]:
    """Write `count` crops the way the book's disk cache holds them: pickled int16, gzip level 1."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        cand = ds.candidate_at(k)
        scan = cache.get(cand.series_uid)
        center = scan.geometry.xyz_to_irc(np.array(cand.center_xyz))
        start = np.clip(np.rint(center - np.array(CROP) / 2).astype(int), 0, np.array(scan.hu.shape) - CROP)
        chunk = np.array(
            scan.hu[start[0] : start[0] + CROP[0], start[1] : start[1] + CROP[1], start[2] : start[2] + CROP[2]]
        )
        path = folder / f"{k}.pkl.gz"
        path.write_bytes(gzip.compress(pickle.dumps((chunk, center, cand.series_uid)), compresslevel=1))
        paths.append(path)
    return paths


def rate_book_gzip(paths: list[Path]) -> dict[str, float]:
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for path in paths:
        chunk, center, uid = pickle.loads(gzip.decompress(path.read_bytes()))
        crop = torch.from_numpy(chunk).to(torch.float32).clamp_(-1000, 1000).unsqueeze(0)
        assert crop.shape == (1, *CROP)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"crops_per_s": len(paths) / wall, "crops_per_cpu_s": len(paths) / cpu}


def rate_book_sitk(ds: ClassificationDataset, scans: dict[str, Path], count: int) -> float:
    import SimpleITK as sitk

    t0 = time.perf_counter()
    for k in range(count):
        cand = ds.candidate_at(k)
        image = sitk.ReadImage(str(scans[cand.series_uid]))
        hu = sitk.GetArrayFromImage(image)
        origin, spacing = np.array(image.GetOrigin()), np.array(image.GetSpacing())
        direction = np.array(image.GetDirection()).reshape(3, 3)
        cri = np.linalg.solve(direction, np.array(cand.center_xyz) - origin) / spacing
        center = cri[::-1]
        start = np.clip(np.rint(center - np.array(CROP) / 2).astype(int), 0, np.array(hu.shape) - CROP)
        chunk = hu[start[0] : start[0] + CROP[0], start[1] : start[1] + CROP[1], start[2] : start[2] + CROP[2]]
        torch.from_numpy(np.ascontiguousarray(chunk)).to(torch.float32).clamp_(-1000, 1000)
    return count / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=4, help="phantom scans (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 256, 256), metavar=("I", "R", "C"))
    parser.add_argument("--crops", type=int, default=20_000, help="crops per timed DataLoader epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-crops", type=int, default=2_000, help="crops read the book's gzip way")
    parser.add_argument("--sitk-crops", type=int, default=8, help="crops read by SimpleITK per crop")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    # One thread per process, as DataLoader workers run: in-process numbers then compare
    # like with like, and OpenMP threads do not spin against the workers on a small machine.
    torch.set_num_threads(1)

    work = args.keep or Path(tempfile.mkdtemp(prefix="lunakit-bench-data-"))
    try:
        t0 = time.perf_counter()
        root = work / "luna"
        if not (root / "synth.json").is_file():  # --keep reuses a folder made before
            make_dataset(root, n_scans=args.scans, seed=2024, shape=tuple(args.shape))
        cache_dir = work / "cache"
        prepcache(root, cache_dir, progress=False)
        setup_s = time.perf_counter() - t0
        cache = VolumeCache(cache_dir)
        candidates = load_candidates(root)
        ds = ClassificationDataset(cache, candidates, ratio=1, epoch_size=args.crops, seed=0)

        load_start = os.getloadavg()[0]
        rate_dataloader(ds, args.batch_size, 0)  # warm the page cache
        workers = rate_dataloader(ds, args.batch_size, args.workers)
        workers_batched = rate_dataloader(ds, args.batch_size, args.workers, batched=True)
        ds_int16 = ClassificationDataset(
            cache, candidates, ratio=1, epoch_size=args.crops, seed=0, crop_dtype=torch.int16
        )
        workers_int16 = rate_dataloader(ds_int16, args.batch_size, args.workers, batched=True)
        ds_small = ClassificationDataset(cache, candidates, ratio=1, epoch_size=min(args.crops, 5_000), seed=0)
        inprocess = rate_dataloader(ds_small, args.batch_size, 0)

        paths = book_gzip_store(ds, cache, min(args.baseline_crops, len(ds)), work / "book_gzip")
        rate_book_gzip(paths[:50])  # warm
        gzip_rate = rate_book_gzip(paths)
        gz_bytes = sum(p.stat().st_size for p in paths) / len(paths)
        sitk_rate = rate_book_sitk(ds, find_scans(root), args.sitk_crops) if args.sitk_crops > 0 else None

        result = {
            "benchmark": "classification data path",
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
            "torch": torch.__version__,
            "torch_threads_per_process": torch.get_num_threads(),
            "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
            "phantom": {
                "scans": args.scans,
                "shape_irc": list(args.shape),
                "candidates": len(candidates),
                "setup_s": round(setup_s, 1),
            },
            "crop_size": list(CROP),
            "batch_size": args.batch_size,
            "dataset_workers": {"workers": args.workers, **{k: round(v, 1) for k, v in workers.items()}},
            "dataset_workers_batch_loader": {
                "workers": args.workers,
                **{k: round(v, 1) for k, v in workers_batched.items()},
            },
            "dataset_workers_batch_loader_int16": {
                "workers": args.workers,
                **{k: round(v, 1) for k, v in workers_int16.items()},
            },
            "dataset_inprocess": {k: round(v, 1) for k, v in inprocess.items()},
            "book_gzip": {
                **{k: round(v, 1) for k, v in gzip_rate.items()},
                "crops": len(paths),
                "bytes_per_crop": int(gz_bytes),
            },
            "book_sitk": None if sitk_rate is None else {"crops_per_s": round(sitk_rate, 2), "crops": args.sitk_crops},
            "ratio_workers_vs_book_gzip": round(workers["crops_per_s"] / gzip_rate["crops_per_s"], 2),
            "ratio_batch_loader_vs_book_gzip": round(workers_batched["crops_per_s"] / gzip_rate["crops_per_s"], 2),
            "ratio_batch_loader_int16_vs_book_gzip": round(workers_int16["crops_per_s"] / gzip_rate["crops_per_s"], 2),
            "ratio_inprocess_vs_book_gzip": round(inprocess["crops_per_s"] / gzip_rate["crops_per_s"], 2),
            "ratio_per_cpu_s_inprocess_vs_book_gzip": round(
                inprocess["crops_per_cpu_s"] / gzip_rate["crops_per_cpu_s"], 2
            ),
            "ratio_inprocess_vs_book_sitk": None
            if sitk_rate is None
            else round(inprocess["crops_per_s"] / sitk_rate, 1),
            "goal_crops_per_s": 2000,
            "goal_met": {
                "plain_dataloader": workers["crops_per_s"] > 2000,
                "batch_loader": workers_batched["crops_per_s"] > 2000,
                "batch_loader_int16": workers_int16["crops_per_s"] > 2000,
            },
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
