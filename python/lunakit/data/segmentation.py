"""Slice stacks and nodule masks for the segmentation U-Net.

The target is the book's positive mask: LUNA16 annotates nodules as center points, so
from each annotated center (rounded to a voxel) a box is grown along each axis while the
voxels at +-radius are both above -700 HU (index, row and column radii found separately,
starting at radius 2 as the book does, stopping at the first voxel <= -700 or at the edge
of the volume), and the mask keeps the voxels above -700 HU inside the union of boxes.

A mask is held as its boxes (a few kilobytes per scan, not a full volume), computed once
per series when a dataset is built; workers receive them with the dataset.

Inputs are stacks of 2 * context + 1 slices (i - 3 .. i + 3 by default; slices past the
ends of the volume repeat the edge slice), HU clipped to [-1000, 1000], float32 [7, R, C].
Items are `(stack, label, series_uid, slice_index)` with label the mask of the center
slice, bool [1, R, C].

Training (`SegmentationTrainDataset`): 64 x 64 windows around nodules: one sample per
(nodule, slice of that nodule's box holding mask voxels), window centered on the nodule's
(row, column) plus a random shift of up to `jitter` pixels (the book's random 64 x 64 crop
of a 96 x 96 window is jitter 16), moved inside the slice where it would leave it. With
`negatives` > 0 that fraction of each epoch's windows is centered instead on non-nodule
candidates (vessels, chest wall, ...), labeled by the same mask (mostly empty there): the
book trains on nodule windows only, and its U-Net then marks much of the lung's soft tissue,
which merges nodules with vessels and moves their centers. Non-nodule candidates on an
irrelevant finding (`irrelevant`, annotations_excluded.csv: calcified specks, nodules under
3 mm) make no negative window: LUNA16 scoring ignores them, and teaching the U-Net to erase
them teaches it to erase calcified and 3-4 mm nodules, which look the same.
Validation (`SegmentationValDataset`): whole slices that hold mask voxels (any slice size;
batch them with batch_size=1 or scans of one size).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lunakit.data.epoch import EpochOrdered
from lunakit.data.loader import in_worker, stack_into_batch
from lunakit.data.volumes import DataError, VolumeSource
from lunakit.io.geometry import Geometry
from lunakit.io.luna import CandidateInfo, ExcludedFinding

MASK_THRESHOLD_HU = -700.0
CONTEXT_SLICES = 3
HU_CLIP = (-1000.0, 1000.0)
CROP_SIZE_RC = (64, 64)


def off_irrelevant_findings(
    candidates: Sequence[CandidateInfo], irrelevant: Sequence[ExcludedFinding]
) -> list[CandidateInfo]:
    """The candidates whose center lies inside no irrelevant finding of their series, by the
    LUNA16 evaluation's own rule (lunakit.evaluation.froc: squared distance < (diameter / 2)^2,
    unknown diameter = 10 mm)."""
    from lunakit.evaluation.froc import radius_squared, sphere_hits

    findings: dict[str, list[ExcludedFinding]] = {}
    for f in irrelevant:
        findings.setdefault(f.series_uid, []).append(f)
    rows: dict[str, list[int]] = {}
    for k, c in enumerate(candidates):
        rows.setdefault(c.series_uid, []).append(k)
    keep = np.ones(len(candidates), dtype=bool)
    for uid, fs in findings.items():
        if uid not in rows:
            continue
        centers = np.array([candidates[k].center_xyz for k in rows[uid]], dtype=np.float64)
        r2 = radius_squared(np.array([-1.0 if f.diameter_mm is None else f.diameter_mm for f in fs]))
        inside = sphere_hits(centers, np.array([f.center_xyz for f in fs], dtype=np.float64), r2).any(axis=1)
        keep[np.asarray(rows[uid])[inside]] = False
    return [c for c, k in zip(candidates, keep) if k]


@dataclass(frozen=True, eq=False)
class MaskBox:
    """One nodule's box: start_irc (inclusive), the center it was grown from, and the mask
    (HU above threshold) inside the box, bool [di, dr, dc]."""

    start_irc: tuple[int, int, int]
    center_irc: tuple[int, int, int]
    mask: np.ndarray

    @property
    def stop_irc(self) -> tuple[int, int, int]:
        return tuple(s + n for s, n in zip(self.start_irc, self.mask.shape))  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class PositiveMask:
    """The union of a scan's nodule boxes, without storing the full volume."""

    shape: tuple[int, int, int]
    boxes: tuple[MaskBox, ...]

    def dense(self) -> np.ndarray:
        """bool [I, R, C]."""
        out = np.zeros(self.shape, dtype=bool)
        for box in self.boxes:
            (i0, r0, c0), (i1, r1, c1) = box.start_irc, box.stop_irc
            out[i0:i1, r0:r1, c0:c1] |= box.mask
        return out

    def region(self, slice_index: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """bool [r1 - r0, c1 - c0]: the mask of one slice inside a row/column window."""
        (r0, r1), (c0, c1) = rows, cols
        out = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        for box in self.boxes:
            (bi0, br0, bc0), (bi1, br1, bc1) = box.start_irc, box.stop_irc
            if not bi0 <= slice_index < bi1:
                continue
            lo_r, hi_r = max(r0, br0), min(r1, br1)
            lo_c, hi_c = max(c0, bc0), min(c1, bc1)
            if lo_r >= hi_r or lo_c >= hi_c:
                continue
            out[lo_r - r0 : hi_r - r0, lo_c - c0 : hi_c - c0] |= box.mask[
                slice_index - bi0, lo_r - br0 : hi_r - br0, lo_c - bc0 : hi_c - bc0
            ]
        return out

    def slice(self, slice_index: int) -> np.ndarray:
        """bool [R, C]."""
        return self.region(slice_index, (0, self.shape[1]), (0, self.shape[2]))

    def positive_slices(self) -> np.ndarray:
        """Sorted indices of the slices holding any mask voxel."""
        found: set[int] = set()
        for box in self.boxes:
            hits = np.flatnonzero(box.mask.any(axis=(1, 2)))
            found.update(int(box.start_irc[0] + h) for h in hits)
        return np.array(sorted(found), dtype=np.int64)


def _grow_radius(line: np.ndarray, center: int, threshold: float, start: int = 2) -> int:
    """Half-width of the box along one axis: the first radius at which either side is at or
    below threshold; one less when the volume's edge comes first."""
    n = len(line)
    radius = start
    while True:
        lo, hi = center - radius, center + radius
        if lo < 0 or hi >= n:
            return radius - 1
        if not (line[lo] > threshold and line[hi] > threshold):
            return radius
        radius += 1


def nodule_box(hu: np.ndarray, center_irc: Sequence[int], threshold: float = MASK_THRESHOLD_HU) -> MaskBox:
    """The box grown from one voxel center (see the module docstring) and its mask."""
    ci, cr, cc = (int(v) for v in center_irc)
    radii = (
        _grow_radius(hu[:, cr, cc], ci, threshold),
        _grow_radius(hu[ci, :, cc], cr, threshold),
        _grow_radius(hu[ci, cr, :], cc, threshold),
    )
    start = [max(0, c - r) for c, r in zip((ci, cr, cc), radii)]
    stop = [min(n, c + r + 1) for c, r, n in zip((ci, cr, cc), radii, hu.shape)]
    block = np.asarray(hu[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]])
    return MaskBox(start_irc=tuple(start), center_irc=(ci, cr, cc), mask=block > threshold)  # type: ignore[arg-type]


