"""Fast mode's rules (precision "bf16", docs/pipeline.md "Fast mode"): which precision runs, and
which voxels and crops bf16 may have decided wrongly, so that they are computed again in fp32.

bf16 moves the U-Net's probability by up to ~0.9 on a few voxels and the classifier's by ~0.03.
The rechecks make the findings those of fp32 where it matters: a mask voxel whose bf16
probability lies within SEG_MARGIN of seg_threshold and can change the eroded mask, and a
candidate whose bf16 p_nodule exceeds nodule_threshold - CLS_MARGIN, get their fp32 values.
The C++ runtime (cpp/src/analyzer.cpp) uses the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref
from typing import Iterator, Optional

import torch

from lunakit import _core
from lunakit.errors import LunakitError
from lunakit.pipeline import ops
from lunakit.pipeline.options import AnalysisOptions

SEG_MARGIN = 0.45  # |p_bf16 - seg_threshold| below this: the voxel may be on either side in fp32
CLS_MARGIN = 0.4  # p_nodule_bf16 above nodule_threshold - this: the crop is scored again in fp32
TILE = 32  # side of the squares of a slice recomputed in fp32 (with a halo around them)
HALOS = (24, 32, 48, 64)  # halos tried, smallest first; the U-Net's must give its exact output
PRECISIONS = ("fp32", "bf16", "auto")
COMPILED_FP32 = "a compiled bundle (AOTInductor, ONNX) runs in fp32; fast mode needs a TorchScript bundle"


def check(precision: str, what: str = "precision") -> str:
    """`precision` if it is one of PRECISIONS; else LunakitError "<what> <value>: must be ..." (the
    C++ Analyzer's message)."""
    if precision not in PRECISIONS:
        raise LunakitError(f"{what} {precision}: must be 'fp32', 'bf16' or 'auto'")
    return precision


def with_precision(
    options: AnalysisOptions,
    requested: Optional[str],
    device: torch.device,
    what: str = "--precision",
    compiled: bool = False,
) -> AnalysisOptions:
    """`options` running at `requested` (None: their own precision), "auto" resolved for `device`:
    what a command runs and what its findings.json records. `compiled` models (AOTInductor) run
    in fp32 whatever is asked: "auto" resolves to fp32 for them and "bf16" is refused."""
    value = options.precision if requested is None else check(requested, what)
    return dataclasses.replace(options, precision=resolve(value, torch.device(device), compiled, what))


@contextlib.contextmanager
def true_fp32(device: torch.device) -> Iterator[None]:
    """fp32 that is fp32 on a GPU too: cuDNN and cuBLAS may otherwise run fp32 convolutions and
    matmuls in TF32 (10-bit mantissa), which exact mode cannot allow. Restored on exit."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU of compute capability >= 8.0, or a CPU
    with AVX-512 BF16 or AMX-BF16 (lunakit::native_bf16, the C++ runtime's rule)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return _cpu_native_bf16()


def resolve(precision: str, device: torch.device, compiled: bool = False, what: str = "precision") -> str:
    """The precision that runs: "fp32" or "bf16" ("auto": bf16 where native_bf16, else fp32).
    Compiled (AOTInductor) models: fp32, and LunakitError for "bf16" (lunakit::Analyzer's rule)."""
    if compiled:
        if precision == "bf16":
            raise LunakitError(f"{what} bf16: {COMPILED_FP32}")
        return "fp32"
    if precision == "auto":
        return "bf16" if native_bf16(torch.device(device)) else "fp32"
    return precision


def dilate(mask: torch.Tensor) -> torch.Tensor:
    """Binary dilation of a 3D bool mask by the 6-connected cross (the erosion's element)."""
    out = mask.clone()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def recheck_voxels(mask: torch.Tensor, near: torch.Tensor, erosion_iterations: int) -> torch.Tensor:
    """The voxels whose fp32 value can change the eroded mask: near-threshold voxels (`near`)
    within reach of an eroded voxel that the near voxels leave undecided.

    An eroded voxel is decided when the sure voxels alone fix it: eroding the sure positives
    and eroding sure positives plus near voxels agree there. Only the eroded mask reaches the
    findings (components, centers, crops), so near voxels elsewhere keep their bf16 side."""
    sure = mask & ~near
    lower, upper = sure, sure | near
    for _ in range(erosion_iterations):
        lower, upper = ops.binary_erode(lower), ops.binary_erode(upper)
    undecided = upper & ~lower
    del lower, upper
    for _ in range(erosion_iterations):
        undecided = dilate(undecided)
    return near & undecided


def recheck_tiles(recheck: torch.Tensor, tile: int) -> torch.Tensor:
    """(slice, row, col) of the first voxel of each tile x tile square holding a voxel to
    recheck, in raster order: CPU int64 [N, 3]."""
    index = torch.nonzero(recheck)
    keys = torch.stack([index[:, 0], index[:, 1] // tile, index[:, 2] // tile], 1)
    keys = torch.unique(keys, dim=0)
    keys[:, 1:] *= tile
    return keys.cpu()


def window_start(first: int, halo: int, size: int, length: int) -> int:
    """Where a window of `size` starts that holds a tile starting at `first` with `halo` voxels
    on each side, kept inside [0, length) (at the edge the image's own border takes the halo's
    place)."""
    return min(max(first - halo, 0), length - size)


# seg model -> {(context, rows % TILE, cols % TILE, device): halo or None}
_HALOS: "weakref.WeakKeyDictionary[object, dict[tuple, Optional[int]]]" = weakref.WeakKeyDictionary()


def tile_halo(
    seg_model: torch.nn.Module, context_slices: int, device: torch.device, rows: int, cols: int
) -> Optional[int]:
    """The smallest halo of HALOS with which the U-Net's fp32 output on a window equals its
    output on the whole slice inside the tile (so a tile's recheck is exact fp32), or None
    (recheck whole slices). Probed once per model and image-size class on random HU: a window
    inside the probe image and one at its far corner, whose pooling grid sits as it will in a
    rows x cols slice."""
    key = (context_slices, rows % TILE, cols % TILE, str(device))
    try:
        cache = _HALOS.setdefault(seg_model, {})
    except TypeError:  # not weak-referenceable: probe every time
        cache = {}
    if key not in cache:
        cache[key] = _probe_halo(seg_model, context_slices, device, rows, cols)
    return cache[key]


def _probe_halo(seg_model, context_slices: int, device: torch.device, rows: int, cols: int) -> Optional[int]:
    size_r, size_c = 3 * 64 + rows % TILE, 3 * 64 + cols % TILE
    generator = torch.Generator().manual_seed(0)
    channels = 2 * context_slices + 1
    image = torch.rand((1, channels, size_r, size_c), generator=generator) * 2000.0 - 1000.0
    image = image.to(device).contiguous(memory_format=torch.channels_last)
    try:
        whole = seg_model(image)[0, 0]
        for halo in HALOS:
            size = TILE + 2 * halo
            if size > min(rows, cols, size_r, size_c) or 64 - halo < 0:
                return None
            corners = [(64 - halo, 64 - halo), (size_r - size, size_c - size)]
            windows = torch.cat([image[:, :, r : r + size, c : c + size] for r, c in corners])
            out = seg_model(windows.contiguous(memory_format=torch.channels_last))[:, 0]
            tiles = [(64, 64), (size_r - TILE, size_c - TILE)]
            if all(  # equal up to rounding (another shape may take another convolution algorithm)
                torch.allclose(
                    out[k, r - wr : r - wr + TILE, c - wc : c - wc + TILE],
                    whole[r : r + TILE, c : c + TILE],
                    rtol=0.0,
                    atol=1e-5,
                )
                for k, ((r, c), (wr, wc)) in enumerate(zip(tiles, corners))
            ):
                return halo
    except Exception:  # a model of fixed input size (an AOTInductor or ONNX export), whatever it raises
        return None
    return None


@functools.lru_cache(maxsize=None)
def _cpu_native_bf16() -> bool:
    return bool(_core.native_bf16("cpu"))


def tolerance(exact: list, fast: list, threshold: float, distance_mm: float = 0.5) -> dict:
    """How fast-mode findings hold against exact ones (lists of Finding, or findings.json records):
    `matched` (fraction of exact candidates with a fast one within distance_mm, one-to-one,
    nearest first, positives choosing first), `positives` (exact ones above threshold),
    `max_dp_positives` (largest |p_nodule difference| over them; inf when one is unmatched) and
    `new_positives` (fast ones above threshold without an exact positive matched to them), and
    `holds`: fast mode's promise, matched >= 0.99, max_dp_positives < 0.01, new_positives == 0."""
    import numpy as np

    def center_and_p(f) -> tuple:
        if isinstance(f, dict):
            return f["center_xyz"], f["p_nodule"]
        return f.center_xyz, f.p_nodule

    e_xyz, e_p = (np.array(v, dtype=np.float64) for v in zip(*map(center_and_p, exact))) if exact else (None, None)
    f_xyz, f_p = (np.array(v, dtype=np.float64) for v in zip(*map(center_and_p, fast))) if fast else (None, None)
    n_exact = len(exact)
    taken = np.zeros(len(fast), dtype=bool)
    partner = np.full(n_exact, -1)
    for k in np.argsort(-e_p, kind="stable") if n_exact else []:
        if not len(fast):
            break
        d = np.linalg.norm(f_xyz - e_xyz[k], axis=1)
        d[taken] = np.inf
        j = int(np.argmin(d))
        if d[j] <= distance_mm:
            partner[k], taken[j] = j, True
    positives = [k for k in range(n_exact) if e_p[k] > threshold]
    dps = [abs(f_p[partner[k]] - e_p[k]) if partner[k] >= 0 else float("inf") for k in positives]
    exact_positive_of = {int(partner[k]) for k in positives if partner[k] >= 0}
    new = [j for j in range(len(fast)) if f_p[j] > threshold and j not in exact_positive_of]
    matched = float((partner >= 0).sum() / n_exact) if n_exact else 1.0
    max_dp = float(max(dps)) if dps else 0.0
    return {
        "candidates_exact": n_exact,
        "candidates_fast": len(fast),
        "matched": matched,
        "positives": len(positives),
        "max_dp_positives": max_dp,
        "new_positives": len(new),
        "holds": bool(matched >= 0.99 and max_dp < 0.01 and not new),
    }
