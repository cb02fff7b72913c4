"""Candidate crops for the nodule and malignancy classifiers.

Each item is a 32 x 48 x 48 (I, R, C) crop of the cached volume around a candidate,
HU clipped to [-1000, 1000], cut by `lunakit.pipeline.ops.extract_crops` (shift mode: a crop
that would leave the volume is moved inside it, as the book does).

Items are `(crop, label, series_uid, center_irc)`:
  crop        float32 [1, 32, 48, 48] (int16 with crop_dtype=torch.int16)
  label       int64 scalar, the class index: 1 = positive (nodule; malignant), 0 = negative.
              The book used a one-hot [2] vector whose index 1 is the positive class;
              `F.one_hot(label, 2)` gives it back. Class indices feed `F.cross_entropy` as is.
  series_uid  str
  center_irc  float64 [3], the candidate center in voxel coordinates (not rounded)

Balancing (the book's scheme): with `ratio=N`, position k of an epoch is a positive when
k % (N + 1) == 0 and a negative otherwise, so every run of N + 1 positions holds one
positive and N negatives; the lists wrap around when the epoch is longer than they are.
Each epoch (`set_epoch`) reshuffles the positive and negative lists with a generator seeded
by (seed, epoch), so an epoch's order depends on nothing else (exact resume, any number
of workers). Call `set_epoch` before iterating a DataLoader; the epoch lives in shared
memory, so persistent workers follow it too.

Batches: `dataset[list_of_indices]` (or `batch`) returns the items already stacked, crops
cut straight into one tensor; `lunakit.data.batch_loader(dataset, B, num_workers=W)` is a
DataLoader built on that (no per-item collate copy). A plain DataLoader works too.

Splits are by series (`train_val_series`): a scan's candidates are all in training or all
in validation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lunakit.data.epoch import EpochOrdered
from lunakit.data.loader import in_worker, new_batch_tensor
from lunakit.data.volumes import DataError, VolumeSource
from lunakit.io.luna import CandidateInfo, split_series
from lunakit.models.classifier import CROP_SIZE_IRC

HU_CLIP = (-1000.0, 1000.0)

LabelFn = Callable[[CandidateInfo], bool]


def is_nodule(candidate: CandidateInfo) -> bool:
    """Positive class of the nodule classifier."""
    return bool(candidate.is_nodule)


def is_malignant(candidate: CandidateInfo) -> bool:
    """Positive class of the malignancy classifier (non-nodules and unknowns count as benign)."""
    return bool(candidate.is_malignant)


def add_hard_negatives(candidates: list[CandidateInfo], path: str | Path) -> list[CandidateInfo]:
    """candidates plus the rows of a hard-negative table (a candidates table of class-0 rows,
    e.g. from `lunakit mine-negatives`) as non-nodules, sorted as load_candidates sorts.

    Every row's series must be among the candidates' (the table belongs to this dataset);
    a class-1 row is refused (a hard negative is not a nodule).
    """
    from lunakit.io.luna import read_candidates

    rows = read_candidates(path)
    if any(r.is_nodule for r in rows):
        raise DataError(f"{path}: holds class-1 rows; a hard-negative table holds class 0 only")
    known = {c.series_uid for c in candidates}
    unknown = sorted({r.series_uid for r in rows} - known)
    if unknown:
        raise DataError(f"{path}: {len(unknown)} series not in the training data, e.g. {unknown[0]}")
    extra = [CandidateInfo(series_uid=r.series_uid, center_xyz=r.center_xyz, is_nodule=False) for r in rows]
    return sorted(candidates + extra, key=CandidateInfo.sort_key)


def train_val_series(candidates: Iterable[CandidateInfo], val_stride: int = 10) -> tuple[list[str], list[str]]:
    """(train, val) series UIDs of the candidates, split per series as the book splits."""
    return split_series({c.series_uid for c in candidates}, val_stride=val_stride)


class ClassificationDataset(EpochOrdered, Dataset):
    """Crops around candidates of the given series, optionally balanced positive:negative = 1:ratio.

    cache: a lunakit.io.cache.VolumeCache or its directory.
    candidates: CandidateInfo list (e.g. lunakit.io.luna.load_candidates); only those of
        `series_uids` are used (all series when None).
    ratio: None = every candidate once per epoch; N = one positive per N negatives.
    epoch_size: positions per epoch; default the number of candidates used.
    shuffle: reorder per epoch (training); False keeps the candidates' order (validation).
    label_fn: which candidates are positive (default: nodules).
    crop_dtype: float32 (default) or int16. int16 crops hold the same clipped HU exactly in
        half the bytes, which halves what DataLoader workers pass through shared memory
        (the costly part of the data path); convert with `.float()` on the training device.
    """

    def __init__(
        self,
        cache: Any,
        candidates: Sequence[CandidateInfo],
        series_uids: Iterable[str] | None = None,
        *,
        ratio: int | None = None,
        epoch_size: int | None = None,
        crop_size: Sequence[int] = CROP_SIZE_IRC,
        crop_mode: str = "shift",
        crop_dtype: torch.dtype = torch.float32,
        seed: int = 0,
        shuffle: bool = True,
        label_fn: LabelFn = is_nodule,
    ):
        keep = None if series_uids is None else set(series_uids)
        used = [c for c in candidates if keep is None or c.series_uid in keep]
        if not used:
            raise DataError("classification dataset: no candidates in the chosen series")
        labels = np.array([bool(label_fn(c)) for c in used], dtype=bool)
        self._init_common(cache, used, labels, crop_size, crop_mode, crop_dtype, seed, shuffle)
        negatives = np.flatnonzero(~labels)
        self._setup_pools(
            positives=np.flatnonzero(labels),
            negative_groups=[negatives],
            ratio=ratio,
            epoch_size=epoch_size,
            what="positive",
        )

    # -- construction helpers (shared with MalignancyDataset) --

    def _init_common(
        self,
        cache: Any,
        used: list[CandidateInfo],
        labels: np.ndarray,
        crop_size: Sequence[int],
        crop_mode: str,
        crop_dtype: torch.dtype,
        seed: int,
        shuffle: bool,
    ) -> None:
        size = tuple(int(s) for s in crop_size)
        if len(size) != 3 or min(size) < 1:
            raise DataError(f"crop_size must be 3 positive integers (I, R, C), got {tuple(crop_size)}")
        if crop_mode not in ("shift", "pad"):
            raise DataError(f"crop_mode must be 'shift' or 'pad', got {crop_mode!r}")
        self.source = VolumeSource(cache)
        self.candidates: list[CandidateInfo] = used
        self.crop_size = size
        if crop_dtype not in (torch.float32, torch.int16):
            raise DataError(f"crop_dtype must be torch.float32 or torch.int16, got {crop_dtype}")
        self.crop_mode = crop_mode
        self.crop_dtype = crop_dtype
        self._scratch = torch.empty(0)  # per-process float32 buffer for int16 batches
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.series_uids: list[str] = sorted({c.series_uid for c in used})
        uid_index = {uid: k for k, uid in enumerate(self.series_uids)}
        self._series_of = np.array([uid_index[c.series_uid] for c in used], dtype=np.int64)
        self._labels = labels.astype(np.int64)
        # Centers in voxels, per series through that scan's geometry.
        centers = np.empty((len(used), 3), dtype=np.float64)
        for uid in self.series_uids:
            rows = np.flatnonzero(self._series_of == uid_index[uid])
            geometry = self.source.scan(uid).geometry
            centers[rows] = geometry.xyz_to_irc(np.array([used[k].center_xyz for k in rows], dtype=np.float64))
        self._centers_irc = centers

    def _setup_pools(
        self,
        positives: np.ndarray,
        negative_groups: list[np.ndarray],
        ratio: int | None,
        epoch_size: int | None,
        what: str,
    ) -> None:
        if len(positives) == 0:
            raise DataError(
                f"classification dataset: no {what} candidates among {len(self.candidates)} in the chosen series"
            )
        if ratio is not None:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, np.integer)) or ratio < 1:
                raise DataError(f"balancing ratio must be an integer >= 1 or None, got {ratio!r}")
            negative_groups = [g for g in negative_groups if len(g)]
            if not negative_groups:
                raise DataError(f"classification dataset: ratio {ratio} needs negatives, but every candidate is {what}")
        self.ratio = None if ratio is None else int(ratio)
        self._positives = positives.astype(np.int64)
        self._negative_groups = [g.astype(np.int64) for g in negative_groups]
        if epoch_size is None:
            epoch_size = (
                len(self.candidates) if self.ratio is None else len(positives) + sum(len(g) for g in negative_groups)
            )
        if isinstance(epoch_size, bool) or not isinstance(epoch_size, (int, np.integer)) or epoch_size < 1:
            raise DataError(f"epoch_size must be an integer >= 1, got {epoch_size!r}")
        self.epoch_size = int(epoch_size)
        self._init_epoch_order()

    # -- epoch order --

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_scratch"] = torch.empty(0)
        return state

    def _permute(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return ids[rng.permutation(len(ids))] if self.shuffle else ids

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Candidate index at each position of the epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        positions = np.arange(self.epoch_size, dtype=np.int64)
        if self.ratio is None:
            everything = self._permute(np.arange(len(self.candidates), dtype=np.int64), rng)
            return everything[positions % len(everything)]
        positives = self._permute(self._positives, rng)
        groups = [self._permute(g, rng) for g in self._negative_groups]
        pos_slot, remainder = np.divmod(positions, self.ratio + 1)
        neg_slot = positions - 1 - pos_slot  # how many negatives came before this position
        order = positives[pos_slot % len(positives)]
        is_neg = remainder != 0
        # Negative slots cycle through the groups (benign, non-nodule, ... for malignancy).
        n_groups = len(groups)
        for g, ids in enumerate(groups):
            pick = is_neg & (neg_slot % n_groups == g)
            order[pick] = ids[(neg_slot[pick] // n_groups) % len(ids)]
        return order

    # -- Dataset --

    def __len__(self) -> int:
        return self.epoch_size

    @property
    def labels(self) -> np.ndarray:
        """Class index at each position of the current epoch."""
        return self._labels[self._current_order()[1]]

    @property
    def positive_count(self) -> int:
        return int(len(self._positives))

    @property
    def negative_count(self) -> int:
        return int(sum(len(g) for g in self._negative_groups))

    def candidate_at(self, index: int) -> CandidateInfo:
        return self.candidates[int(self._current_order()[1][self._check_index(index)])]

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.epoch_size
        if not 0 <= index < self.epoch_size:
            raise IndexError(f"index {index} out of range for an epoch of {self.epoch_size}")
        return index

    def __getitem__(self, index: Any) -> Any:
        """One item for an integer index; a whole collated batch (see `batch`) for a list of them."""
        if isinstance(index, (int, np.integer)):
            crops, labels, uids, centers = self.batch([index], shared=False)
            return crops[0], labels[0], uids[0], centers[0]
        return self.batch(index)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, str, torch.Tensor]]:
        """The items of a DataLoader batch (DataLoader calls this instead of __getitem__)."""
        crops, labels, uids, centers = self.batch(indices, shared=False)
        return [(crops[k], labels[k], uids[k], centers[k]) for k in range(len(uids))]

    def batch(
        self, indices: Sequence[int], shared: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        """Collated items: (crops [B, 1, 32, 48, 48], labels [B], series_uids, centers_irc [B, 3]).

        Crops are cut straight into one batch tensor, in shared memory when called in a
        DataLoader worker (`shared=None`), so it reaches the main process without a copy.
        """
        from lunakit.pipeline.ops import extract_crops

        ids = self._current_order()[1][[self._check_index(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]]
        shared = in_worker() if shared is None else shared
        crops = new_batch_tensor((len(ids), 1, *self.crop_size), self.crop_dtype, shared)
        if self.crop_dtype == torch.float32:
            cut = crops
        else:  # cut into a reused float32 buffer, then convert (exact: clipped HU are integers)
            if self._scratch.shape[0] < len(ids):
                self._scratch = torch.empty((len(ids), 1, *self.crop_size), dtype=torch.float32)
            cut = self._scratch[: len(ids)]
        centers = torch.from_numpy(self._centers_irc[ids])  # (B, 3) float64
        uids = [self.series_uids[s] for s in self._series_of[ids]]
        for k, uid in enumerate(uids):
            extract_crops(
                self.source.tensor(uid),
                centers[k : k + 1],
                size=self.crop_size,
                mode=self.crop_mode,
                fill=HU_CLIP[0],
                clip=HU_CLIP,
                out=cut[k : k + 1],
            )  # (1, 1, 32, 48, 48)
        if cut is not crops:
            crops.copy_(cut)
        labels = torch.from_numpy(self._labels[ids])  # (B,) int64
        return crops, labels, uids, centers


class MalignancyDataset(ClassificationDataset):
    """Nodules labelled benign (0) or malignant (1), optionally with non-nodule negatives.

    Nodules whose malignancy is unknown (None) are left out. With
    `include_non_nodules=True`, non-nodule candidates join the benign class (the book's
    choice: to the malignancy model anything not malignant is class 0); balanced, the
    negative positions then alternate benign nodule / non-nodule, so with ratio 1 an epoch
    is 1/2 malignant, 1/4 benign, 1/4 non-nodule, as the book trains.
    """

    def __init__(
        self,
        cache: Any,
        candidates: Sequence[CandidateInfo],
        series_uids: Iterable[str] | None = None,
        *,
        include_non_nodules: bool = False,
        ratio: int | None = None,
        epoch_size: int | None = None,
        crop_size: Sequence[int] = CROP_SIZE_IRC,
        crop_mode: str = "shift",
        crop_dtype: torch.dtype = torch.float32,
        seed: int = 0,
        shuffle: bool = True,
    ):
        keep = None if series_uids is None else set(series_uids)
        used = [
            c
            for c in candidates
            if (keep is None or c.series_uid in keep)
            and ((c.is_nodule and c.is_malignant is not None) or (include_non_nodules and not c.is_nodule))
        ]
        if not used:
            raise DataError("malignancy dataset: no nodules with a known malignancy in the chosen series")
        labels = np.array([bool(c.is_nodule and c.is_malignant) for c in used], dtype=bool)
        self._init_common(cache, used, labels, crop_size, crop_mode, crop_dtype, seed, shuffle)
        nodule = np.array([c.is_nodule for c in used], dtype=bool)
        self.include_non_nodules = bool(include_non_nodules)
        self._setup_pools(
            positives=np.flatnonzero(labels),
            negative_groups=[np.flatnonzero(~labels & nodule), np.flatnonzero(~labels & ~nodule)],
            ratio=ratio,
            epoch_size=epoch_size,
            what="malignant",
        )