def positive_mask(
    hu: np.ndarray,
    geometry: Geometry,
    nodules: Iterable[CandidateInfo],
    threshold: float = MASK_THRESHOLD_HU,
) -> PositiveMask:
    """The positive mask of one scan as boxes. Nodules whose center falls outside the volume
    are skipped (they have no voxels to grow from)."""
    centers_xyz = np.array([n.center_xyz for n in nodules], dtype=np.float64).reshape(-1, 3)
    boxes = []
    if len(centers_xyz):
        centers_irc = Geometry.round_irc(geometry.xyz_to_irc(centers_xyz))
        for center in centers_irc:
            if np.all(center >= 0) and np.all(center < np.array(hu.shape)):
                boxes.append(nodule_box(hu, center, threshold))
    return PositiveMask(shape=tuple(int(n) for n in hu.shape), boxes=tuple(boxes))  # type: ignore[arg-type]


def build_positive_mask(
    scan: Any, nodules: Iterable[CandidateInfo], threshold: float = MASK_THRESHOLD_HU
) -> np.ndarray:
    """bool [I, R, C]: the book's positive mask of a CtScan for its annotated nodules."""
    return positive_mask(scan.hu, scan.geometry, nodules, threshold).dense()


def slice_stack(
    hu: np.ndarray,
    slice_index: int,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
    context: int = CONTEXT_SLICES,
) -> np.ndarray:
    """float32 [2 * context + 1, r1 - r0, c1 - c0]: slices i - context .. i + context (edges
    repeated), HU clipped to [-1000, 1000]."""
    n_slices = hu.shape[0]
    index = np.clip(np.arange(slice_index - context, slice_index + context + 1), 0, n_slices - 1)
    r0, r1 = rows if rows is not None else (0, hu.shape[1])
    c0, c1 = cols if cols is not None else (0, hu.shape[2])
    block = hu[index, r0:r1, c0:c1].astype(np.float32)
    np.clip(block, HU_CLIP[0], HU_CLIP[1], out=block)
    return block


