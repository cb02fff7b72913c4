"""lunakit.data datasets: crops, balancing, splits, masks, slice stacks, bad input.

Most tests use a tiny hand-made LUNA16 folder whose nodules are cubes at known voxels, so
every expected value is computed by hand or by plain numpy slicing of the scan as
`lunakit.io.ct.load` reads it; the phantom dataset (conftest) checks the same on lunakit.synth
scans.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lunakit.data import (
    ClassificationDataset,
    DataError,
    MalignancyDataset,
    SegmentationTrainDataset,
    SegmentationValDataset,
    batch_loader,
    build_positive_mask,
    positive_mask,
    train_val_series,
)
from lunakit.data.segmentation import off_irrelevant_findings
from lunakit.errors import LunakitError
from lunakit.io import ct
from lunakit.io.cache import VolumeCache, prepcache
from lunakit.io.luna import CandidateInfo, ExcludedFinding, find_scans, load_candidates, split_series

SHAPE = (40, 64, 64)
CROP = (32, 48, 48)
GEOMETRY = ct.Geometry(np.array([-30.0, 20.0, -100.0]), np.array([0.8, 0.7, 1.5]), np.eye(3))
UIDS = [f"1.2.826.0.1.{k}" for k in range(10, 14)]
NODULE_HU = -100


def _nodule_voxels(k: int) -> list[tuple[int, int, int]]:
    # Two nodules per scan, away from the edges (the crops around them need no shifting).
    return [(12 + k, 20 + 2 * k, 24), (26, 40, 36 - k)]


def _non_nodule_voxels(k: int) -> list[tuple[float, float, float]]:
    # Interior and edge positions (the edge ones make shift-mode crops).
    return [(20.3, 32.0, 31.6), (2.0, 5.0, 60.0), (38.0, 60.0, 3.0), (10.0 + k, 50.0, 12.0), (30.0, 10.0, 50.0 - k)]


def _write_tiny_luna(root: Path) -> None:
    rng = np.random.default_rng(7)
    subset = root / "subset0"
    subset.mkdir(parents=True)
    annotations = ["seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool"]
    candidates = ["seriesuid,coordX,coordY,coordZ,class"]
    for k, uid in enumerate(UIDS):
        hu = rng.integers(-1000, -800, size=SHAPE, dtype=np.int16)
        for n, (i, r, c) in enumerate(_nodule_voxels(k)):
            hu[i - 2 : i + 3, r - 2 : r + 3, c - 2 : c + 3] = NODULE_HU  # 5-voxel cube
            x, y, z = (float(v) for v in GEOMETRY.irc_to_xyz(np.array([i + 0.2, r - 0.1, c + 0.3])))
            malignant = {0: "True", 1: "False"}[n] if not (k == 3 and n == 1) else ""
            annotations.append(f"{uid},{x!r},{y!r},{z!r},4.0,{malignant}")
        for irc in _non_nodule_voxels(k):
            x, y, z = (float(v) for v in GEOMETRY.irc_to_xyz(np.array(irc)))
            candidates.append(f"{uid},{x!r},{y!r},{z!r},0")
        ct.save(hu, GEOMETRY, subset / f"{uid}.mhd")
    (root / "annotations_with_malignancy.csv").write_text("\n".join(annotations) + "\n")
    (root / "candidates.csv").write_text("\n".join(candidates) + "\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("tiny_luna")
    _write_tiny_luna(root)
    cache_dir = root / "cache"
    prepcache(root, cache_dir, progress=False)
    return SimpleNamespace(root=root, cache_dir=cache_dir, candidates=load_candidates(root), scans=find_scans(root))


@pytest.fixture(scope="module")
def phantom(phantom_root, tmp_path_factory) -> SimpleNamespace:
    cache_dir = tmp_path_factory.mktemp("phantom_cache")
    prepcache(phantom_root, cache_dir, progress=False)
    return SimpleNamespace(
        root=phantom_root, cache_dir=cache_dir, candidates=load_candidates(phantom_root), scans=find_scans(phantom_root)
    )


def numpy_crop(hu: np.ndarray, center_irc: np.ndarray, size=CROP) -> np.ndarray:
    """The reference crop: start = round-half-even(center - size / 2), moved inside the volume."""
    start = np.rint(np.asarray(center_irc, dtype=np.float64) - np.array(size) / 2).astype(int)
    start = np.clip(start, 0, np.array(hu.shape) - np.array(size))
    block = hu[start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]]
    return np.clip(block.astype(np.float32), -1000, 1000)


# ----------------------------------------------------------------------------- classification


def test_candidate_list_of_the_tiny_folder(tiny):
    assert sum(c.is_nodule for c in tiny.candidates) == 8
    assert sum(not c.is_nodule for c in tiny.candidates) == 20


@pytest.mark.parametrize("ratio, epoch_size", [(1, 28), (2, 50), (3, 7), (5, 100)])
def test_balance_ratio_holds_exactly_over_an_epoch(tiny, ratio, epoch_size):
    ds = ClassificationDataset(tiny.cache_dir, tiny.candidates, ratio=ratio, epoch_size=epoch_size, seed=3)
    labels = [int(ds[k][1]) for k in range(len(ds))]
    assert len(labels) == epoch_size
    assert sum(labels) == math.ceil(epoch_size / (ratio + 1))
    assert labels == [1 if k % (ratio + 1) == 0 else 0 for k in range(epoch_size)]
    assert ds.labels.tolist() == labels


def test_balanced_epoch_visits_every_positive_and_reshuffles(tiny):
    ds = ClassificationDataset(tiny.cache_dir, tiny.candidates, ratio=1, epoch_size=40, seed=1)
    nodules = {c for c in tiny.candidates if c.is_nodule}
    first = [ds.candidate_at(k) for k in range(40)]
    assert {c for c in first if c.is_nodule} == nodules
    assert {c for c in first if not c.is_nodule} == {c for c in tiny.candidates if not c.is_nodule}
    ds.set_epoch(1)
    second = [ds.candidate_at(k) for k in range(40)]
    assert second != first and sum(c.is_nodule for c in second) == 20
    ds.set_epoch(0)
    assert [ds.candidate_at(k) for k in range(40)] == first  # (seed, epoch) alone decides


def test_unbalanced_epoch_is_every_candidate_once(tiny):
    ds = ClassificationDataset(tiny.cache_dir, tiny.candidates, shuffle=False)
    assert len(ds) == len(tiny.candidates)
    assert [ds.candidate_at(k) for k in range(len(ds))] == tiny.candidates
    shuffled = ClassificationDataset(tiny.cache_dir, tiny.candidates, seed=4)
    seen = [shuffled.candidate_at(k) for k in range(len(shuffled))]
    assert seen != tiny.candidates and sorted(seen, key=CandidateInfo.sort_key) == tiny.candidates


def test_train_and_val_never_share_a_series(tiny):
    train_uids, val_uids = train_val_series(tiny.candidates, val_stride=2)
    assert (train_uids, val_uids) == split_series(UIDS, val_stride=2)
    train = ClassificationDataset(tiny.cache_dir, tiny.candidates, train_uids, ratio=1, epoch_size=30)
    val = ClassificationDataset(tiny.cache_dir, tiny.candidates, val_uids, shuffle=False)
    seen_train = {train[k][2] for k in range(len(train))}
    seen_val = {val[k][2] for k in range(len(val))}
    assert seen_train == set(train_uids) and seen_val == set(val_uids)
    assert not seen_train & seen_val
    assert len(val) == sum(c.series_uid in val_uids for c in tiny.candidates)


def test_items_are_the_numpy_crops_of_the_scan(tiny):
    ds = ClassificationDataset(VolumeCache(tiny.cache_dir), tiny.candidates, shuffle=False)
    volumes = {uid: ct.load(path).hu for uid, path in tiny.scans.items()}
    edge_seen = False
    for k in range(len(ds)):
        crop, label, uid, center_irc = ds[k]
        cand = tiny.candidates[k]
        assert crop.shape == (1, *CROP) and crop.dtype == torch.float32
        assert label.dtype == torch.int64 and label.shape == () and int(label) == int(cand.is_nodule)
        assert uid == cand.series_uid
        expected_irc = GEOMETRY.xyz_to_irc(np.array(cand.center_xyz))
        np.testing.assert_allclose(center_irc.numpy(), expected_irc, atol=1e-9)
        np.testing.assert_array_equal(crop[0].numpy(), numpy_crop(volumes[uid], expected_irc))
        edge_seen |= bool(np.any(np.rint(expected_irc - np.array(CROP) / 2) < 0))
    assert edge_seen  # the shift-mode path was exercised


def test_nodule_crops_hold_the_cube_where_expected(tiny):
    ds = ClassificationDataset(tiny.cache_dir, tiny.candidates, shuffle=False)
    cubes = {(uid, irc) for k, uid in enumerate(UIDS) for irc in _nodule_voxels(k)}
    found = set()
    for k, cand in enumerate(tiny.candidates):
        if not cand.is_nodule:
            continue
        crop, _, uid, center_irc = ds[k]
        cube = tuple(int(v) for v in np.rint(center_irc.numpy()))
        assert (uid, cube) in cubes
        found.add((uid, cube))
        # Crop start by hand: round(center - size / 2), moved inside [0, shape - size].
        start = [min(max(round(float(center_irc[a]) - CROP[a] / 2), 0), SHAPE[a] - CROP[a]) for a in range(3)]
        inside = np.zeros(SHAPE, dtype=bool)  # every cube of this scan (the other may show too)
        for i, r, c in _nodule_voxels(UIDS.index(uid)):
            inside[i - 2 : i + 3, r - 2 : r + 3, c - 2 : c + 3] = True
        expected = inside[start[0] : start[0] + CROP[0], start[1] : start[1] + CROP[1], start[2] : start[2] + CROP[2]]
        lo = [cube[a] - 2 - start[a] for a in range(3)]
        assert expected[lo[0] : lo[0] + 5, lo[1] : lo[1] + 5, lo[2] : lo[2] + 5].all()
        np.testing.assert_array_equal(crop[0].numpy() == NODULE_HU, expected)
    assert found == cubes


def test_dataloader_with_workers_gives_the_same_items(tiny):
    ds = ClassificationDataset(tiny.cache_dir, tiny.candidates, ratio=2, epoch_size=24, seed=9)
    direct = [ds[k] for k in range(len(ds))]
    # Opened memory maps must not travel to the workers.
    assert len(pickle.dumps(ds)) < 50_000
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    crops, labels, uids, centers = [], [], [], []
    for batch in loader:
        crops.append(batch[0])
        labels.append(batch[1])
        uids.extend(batch[2])
        centers.append(batch[3])
    assert torch.equal(torch.cat(crops), torch.stack([d[0] for d in direct]))
    assert torch.equal(torch.cat(labels), torch.stack([d[1] for d in direct]))
    assert uids == [d[2] for d in direct]
    assert torch.equal(torch.cat(centers), torch.stack([d[3] for d in direct]))


def test_batch_loader_gives_the_plain_dataloader_batches(tiny):
    ds = ClassificationDataset(tiny.cache_dir, tiny.candidates, ratio=3, epoch_size=22, seed=4)
    crops, labels, uids, centers = ds[[0, 5, 21, 5]]
    assert crops.shape == (4, 1, *CROP) and labels.shape == (4,) and centers.shape == (4, 3)
    for j, k in enumerate([0, 5, 21, 5]):
        item = ds[k]
        assert torch.equal(crops[j], item[0]) and int(labels[j]) == int(item[1]) and uids[j] == item[2]
        assert torch.equal(centers[j], item[3])
    plain = list(DataLoader(ds, batch_size=5, num_workers=2))
    batched = list(batch_loader(ds, 5, num_workers=2))
    assert len(plain) == len(batched) == 5
    for a, b in zip(plain, batched):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and list(a[2]) == b[2] and torch.equal(a[3], b[3])

    seg = SegmentationTrainDataset(tiny.cache_dir, tiny.candidates, seed=1, epoch_size=10)
    plain = list(DataLoader(seg, batch_size=4, num_workers=2))
    batched = list(batch_loader(seg, 4, num_workers=2))
    for a, b in zip(plain, batched):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and list(a[2]) == b[2] and torch.equal(a[3], b[3])
    assert batched[0][0].shape == (4, 7, 64, 64) and batched[0][1].dtype == torch.bool


def test_int16_crops_hold_the_same_values(tiny):
    floats = ClassificationDataset(tiny.cache_dir, tiny.candidates, ratio=1, epoch_size=12, seed=6)
    ints = ClassificationDataset(
        tiny.cache_dir, tiny.candidates, ratio=1, epoch_size=12, seed=6, crop_dtype=torch.int16
    )
    item = ints[3]
    assert item[0].dtype == torch.int16 and torch.equal(item[0].float(), floats[3][0])
    expected = floats[list(range(12))][0]
    got = torch.cat([b[0] for b in batch_loader(ints, 5, num_workers=2)])
    assert got.dtype == torch.int16 and torch.equal(got.float(), expected)
    got = torch.cat([b[0] for b in DataLoader(ints, batch_size=12)])
    assert torch.equal(got.float(), expected)


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"batch_size": 4, "shuffle": True}, {"batch_size": 4, "collate_fn": list}]
)
def test_batch_loader_bad_arguments(tiny, kwargs):
    ds = ClassificationDataset(tiny.cache_dir, tiny.candidates)
    size = kwargs.pop("batch_size")
    with pytest.raises(DataError):
        batch_loader(ds, size, **kwargs)


def test_persistent_workers_follow_set_epoch(tiny):
    ds = ClassificationDataset(tiny.cache_dir, tiny.candidates, ratio=1, epoch_size=16, seed=2)
    expected = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        expected.append([ds[k][3] for k in range(len(ds))])
    assert not all(torch.equal(a, b) for a, b in zip(*expected))
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        got = torch.cat([batch[3] for batch in loader])
        assert torch.equal(got, torch.stack(expected[epoch]))

    seg = SegmentationTrainDataset(tiny.cache_dir, tiny.candidates, seed=2, epoch_size=8)
    seg_expected = []
    for epoch in (0, 1):
        seg.set_epoch(epoch)
        seg_expected.append(torch.stack([seg[k][0] for k in range(len(seg))]))
    assert not torch.equal(*seg_expected)
    seg_loader = DataLoader(seg, batch_size=4, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        seg.set_epoch(epoch)
        assert torch.equal(torch.cat([batch[0] for batch in seg_loader]), seg_expected[epoch])


def test_phantom_crops_match_numpy_slicing_of_the_scan(phantom):
    ds = ClassificationDataset(phantom.cache_dir, phantom.candidates, shuffle=False)
    assert ds.positive_count > 0 and ds.negative_count > 0
    picked = [k for k, c in enumerate(phantom.candidates) if c.is_nodule][:2] + [len(ds) - 1]
    for k in picked:
        crop, label, uid, center_irc = ds[k]
        scan = ct.load(phantom.scans[uid])
        expected_irc = scan.geometry.xyz_to_irc(np.array(phantom.candidates[k].center_xyz))
        np.testing.assert_array_equal(crop[0].numpy(), numpy_crop(scan.hu, expected_irc))
        assert int(label) == int(phantom.candidates[k].is_nodule)


# ----------------------------------------------------------------------------- malignancy


def test_malignancy_labels_and_unknowns(tiny):
    ds = MalignancyDataset(tiny.cache_dir, tiny.candidates, shuffle=False)
    assert len(ds) == 7  # 8 nodules, one with unknown malignancy
    assert all(c.is_nodule for c in ds.candidates)
    assert [int(ds[k][1]) for k in range(len(ds))] == [int(bool(c.is_malignant)) for c in ds.candidates]
    assert ds.positive_count == 4 and ds.negative_count == 3


def test_malignancy_with_non_nodules_alternates_benign_and_non_nodule(tiny):
    ds = MalignancyDataset(tiny.cache_dir, tiny.candidates, include_non_nodules=True, ratio=1, epoch_size=80, seed=2)
    picks = [ds.candidate_at(k) for k in range(80)]
    kinds = ["mal" if c.is_malignant else "ben" if c.is_nodule else "non" for c in picks]
    assert kinds == ["mal", "ben", "mal", "non"] * 20
    assert ds.labels.tolist() == [1 if k == "mal" else 0 for k in kinds]
    assert {c for c in picks if not c.is_nodule} == {c for c in tiny.candidates if not c.is_nodule}


# ----------------------------------------------------------------------------- positive mask


def _scan(hu: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(hu=hu, geometry=ct.Geometry.identity())


def _nodule_at(irc) -> CandidateInfo:
    # Identity geometry: xyz = (c, r, i).
    return CandidateInfo(
        series_uid="x", center_xyz=(float(irc[2]), float(irc[1]), float(irc[0])), is_nodule=True, diameter_mm=5.0
    )


def test_positive_mask_of_a_cube_is_the_cube():
    hu = np.full((20, 24, 28), -1000, dtype=np.int16)
    hu[5:12, 8:13, 10:19] = -100  # 7 x 5 x 9 block, center (8, 10, 14)
    hu[15:18, 2:5, 2:5] = 200  # bright, but no nodule is annotated there
    mask = build_positive_mask(_scan(hu), [_nodule_at((8, 10, 14))])
    expected = np.zeros(hu.shape, dtype=bool)
    expected[5:12, 8:13, 10:19] = True
    assert mask.dtype == bool and mask.shape == hu.shape
    np.testing.assert_array_equal(mask, expected)


def test_positive_mask_box_stops_at_the_first_low_voxel_on_either_side():
    # A bar along C from 8 to 17, annotated at c = 10: the radius grows from 2; at 3 the
    # voxel c = 7 is air, so the box is c in [7, 13] and the bar is kept only there.
    hu = np.full((9, 9, 30), -1000, dtype=np.int16)
    hu[3:6, 3:6, 8:18] = -300
    mask = build_positive_mask(_scan(hu), [_nodule_at((4, 4, 10))])
    expected = np.zeros(hu.shape, dtype=bool)
    expected[3:6, 3:6, 8:14] = True
    np.testing.assert_array_equal(mask, expected)


def test_positive_mask_at_the_volume_edge_and_outside():
    hu = np.full((10, 12, 12), -1000, dtype=np.int16)
    hu[0:4, 0:3, 5:8] = -50  # touches the first slice and first row
    mask = build_positive_mask(_scan(hu), [_nodule_at((1, 1, 6)), _nodule_at((50, 1, 1))])
    # Edge rule: the index radius stops at 1 (slice -1 does not exist), so box i in [0, 2];
    # rows likewise [0, 2]; columns grow to radius 2 -> [4, 8]; voxels above -700 inside.
    expected = np.zeros(hu.shape, dtype=bool)
    expected[0:3, 0:3, 5:8] = True
    np.testing.assert_array_equal(mask, expected)


def test_positive_mask_uses_the_scan_geometry(tiny):
    cache = VolumeCache(tiny.cache_dir)
    uid = UIDS[1]
    scan = cache.get(uid)
    nodules = [c for c in tiny.candidates if c.is_nodule and c.series_uid == uid]
    mask = build_positive_mask(scan, nodules)
    expected = np.zeros(SHAPE, dtype=bool)
    for i, r, c in _nodule_voxels(1):
        expected[i - 2 : i + 3, r - 2 : r + 3, c - 2 : c + 3] = True
    np.testing.assert_array_equal(mask, expected)
    sparse = positive_mask(scan.hu, scan.geometry, nodules)
    assert sparse.positive_slices().tolist() == sorted(set(np.flatnonzero(expected.any(axis=(1, 2))).tolist()))
    for i in (13, 24, 26, 0):
        np.testing.assert_array_equal(sparse.slice(i), expected[i])
    np.testing.assert_array_equal(sparse.region(26, (30, 50), (20, 40)), expected[26, 30:50, 20:40])


# ----------------------------------------------------------------------------- segmentation


def _reference_stack(hu: np.ndarray, i: int, rows=None, cols=None) -> np.ndarray:
    index = [min(max(j, 0), hu.shape[0] - 1) for j in range(i - 3, i + 4)]
    block = np.stack([hu[j] for j in index]).astype(np.float32)
    if rows is not None:
        block = block[:, rows[0] : rows[1], cols[0] : cols[1]]
    return np.clip(block, -1000, 1000)


def test_segmentation_train_items(tiny):
    ds = SegmentationTrainDataset(tiny.cache_dir, tiny.candidates, seed=5)
    assert len(ds) == 8 * 5  # 8 nodule cubes, 5 slices each
    volumes = {uid: ct.load(path).hu for uid, path in tiny.scans.items()}
    dense = {
        uid: build_positive_mask(
            ct.load(tiny.scans[uid]), [c for c in tiny.candidates if c.is_nodule and c.series_uid == uid]
        )
        for uid in UIDS
    }
    for k in range(0, len(ds), 3):
        stack, label, uid, i = ds[k]
        assert stack.shape == (7, 64, 64) and stack.dtype == torch.float32
        assert label.shape == (1, 64, 64) and label.dtype == torch.bool
        hu = volumes[uid]
        # The window is the whole 64 x 64 slice of the tiny scans.
        np.testing.assert_array_equal(stack.numpy(), _reference_stack(hu, i))
        np.testing.assert_array_equal(label[0].numpy(), dense[uid][i])
        assert label.any()


def test_segmentation_negative_windows(tiny):
    # 40 nodule samples; negatives=0.5 doubles the epoch with windows on the 20 non-nodule
    # candidates, each exactly twice. The tiny windows are whole slices: (uid, slice) says which.
    ds = SegmentationTrainDataset(tiny.cache_dir, tiny.candidates, negatives=0.5, seed=5)
    assert len(ds) == 80
    positives = Counter()
    for k, uid in enumerate(UIDS):
        for i, _, _ in _nodule_voxels(k):
            positives.update((uid, s) for s in range(i - 2, i + 3))
    negatives = Counter()
    for k, uid in enumerate(UIDS):
        negatives.update((uid, int(np.rint(irc[0]))) for irc in _non_nodule_voxels(k))
    volumes = {uid: ct.load(path).hu for uid, path in tiny.scans.items()}
    dense = {
        uid: build_positive_mask(
            ct.load(tiny.scans[uid]), [c for c in tiny.candidates if c.is_nodule and c.series_uid == uid]
        )
        for uid in UIDS
    }
    seen = Counter()
    for k in range(len(ds)):
        stack, label, uid, i = ds[k]
        seen[(uid, int(i))] += 1
        np.testing.assert_array_equal(stack.numpy(), _reference_stack(volumes[uid], int(i)))
        np.testing.assert_array_equal(label[0].numpy(), dense[uid][int(i)])
    assert seen == positives + negatives + negatives
    empty = SegmentationTrainDataset(tiny.cache_dir, tiny.candidates, negatives=0.25, epoch_size=100, seed=1)
    assert sum(not empty[k][1].any() for k in range(100)) >= 15  # most negative slices hold no nodule
    for bad in (-0.1, 1.0, True, "half"):
        with pytest.raises(DataError, match="negatives"):
            SegmentationTrainDataset(tiny.cache_dir, tiny.candidates, negatives=bad)
    only_nodules = [c for c in tiny.candidates if c.is_nodule]
    with pytest.raises(DataError, match="non-nodule"):
        SegmentationTrainDataset(tiny.cache_dir, only_nodules, negatives=0.5)


def test_off_irrelevant_findings_follows_the_luna16_sphere_rule():
    def cand(uid, xyz):
        return CandidateInfo(series_uid=uid, center_xyz=xyz, is_nodule=False, diameter_mm=0.0, is_malignant=None)

    findings = [
        ExcludedFinding("a", (0.0, 0.0, 0.0), 2.0),  # radius 1 mm
        ExcludedFinding("a", (50.0, 0.0, 0.0), None),
    ]  # unknown: 10 mm, radius 5 mm
    kept = off_irrelevant_findings(
        [
            cand("a", (0.0, 0.0, 0.9)),  # inside the 2 mm sphere
            cand("a", (0.0, 1.0, 0.0)),  # exactly on its radius: not strictly inside, kept
            cand("a", (54.9, 0.0, 0.0)),  # inside the 10 mm sphere of the unknown diameter
            cand("a", (56.0, 0.0, 0.0)),  # outside it
            cand("b", (0.0, 0.0, 0.0)),  # another series: its findings do not count
        ],
        findings,
    )
    assert [c.center_xyz for c in kept] == [(0.0, 1.0, 0.0), (56.0, 0.0, 0.0), (0.0, 0.0, 0.0)]


def test_segmentation_negative_windows_skip_irrelevant_findings(tiny):
    # Findings on every non-nodule candidate of the first series: its 5 negative windows go,
    # and the epoch's 40 negative windows come from the other 15 (each 2 or 3 times).
    first = [c for c in tiny.candidates if not c.is_nodule and c.series_uid == UIDS[0]]
    findings = [ExcludedFinding(c.series_uid, c.center_xyz, 1.0) for c in first]
    ds = SegmentationTrainDataset(tiny.cache_dir, tiny.candidates, negatives=0.5, irrelevant=findings, seed=5)
    assert len(ds) == 80
    positives = Counter()
    for k, uid in enumerate(UIDS):
        for i, _, _ in _nodule_voxels(k):
            positives.update((uid, s) for s in range(i - 2, i + 3))
    seen = Counter((uid, int(i)) for k in range(len(ds)) for _, _, uid, i in [ds[k]])
    extra = seen - positives
    assert sum(extra.values()) == 40
    assert set(extra) == {
        (uid, int(np.rint(irc[0]))) for k, uid in enumerate(UIDS) if k > 0 for irc in _non_nodule_voxels(k)
    }


def test_segmentation_train_window_is_random_and_around_the_nodule(phantom):
    ds = SegmentationTrainDataset(phantom.cache_dir, phantom.candidates, seed=0)
    hu = {uid: ct.load(p).hu for uid, p in phantom.scans.items()}
    offsets = set()
    for k in range(min(len(ds), 12)):
        stack, label, uid, i = ds[k]
        assert stack.shape == (7, 64, 64) and label.shape == (1, 64, 64)
        # Find the window in the full slice by matching the center channel.
        full = _reference_stack(hu[uid], i)
        found = [
            (r0, c0)
            for r0 in range(hu[uid].shape[1] - 63)
            for c0 in range(hu[uid].shape[2] - 63)
            if np.array_equal(full[3, r0 : r0 + 64, c0 : c0 + 64], stack[3].numpy())
        ]
        assert found
        r0, c0 = found[0]
        np.testing.assert_array_equal(stack.numpy(), full[:, r0 : r0 + 64, c0 : c0 + 64])
        offsets.add((r0, c0))
    assert len(offsets) > 1
    # Same (seed, epoch, index): same window.
    assert torch.equal(ds[3][0], ds[3][0])


def test_segmentation_val_items_are_full_positive_slices(tiny):
    uid = UIDS[2]
    ds = SegmentationValDataset(tiny.cache_dir, tiny.candidates, [uid])
    nodules = [c for c in tiny.candidates if c.is_nodule and c.series_uid == uid]
    scan = ct.load(tiny.scans[uid])
    dense = build_positive_mask(scan, nodules)
    slices = np.flatnonzero(dense.any(axis=(1, 2))).tolist()
    assert len(ds) == len(slices) == 10
    for k in range(len(ds)):
        stack, label, got_uid, i = ds[k]
        assert got_uid == uid and i == slices[k]
        assert stack.shape == (7, *SHAPE[1:]) and label.shape == (1, *SHAPE[1:])
        np.testing.assert_array_equal(stack.numpy(), _reference_stack(scan.hu, i))
        np.testing.assert_array_equal(label[0].numpy(), dense[i])


def test_phantom_segmentation_val_slices_hold_the_nodules(phantom):
    ds = SegmentationValDataset(phantom.cache_dir, phantom.candidates)
    assert len(ds) > 0
    by_uid = {}
    for k in range(len(ds)):
        stack, label, uid, i = ds[k]
        assert stack.shape[0] == 7 and label.shape == (1, *stack.shape[1:]) and label.any()
        by_uid.setdefault(uid, []).append(i)
    nodule_uids = {c.series_uid for c in phantom.candidates if c.is_nodule}
    assert set(by_uid) == nodule_uids
    for uid, slices in by_uid.items():
        scan = ct.load(phantom.scans[uid])
        dense = build_positive_mask(scan, [c for c in phantom.candidates if c.is_nodule and c.series_uid == uid])
        assert slices == np.flatnonzero(dense.any(axis=(1, 2))).tolist()


def test_segmentation_val_all_slices_repeats_edge_slices(tiny):
    ds = SegmentationValDataset(tiny.cache_dir, tiny.candidates, [UIDS[0]], all_slices=True)
    assert len(ds) == SHAPE[0]
    stack, label, _, i = ds[0]
    assert i == 0
    for ch in range(4):  # slices -3..0 are all slice 0
        assert torch.equal(stack[ch], stack[3])
    assert not torch.equal(stack[4], stack[3])
    assert not label.any()


# ----------------------------------------------------------------------------- bad input


def test_missing_cache_dir(tiny, tmp_path):
    with pytest.raises(DataError, match="cache directory does not exist"):
        ClassificationDataset(tmp_path / "nope", tiny.candidates)
    with pytest.raises(LunakitError, match="nope"):
        SegmentationTrainDataset(tmp_path / "nope", tiny.candidates)


def test_series_missing_from_the_cache(tiny, tmp_path):
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    with pytest.raises(LunakitError, match="not cached"):
        ClassificationDataset(empty, tiny.candidates)


def test_no_positives(tiny):
    negatives = [c for c in tiny.candidates if not c.is_nodule]
    with pytest.raises(DataError, match="no positive"):
        ClassificationDataset(tiny.cache_dir, negatives, ratio=1)
    with pytest.raises(DataError, match="no positive"):
        ClassificationDataset(tiny.cache_dir, negatives)
    with pytest.raises(DataError, match="no annotated nodules"):
        SegmentationTrainDataset(tiny.cache_dir, negatives)
    with pytest.raises(DataError, match="no annotated nodules"):
        SegmentationValDataset(tiny.cache_dir, negatives)
    benign = [c for c in tiny.candidates if c.is_nodule and c.is_malignant is False]
    with pytest.raises(DataError, match="no malignant"):
        MalignancyDataset(tiny.cache_dir, benign)


def test_no_candidates_in_the_chosen_series(tiny):
    with pytest.raises(DataError, match="no candidates"):
        ClassificationDataset(tiny.cache_dir, tiny.candidates, ["9.9.9"])


def test_ratio_without_negatives(tiny):
    nodules = [c for c in tiny.candidates if c.is_nodule]
    with pytest.raises(DataError, match="needs negatives"):
        ClassificationDataset(tiny.cache_dir, nodules, ratio=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio": 0},
        {"ratio": 1.5},
        {"epoch_size": 0},
        {"crop_size": (32, 48)},
        {"crop_mode": "wrap"},
        {"crop_dtype": torch.float16},
    ],
)
def test_bad_settings(tiny, kwargs):
    with pytest.raises(DataError):
        ClassificationDataset(tiny.cache_dir, tiny.candidates, **kwargs)


def test_index_out_of_range(tiny):
    ds = ClassificationDataset(tiny.cache_dir, tiny.candidates, ratio=1, epoch_size=10)
    with pytest.raises(IndexError):
        ds[10]


@pytest.mark.parametrize("negatives", [0.0, 0.5])
def test_segmentation_window_larger_than_the_slices_is_refused(tiny, negatives):
    with pytest.raises(DataError, match=r"slices 64x64 are smaller than the 80x80 crop"):
        SegmentationTrainDataset(tiny.cache_dir, tiny.candidates, crop_size=(80, 80), negatives=negatives)
