"""End-to-end analysis of one CT scan: segmentation -> grouping -> classification -> findings.

The steps and every number they use are docs/design.md's pipeline ("From a scan to findings");
the numbers live in one frozen `AnalysisOptions` (pipeline.options), which is saved with the
results and in every model bundle, so the Python and C++ runtimes run the same pipeline.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from lunakit.io import ct
from lunakit.io.ct import CtScan
from lunakit.pipeline import precision
from lunakit.pipeline.options import AnalysisError, AnalysisOptions, Finding, Models, Progress


def _check_scan(scan: CtScan, options: AnalysisOptions) -> None:
    hu = scan.hu
    if hu.ndim != 3:
        raise AnalysisError(f"{scan.path}: scan must be 3D [I, R, C], got shape {tuple(hu.shape)}")
    if hu.shape[0] < 2:
        raise AnalysisError(f"{scan.path}: scan has {hu.shape[0]} slice(s); at least 2 are needed")
    if options.crop_mode == "shift" and any(s < c for s, c in zip(hu.shape, options.crop_size)):
        raise AnalysisError(f"{scan.path}: scan of size {tuple(hu.shape)} is smaller than the crop {options.crop_size}")
    if np.issubdtype(hu.dtype, np.floating) and not np.isfinite(hu).all():
        raise AnalysisError(f"{scan.path}: scan contains NaN or infinite voxels")


def clipped_slab(hu: torch.Tensor, options: AnalysisOptions, start: int, stop: int) -> torch.Tensor:
    """Slices start - context .. stop - 1 + context (edges repeated) of hu, float32, HU clipped:
    [stop - start + 2 context, R, C]. Each slice of a batch's stacks is converted once, not once
    per stack that holds it."""
    context = options.context_slices
    index = torch.arange(start - context, stop + context, device=hu.device).clamp_(0, hu.shape[0] - 1)
    return hu.index_select(0, index).to(torch.float32).clamp_(options.hu_min, options.hu_max)


def stacks_channels_last(slab: torch.Tensor, context_slices: int) -> torch.Tensor:
    """The U-Net input [B, 2 context + 1, R, C] of a slab (stack b = slab slices b .. b + 2
    context) in channels-last memory, the layout oneDNN's convolutions run fastest in and the
    U-Net keeps end to end. The stacks overlap in the slab: one strided view of it, one copy."""
    channels = 2 * context_slices + 1
    batch = slab.shape[0] - 2 * context_slices
    plane = slab.shape[1] * slab.shape[2]
    stacks = slab.as_strided((batch, channels, slab.shape[1], slab.shape[2]), (plane, plane, slab.shape[2], 1))
    return stacks.contiguous(memory_format=torch.channels_last)


def slice_probability(
    hu: torch.Tensor, seg_model: torch.nn.Module, options: AnalysisOptions, start: int, stop: int
) -> torch.Tensor:
    """The segmenter's probability on slices start..stop-1, [stop - start, R, C] on hu's device.

    Slice i's input is slices i - context .. i + context (edge slices repeated), HU clipped to
    [hu_min, hu_max], float32: what the book's segmentation dataset feeds its U-Net.
    """
    stacks = stacks_channels_last(clipped_slab(hu, options, start, stop), options.context_slices)  # (B, 7, R, C)
    return seg_model(stacks)[:, 0]  # (B, R, C)


def segment(
    hu: torch.Tensor, seg_model: torch.nn.Module, options: AnalysisOptions, progress: Optional[Progress] = None
) -> torch.Tensor:
    """Per-slice nodule probability > threshold, as a bool mask [I, R, C] on hu's device.

    Slices go through the U-Net in batches of `seg_batch_size`, so memory stays bounded by one
    batch of 7-channel stacks, never the whole stack of a long scan. In fast mode (precision
    bf16) the batches run under bf16 autocast and the voxels that bf16 may have put on the wrong
    side of the threshold, where that can change the eroded mask, are computed again in fp32.
    """
    fast = precision.resolve(options.precision, hu.device) == "bf16"
    n_slices = hu.shape[0]
    mask = torch.empty(hu.shape, dtype=torch.bool, device=hu.device)
    near = torch.empty(hu.shape, dtype=torch.bool, device=hu.device) if fast else None
    for start in range(0, n_slices, options.seg_batch_size):
        stop = min(start + options.seg_batch_size, n_slices)
        if fast:
            with torch.autocast(hu.device.type, dtype=torch.bfloat16):
                prob = slice_probability(hu, seg_model, options, start, stop).float()
            near[start:stop] = (prob - options.seg_threshold).abs() < precision.SEG_MARGIN
        else:
            prob = slice_probability(hu, seg_model, options, start, stop)
        mask[start:stop] = prob > options.seg_threshold
        if progress is not None and not (fast and stop == n_slices):  # fast: done after the recheck
            progress("segment", stop, n_slices)
    if fast:
        recheck = precision.recheck_voxels(mask, near, options.erosion_iterations)
        del near
        recheck_in_fp32(hu, seg_model, options, mask, recheck)
        if progress is not None:
            progress("segment", n_slices, n_slices)
    return mask


def recheck_in_fp32(
    hu: torch.Tensor, seg_model: torch.nn.Module, options: AnalysisOptions, mask: torch.Tensor, recheck: torch.Tensor
) -> int:
    """Set mask's `recheck` voxels from the fp32 U-Net: each TILE x TILE square holding one runs
    as a window with the halo the U-Net needs to give its whole-slice output there
    (precision.tile_halo), windows batched to about seg_batch_size slices of pixels; whole
    slices where no halo does. Returns the number of windows run."""
    rows, cols = hu.shape[1], hu.shape[2]
    halo = precision.tile_halo(seg_model, options.context_slices, hu.device, rows, cols)
    if halo is None:
        tile, size_r, size_c, halo = max(rows, cols), rows, cols, 0
    else:
        tile, size_r, size_c = precision.TILE, precision.TILE + 2 * halo, precision.TILE + 2 * halo
    tiles = precision.recheck_tiles(recheck, tile).tolist()
    per_batch = max(1, options.seg_batch_size * rows * cols // (size_r * size_c))
    for first in range(0, len(tiles), per_batch):
        windows, places, stack_of = [], [], {}
        for i, r0, c0 in tiles[first : first + per_batch]:
            if i not in stack_of:
                stack_of = {i: clipped_slab(hu, options, i, i + 1)}  # (7, R, C): slice i's stack
            wr = precision.window_start(r0, halo, size_r, rows)
            wc = precision.window_start(c0, halo, size_c, cols)
            windows.append(stack_of[i][:, wr : wr + size_r, wc : wc + size_c])
            places.append((i, r0, c0, wr, wc))
        prob = seg_model(torch.stack(windows).contiguous(memory_format=torch.channels_last))[:, 0]
        for (i, r0, c0, wr, wc), p in zip(places, prob):
            r1, c1 = min(r0 + tile, rows), min(c0 + tile, cols)
            exact = p[r0 - wr : r1 - wr, c0 - wc : c1 - wc] > options.seg_threshold
            where = recheck[i, r0:r1, c0:c1]
            mask[i, r0:r1, c0:c1] = torch.where(where, exact, mask[i, r0:r1, c0:c1])
    return len(tiles)


def _positive_probability(model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """Probability of the positive class (index 1) for each crop, from the classifier optimized
    for the CPU (pipeline.loading.classifier_for_cpu) where it applies."""
    from lunakit.pipeline.loading import classifier_for_cpu

    _, probability = classifier_for_cpu(model)(crops)  # (B, 2)
    return probability[:, 1].to(torch.float64)


def _bf16_probability(model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """_positive_probability under bf16 autocast, from the model as it is (the CPU-optimized copy
    runs oneDNN's fp32 kernels, which autocast does not reach)."""
    with torch.autocast(crops.device.type, dtype=torch.bfloat16):
        _, probability = model(crops)
    return probability[:, 1].to(torch.float64)


Score = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def mirror_mean(score: Score, model: torch.nn.Module, crops: torch.Tensor, flips: bool) -> torch.Tensor:
    """score(model, crops), or with flips (the cls_flips option: test-time augmentation, the
    classifiers having trained with flip augmentation) its mean over the crops' 8 mirror images:
    mirror m flips spatial axis k (dim 2 + k) where bit k of m is set, summed in that order."""
    if not flips:
        return score(model, crops)
    total = torch.zeros(len(crops), dtype=torch.float64, device=crops.device)
    for mirror in range(8):
        dims = [2 + axis for axis in range(3) if mirror >> axis & 1]
        total += score(model, crops.flip(dims) if dims else crops)
    return total / 8.0


def classify_crops(
    crops: torch.Tensor, models: Models, options: AnalysisOptions
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One batch of clipped crops [B, 1, 32, 48, 48] -> (p_nodule [B], p_malignant [B] or None).

    p_malignant is NaN where the malignancy model did not run (malignancy_on "nodules": only
    crops above nodule_threshold). float64, on the crops' device. In fast mode every crop is
    scored in bf16 first and those above nodule_threshold - precision.CLS_MARGIN again in fp32
    (both classifiers), so every p_nodule near or above the threshold is fp32's. With cls_flips
    every score is its mirror_mean.
    """
    flips = options.cls_flips
    fast = precision.resolve(options.precision, crops.device) == "bf16"
    exact = torch.ones(len(crops), dtype=torch.bool, device=crops.device)
    if fast:
        p_nodule = mirror_mean(_bf16_probability, models.cls, crops, flips)
        exact = p_nodule > options.nodule_threshold - precision.CLS_MARGIN
        again = torch.nonzero(exact).flatten()
        if again.numel():
            p_nodule[again] = mirror_mean(_positive_probability, models.cls, crops[again], flips)
    else:
        p_nodule = mirror_mean(_positive_probability, models.cls, crops, flips)
    if models.mal is None:
        return p_nodule, None
    p_malignant = torch.full_like(p_nodule, float("nan"))
    chosen = torch.ones(len(crops), dtype=torch.bool, device=crops.device)
    if options.malignancy_on == "nodules":
        chosen = p_nodule > options.nodule_threshold
    for subset, score in ((chosen & exact, _positive_probability), (chosen & ~exact, _bf16_probability)):
        index = torch.nonzero(subset).flatten()
        if index.numel():
            p_malignant[index] = mirror_mean(score, models.mal, crops[index], flips)
    return p_nodule, p_malignant


def classify(
    hu: torch.Tensor,
    centers_irc: torch.Tensor,
    models: Models,
    options: AnalysisOptions,
    progress: Optional[Progress] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """p_nodule and p_malignant (NaN where not computed; None without a malignancy model).

    Crops are cut batch by batch, so memory holds one batch of crops, never all of them.
    """
    from lunakit.pipeline import ops

    count = centers_irc.shape[0]
    p_nodule = torch.empty(count, dtype=torch.float64, device=hu.device)
    p_malignant = None
    if models.mal is not None:
        p_malignant = torch.full((count,), float("nan"), dtype=torch.float64, device=hu.device)
    for start in range(0, count, options.cls_batch_size):
        stop = min(start + options.cls_batch_size, count)
        crops = ops.extract_crops(
            hu,
            centers_irc[start:stop],
            size=options.crop_size,
            mode=options.crop_mode,
            fill=options.hu_min,
            clip=(options.hu_min, options.hu_max),
        )  # (B, 1, 32, 48, 48)
        nodule, malignant = classify_crops(crops, models, options)
        p_nodule[start:stop] = nodule
        if p_malignant is not None:
            p_malignant[start:stop] = malignant
        if progress is not None:
            progress("classify", stop, count)
    return p_nodule, p_malignant


@torch.inference_mode()
def analyze(
    scan: CtScan,
    models: Models,
    options: AnalysisOptions = AnalysisOptions(),
    device: str | torch.device = "cpu",
    progress: Optional[Progress] = None,
) -> list[Finding]:
    """Turn one CT scan into findings sorted by p_nodule (highest first)."""
    return _analyze(scan, models, options, device, progress, keep_mask=False)[0]


@torch.inference_mode()
def analyze_with_mask(
    scan: CtScan,
    models: Models,
    options: AnalysisOptions = AnalysisOptions(),
    device: str | torch.device = "cpu",
    progress: Optional[Progress] = None,
) -> tuple[list[Finding], Callable[[], np.ndarray]]:
    """analyze(), plus the voxels of the findings' components (for a DICOM SEG,
    io/dicom_results.py): the second value, called, gives their union as a bool mask [I, R, C]."""
    findings, mask_of_findings = _analyze(scan, models, options, device, progress, keep_mask=True)
    assert mask_of_findings is not None
    return findings, mask_of_findings


def _analyze(
    scan: CtScan,
    models: Models,
    options: AnalysisOptions,
    device: str | torch.device,
    progress: Optional[Progress],
    keep_mask: bool,
) -> tuple[list[Finding], Optional[Callable[[], np.ndarray]]]:
    """The pipeline. The component labels (4 bytes a voxel) outlive grouping only with keep_mask.
    With options.resample_mm it runs on the resampled scan and reports in the given scan's grid."""
    _check_scan(scan, options)
    if options.resample_mm is not None:
        analyzed = ct.resampled(scan, options.resample_mm)
        findings, mask_of_findings = _analyze(
            analyzed, models, dataclasses.replace(options, resample_mm=None), device, progress, keep_mask
        )
        ratio = np.asarray(analyzed.geometry.spacing_xyz[::-1]) / np.asarray(scan.geometry.spacing_xyz[::-1])
        findings = [_in_source_grid(f, ratio, scan.size_irc) for f in findings]
        if mask_of_findings is not None:
            mask_of_findings = _nearest_in_source_grid(mask_of_findings, ratio, scan.size_irc)
        return findings, mask_of_findings
    device = torch.device(device)
    options = dataclasses.replace(options, precision=precision.resolve(options.precision, device, models.compiled))
    hu = torch.from_numpy(np.ascontiguousarray(scan.hu)).to(device)  # (I, R, C) int16

    with precision.true_fp32(device):
        mask = segment(hu, models.seg, options, progress)
    spacing_irc = scan.geometry.spacing_xyz[::-1]
    stats, labels = group_with_labels(hu, mask, options, spacing_irc)
    stats["label"] = torch.arange(1, len(stats["voxel_count"]) + 1, device=device)
    stats = _large_enough(stats, scan, options.min_diameter_mm)
    stats = _near_lungs(stats, hu, spacing_irc, options.lung_margin_mm)
    kept = stats.pop("label")
    mask_of_findings = _union_of(labels, kept) if keep_mask else None
    del labels

    if progress is not None:
        progress("group", 1, 1)
    if stats["voxel_count"].numel() == 0:
        return [], mask_of_findings
    if models.cls is None:  # candidates only: findings unscored (p_nodule NaN), in raster order
        p_nodule = torch.full(stats["voxel_count"].shape, float("nan"), dtype=torch.float64, device=device)
        p_malignant = None
    else:
        with precision.true_fp32(device):
            p_nodule, p_malignant = classify(hu, stats["center_irc"], models, options, progress)
    return _findings(scan, stats, p_nodule, p_malignant), mask_of_findings


def _in_source_grid(finding: Finding, ratio: np.ndarray, size_irc: tuple[int, int, int]) -> Finding:
    """A finding of the resampled grid in the scan's own indices, as lunakit::to_source_grid maps
    it: center scaled, bounding box widened to the voxels it touches; voxel_count unchanged."""
    low, high = finding.bbox_irc
    return dataclasses.replace(
        finding,
        center_irc=tuple(float(v * k) for v, k in zip(finding.center_irc, ratio)),
        bbox_irc=(
            tuple(int(math.floor(v * k)) for v, k in zip(low, ratio)),
            tuple(min(n - 1, int(math.ceil(v * k))) for v, k, n in zip(high, ratio, size_irc)),
        ),
    )


def _nearest_in_source_grid(
    mask_of: Callable[[], np.ndarray], ratio: np.ndarray, size_irc: tuple[int, int, int]
) -> Callable[[], np.ndarray]:
    """The findings' mask of the resampled grid read at the scan's own voxels (nearest sample)."""

    def mask() -> np.ndarray:
        analyzed = mask_of()
        index = [
            np.clip(np.rint(np.arange(n) / k).astype(np.int64), 0, m - 1)
            for n, k, m in zip(size_irc, ratio, analyzed.shape)
        ]
        return analyzed[np.ix_(*index)]

    return mask


def _union_of(labels: torch.Tensor, kept: torch.Tensor) -> Callable[[], np.ndarray]:
    """A function giving the voxels of the `kept` components as a bool mask, computed when called."""
    return lambda: torch.isin(labels, kept).cpu().numpy()


def group(
    hu: torch.Tensor, mask: torch.Tensor, options: AnalysisOptions, spacing_irc: Sequence[float]
) -> dict[str, torch.Tensor]:
    """group_with_labels() without the labels."""
    return group_with_labels(hu, mask, options, spacing_irc)[0]


def group_with_labels(
    hu: torch.Tensor, mask: torch.Tensor, options: AnalysisOptions, spacing_irc: Sequence[float]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Erode the nodule mask, label its components and measure them (ops.component_stats).

    Centers are weighted by clip(HU) + 1 - hu_min. With center_mode "core" or "core3d" a center
    is the weighted center of the component's core (ops.component_cores: greatest in-plane
    depth, or greatest 3D depth in mm at the grid's spacing_irc) instead of all its voxels, so a
    nodule merged with a vessel, the pleura or the diaphragm keeps its center on the nodule.
    """
    from lunakit.pipeline import ops

    for _ in range(options.erosion_iterations):
        mask = ops.binary_erode(mask)
    labels, count = ops.label_components(mask, connectivity=options.connectivity)
    weights = hu.to(torch.float32).clamp(options.hu_min, options.hu_max) + (1.0 - options.hu_min)
    stats = ops.component_stats(labels, count, weights=weights)
    if options.center_mode != "mass" and count > 0:
        spacing = spacing_irc if options.center_mode == "core3d" else None
        core_labels = torch.where(ops.component_cores(labels, count, spacing), labels, 0)
        stats["center_irc"] = ops.component_stats(core_labels, count, weights=weights)["center_irc"]
    return stats, labels


def _large_enough(stats: dict[str, torch.Tensor], scan: CtScan, min_diameter_mm: float) -> dict[str, torch.Tensor]:
    """The components whose equal-volume diameter reaches min_diameter_mm (compared as volumes,
    count x voxel volume >= pi / 6 x d^3, exactly as the C++ runtime does). Erosion leaves
    specks of a voxel or two beside vessels and nodules; LUNA16 counts nodules from 3 mm."""
    if min_diameter_mm <= 0.0:
        return stats
    sx, sy, sz = (float(v) for v in scan.geometry.spacing_xyz)
    voxel_volume_mm3 = sx * sy * sz
    d = float(min_diameter_mm)
    keep = stats["voxel_count"].to(torch.float64) * voxel_volume_mm3 >= math.pi / 6.0 * d * d * d
    return _rows(stats, keep)


def _near_lungs(
    stats: dict[str, torch.Tensor], hu: torch.Tensor, spacing_irc: Sequence[float], margin_mm: Optional[float]
) -> dict[str, torch.Tensor]:
    """With lung_margin_mm, the components whose center lies within it of the lung field
    (ops.lung_field), as the C++ runtime keeps them; all of them where the scan shows no lung
    field. Gas in the bowel below the diaphragm is nothing the classifiers trained on."""
    from lunakit.pipeline import ops

    if margin_mm is None or len(stats["voxel_count"]) == 0:
        return stats
    lungs = ops.lung_field(hu)
    if not bool(lungs.any()):
        return stats
    return _rows(stats, ops.near_mask(lungs, stats["center_irc"], spacing_irc, margin_mm))


def _rows(stats: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The components where keep (bool [K]) holds, in every statistic."""
    return {name: value[keep] for name, value in stats.items()}


def _findings(
    scan: CtScan, stats: dict[str, torch.Tensor], p_nodule: torch.Tensor, p_malignant: Optional[torch.Tensor]
) -> list[Finding]:
    centers_irc = stats["center_irc"].cpu().numpy()
    centers_xyz = scan.geometry.irc_to_xyz(centers_irc)
    voxel_volume_mm3 = float(np.prod(scan.geometry.spacing_xyz))
    counts = stats["voxel_count"].cpu().numpy()
    bbox_min = stats["bbox_min"].cpu().numpy()
    bbox_max = stats["bbox_max"].cpu().numpy()
    p_nod = p_nodule.cpu().numpy()
    p_mal = None if p_malignant is None else p_malignant.cpu().numpy()
    findings = []
    for k in range(len(counts)):
        volume_mm3 = float(counts[k]) * voxel_volume_mm3
        mal = None if p_mal is None or math.isnan(p_mal[k]) else float(p_mal[k])
        findings.append(
            Finding(
                center_xyz=tuple(float(v) for v in centers_xyz[k]),
                center_irc=tuple(float(v) for v in centers_irc[k]),
                voxel_count=int(counts[k]),
                bbox_irc=(tuple(int(v) for v in bbox_min[k]), tuple(int(v) for v in bbox_max[k])),
                diameter_mm=(6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0),
                p_nodule=float(p_nod[k]),
                p_malignant=mal,
            )
        )
    # Stable sort: equal scores keep the components' raster order.
    findings.sort(key=lambda f: -f.p_nodule)
    return findings