def _nodules_by_series(candidates: Iterable[CandidateInfo], keep: set[str] | None) -> dict[str, list[CandidateInfo]]:
    out: dict[str, list[CandidateInfo]] = {}
    for c in candidates:
        if c.is_nodule and (keep is None or c.series_uid in keep):
            out.setdefault(c.series_uid, []).append(c)
    return out


def positive_masks(
    source: VolumeSource, candidates: Iterable[CandidateInfo], series_uids: Iterable[str] | None = None
) -> dict[str, PositiveMask]:
    """series_uid -> PositiveMask for every series (of series_uids) that has annotated nodules."""
    keep = None if series_uids is None else set(series_uids)
    out = {}
    for uid, nodules in sorted(_nodules_by_series(candidates, keep).items()):
        scan = source.scan(uid)
        out[uid] = positive_mask(scan.hu, scan.geometry, nodules)
    return out


def _check_window_fits(uid: str, shape_irc: Sequence[int], size: tuple[int, int]) -> None:
    """DataError when the scan's slices are smaller than the training window."""
    if shape_irc[1] < size[0] or shape_irc[2] < size[1]:
        raise DataError(
            f"series {uid}: slices {shape_irc[1]}x{shape_irc[2]} are smaller than the {size[0]}x{size[1]} crop"
        )


class _SegmentationBase(Dataset):
    def __init__(
        self, cache: Any, candidates: Sequence[CandidateInfo], series_uids: Iterable[str] | None, context: int
    ):
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise DataError(f"context slices must be an integer >= 0, got {context!r}")
        self.source = VolumeSource(cache)
        self.context = context
        self.masks = positive_masks(self.source, candidates, series_uids)
        if not any(m.boxes for m in self.masks.values()):
            raise DataError(
                "segmentation dataset: no annotated nodules (positives) inside the scans of the chosen series"
            )

    def _item(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, int]:
        raise NotImplementedError

    def __getitem__(self, index: Any) -> Any:
        """One item for an integer index; a whole collated batch (see `batch`) for a list of them."""
        if isinstance(index, (int, np.integer)):
            return self._item(int(index))
        return self.batch(index)

    def batch(
        self, indices: Sequence[int], shared: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        """Collated items: (stacks [B, 7, R, C], labels [B, 1, R, C], series_uids, slice_indices [B]),
        in shared memory when called in a DataLoader worker (`shared=None`)."""
        items = [self._item(int(i)) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        if not items:
            raise DataError("cannot make an empty batch")
        shared = in_worker() if shared is None else shared
        stacks = stack_into_batch([it[0] for it in items], shared, "slice stacks")
        labels = stack_into_batch([it[1] for it in items], shared, "labels")
        return stacks, labels, [it[2] for it in items], torch.tensor([it[3] for it in items], dtype=torch.int64)


class SegmentationTrainDataset(EpochOrdered, _SegmentationBase):
    """Random 64 x 64 windows of 7-slice stacks around nodules; label = center-slice mask.

    epoch_size defaults to the number of (nodule, slice) samples; longer epochs wrap.
    The window's random shift is drawn from (seed, epoch, index), so an item is the same
    whichever worker reads it.
    """

    def __init__(
        self,
        cache: Any,
        candidates: Sequence[CandidateInfo],
        series_uids: Iterable[str] | None = None,
        *,
        epoch_size: int | None = None,
        crop_size: Sequence[int] = CROP_SIZE_RC,
        jitter: int = 16,
        negatives: float = 0.0,
        irrelevant: Sequence[ExcludedFinding] = (),
        context: int = CONTEXT_SLICES,
        seed: int = 0,
        shuffle: bool = True,
    ):
        super().__init__(cache, candidates, series_uids, context)
        if isinstance(negatives, bool) or not isinstance(negatives, (int, float)) or not 0 <= negatives < 1:
            raise DataError(f"negatives must be a fraction in [0, 1), got {negatives!r}")
        size = tuple(int(s) for s in crop_size)
        if len(size) != 2 or min(size) < 1:
            raise DataError(f"segmentation crop_size must be 2 positive integers (R, C), got {tuple(crop_size)}")
        if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
            raise DataError(f"jitter must be an integer >= 0, got {jitter!r}")
        self.crop_size = size
        self.jitter = jitter
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        keep = None if series_uids is None else set(series_uids)
        non_nodules = (
            [c for c in candidates if not c.is_nodule and (keep is None or c.series_uid in keep)] if negatives else []
        )
        non_nodules = off_irrelevant_findings(non_nodules, irrelevant)
        self.series_uids = sorted(set(self.masks) | {c.series_uid for c in non_nodules})
        samples = []  # (series, slice, center row, center col)
        for s, uid in enumerate(self.series_uids):
            mask = self.masks.get(uid)
            if mask is None:
                continue
            _check_window_fits(uid, mask.shape, size)
            for box in mask.boxes:
                hits = np.flatnonzero(box.mask.any(axis=(1, 2)))
                samples.extend((s, box.start_irc[0] + int(h), box.center_irc[1], box.center_irc[2]) for h in hits)
        if not samples:
            raise DataError(
                "segmentation dataset: the nodule masks are empty (no voxel above -700 HU at any annotated center)"
            )
        negative_samples = self._negative_samples(non_nodules, size)
        if negatives and not negative_samples:
            raise DataError(
                "segmentation dataset: negatives requested but the chosen series have no non-nodule candidates"
            )
        self.n_positive = len(samples)
        self.negatives = float(negatives) if negative_samples else 0.0
        self._samples = np.array(samples + negative_samples, dtype=np.int64)
        if epoch_size is None:
            epoch_size = max(1, round(self.n_positive / (1.0 - self.negatives)))
        if isinstance(epoch_size, bool) or not isinstance(epoch_size, (int, np.integer)) or epoch_size < 1:
            raise DataError(f"epoch_size must be an integer >= 1, got {epoch_size!r}")
        self.epoch_size = int(epoch_size)
        self._init_epoch_order()

    def _negative_samples(self, non_nodules: Sequence[CandidateInfo], size: tuple[int, int]) -> list[tuple]:
        """(series, slice, row, col) of each non-nodule candidate inside its volume."""
        index = {uid: s for s, uid in enumerate(self.series_uids)}
        by_series: dict[str, list[CandidateInfo]] = {}
        for c in non_nodules:
            by_series.setdefault(c.series_uid, []).append(c)
        out = []
        for uid, rows in sorted(by_series.items()):
            scan = self.source.scan(uid)
            shape = np.array(scan.hu.shape)
            _check_window_fits(uid, shape, size)
            centers = Geometry.round_irc(
                scan.geometry.xyz_to_irc(np.array([c.center_xyz for c in rows], dtype=np.float64))
            )
            inside = np.all((centers >= 0) & (centers < shape), axis=1)
            out.extend((index[uid], int(i), int(r), int(c)) for i, r, c in centers[inside])
        return out

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Sample index at each position of the epoch: nodule windows and `negatives` of it
        non-nodule ones, shuffled together."""
        rng = np.random.default_rng([self.seed, epoch])
        n_neg_pool = len(self._samples) - self.n_positive
        n_neg = round(self.epoch_size * self.negatives)
        parts = []
        for pool, offset, count in (
            (self.n_positive, 0, self.epoch_size - n_neg),
            (n_neg_pool, self.n_positive, n_neg),
        ):
            if count:
                perm = rng.permutation(pool) if self.shuffle else np.arange(pool)
                parts.append(offset + perm[np.arange(count) % pool])
        order = np.concatenate(parts)
        return rng.permutation(order) if self.shuffle and n_neg else order

    def __len__(self) -> int:
        return self.epoch_size

    def _item(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, int]:
        if not 0 <= index < self.epoch_size:
            raise IndexError(f"index {index} out of range for an epoch of {self.epoch_size}")
        epoch, order = self._current_order()
        s, slice_index, center_r, center_c = (int(v) for v in self._samples[order[index]])
        uid = self.series_uids[s]
        hu = self.source.hu(uid)
        rng = np.random.default_rng([self.seed, epoch, index])
        shift_r, shift_c = rng.integers(-self.jitter, self.jitter, endpoint=True, size=2) if self.jitter else (0, 0)
        size_r, size_c = self.crop_size
        r0 = int(np.clip(round(center_r - size_r / 2) + shift_r, 0, hu.shape[1] - size_r))
        c0 = int(np.clip(round(center_c - size_c / 2) + shift_c, 0, hu.shape[2] - size_c))
        rows, cols = (r0, r0 + size_r), (c0, c0 + size_c)
        stack = slice_stack(hu, slice_index, rows, cols, self.context)  # (7, 64, 64)
        mask = self.masks.get(uid)
        label = mask.region(slice_index, rows, cols) if mask is not None else np.zeros((size_r, size_c), dtype=bool)
        label = label[None]  # (1, 64, 64)
        return torch.from_numpy(stack), torch.from_numpy(label), uid, slice_index


class SegmentationValDataset(_SegmentationBase):
    """Whole slices of the chosen series that hold mask voxels (all slices with all_slices=True,
    which also includes series without nodules)."""

    def __init__(
        self,
        cache: Any,
        candidates: Sequence[CandidateInfo],
        series_uids: Iterable[str] | None = None,
        *,
        context: int = CONTEXT_SLICES,
        all_slices: bool = False,
    ):
        super().__init__(cache, candidates, series_uids, context)
        if all_slices:
            uids = sorted(set(series_uids) if series_uids is not None else {c.series_uid for c in candidates})
        else:
            uids = sorted(self.masks)
        self.series_uids = uids
        samples = []
        for s, uid in enumerate(uids):
            if all_slices:
                slices = np.arange(self.source.hu(uid).shape[0])
            else:
                slices = self.masks[uid].positive_slices()
            samples.extend((s, int(i)) for i in slices)
        if not samples:
            raise DataError(
                "segmentation dataset: the nodule masks are empty (no voxel above -700 HU at any annotated center)"
            )
        self._samples = np.array(samples, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Validation order never changes; present so training code can treat both alike."""

    def __len__(self) -> int:
        return len(self._samples)

    def _item(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, int]:
        if not 0 <= index < len(self._samples):
            raise IndexError(f"index {index} out of range for {len(self._samples)} slices")
        s, slice_index = (int(v) for v in self._samples[index])
        uid = self.series_uids[s]
        hu = self.source.hu(uid)
        stack = slice_stack(hu, slice_index, context=self.context)  # (7, R, C)
        mask = self.masks.get(uid)
        label = mask.slice(slice_index) if mask is not None else np.zeros(hu.shape[1:], dtype=bool)
        return torch.from_numpy(stack), torch.from_numpy(label[None]), uid, slice_index
