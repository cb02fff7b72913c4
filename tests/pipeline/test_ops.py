"""The lunakit kernels (lunakit.pipeline.ops / torch.ops.lunakit) against slow, obvious references.

extract_crops vs a numpy slicing loop, binary_erode / label_components / component_stats vs
scipy.ndimage. Every case runs on CPU; the "cuda" parametrization runs the same cases on the
GPU (skipped without one, run by tests/gpu/run.sh) and also compares with the CPU op.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import lunakit._core
from lunakit.errors import LunakitError
from lunakit.pipeline import ops

from helpers import REAL_CT, brute_force_cores_3d, require, scipy_cores, scipy_lung_field

_HAS_CUDA = torch.cuda.is_available() and lunakit._core.built_with_cuda()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not _HAS_CUDA, reason="needs a GPU and lunakit built with CUDA")),
]
STRUCTURE_RANK = {6: 1, 18: 2, 26: 3}


# ---- references -------------------------------------------------------------------------


def crop_reference(volume: np.ndarray, center_irc, size, mode: str, fill: float, clip) -> np.ndarray:
    """One crop by plain slicing: the "Crops" contract of docs/design.md written the obvious way."""
    starts = []
    for axis in range(3):
        start = int(np.round(center_irc[axis] - size[axis] / 2))  # numpy rounds half to even
        if mode == "shift":
            if start < 0:
                start = 0
            if start + size[axis] > volume.shape[axis]:
                start = volume.shape[axis] - size[axis]
        starts.append(start)
    out = np.full(size, fill, dtype=np.float32)
    src, dst = [], []
    for axis in range(3):
        lo = max(starts[axis], 0)
        hi = min(starts[axis] + size[axis], volume.shape[axis])
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - starts[axis], hi - starts[axis]))
    values = volume[tuple(src)].astype(np.float32)
    if clip is not None:
        values = np.clip(values, clip[0], clip[1])
    out[tuple(dst)] = values
    return out


def crops_reference(volume, centers_irc, size, mode="shift", fill=-1000.0, clip=(-1000.0, 1000.0)) -> np.ndarray:
    return np.stack([crop_reference(volume, c, size, mode, fill, clip)[None] for c in centers_irc]).reshape(
        len(centers_irc), 1, *size
    )


def scipy_label(mask: np.ndarray, connectivity: int):
    structure = ndi.generate_binary_structure(3, STRUCTURE_RANK[connectivity])
    return ndi.label(mask, structure=structure)


def random_mask(rng: np.random.Generator, shape, density: float, smooth: bool = False) -> np.ndarray:
    """Noise masks (many tiny components) or smoothed ones (blobs)."""
    if smooth:
        field = ndi.gaussian_filter(rng.standard_normal(shape), 1.5)
        return field > np.quantile(field, 1.0 - density)
    return rng.random(shape) < density


# ---- extract_crops ----------------------------------------------------------------------


def _volume(rng, shape, dtype):
    if dtype == torch.int16:
        return torch.from_numpy(rng.integers(-2000, 3000, size=shape, dtype=np.int16))
    return torch.from_numpy((rng.standard_normal(shape) * 800).astype(np.float32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int16, torch.float32])
@pytest.mark.parametrize("mode", ["shift", "pad"])
@pytest.mark.parametrize("size", [(8, 10, 12), (7, 9, 5), (1, 1, 1), (12, 20, 16)])
@pytest.mark.parametrize("clip", [(-1000.0, 1000.0), (-999.5, 1200.25), (-4e4, 5e4), None])
def test_extract_crops_matches_numpy(device, dtype, mode, size, clip):
    rng = np.random.default_rng(sum(size) + (dtype == torch.int16) * 7 + (mode == "pad"))
    shape = (20, 24, 22)
    volume = _volume(rng, shape, dtype)
    # Random centers in and around the volume, halves (ties) included, plus every corner.
    centers = rng.uniform(-6, np.array(shape) + 6, size=(40, 3))
    centers[::4] = np.round(centers[::4] * 2) / 2
    corners = np.array([[a, b, c] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)])
    centers = np.concatenate([centers, corners, corners + 0.5, corners - 0.5])
    got = ops.extract_crops(volume.to(device), torch.from_numpy(centers).to(device), size=size, mode=mode, clip=clip)
    want = crops_reference(volume.numpy(), centers, size, mode, clip=clip)
    assert got.dtype == torch.float32 and tuple(got.shape) == (len(centers), 1, *size)
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    if device != "cpu":
        cpu = ops.extract_crops(volume, torch.from_numpy(centers), size, mode, clip=clip)
        np.testing.assert_array_equal(got.cpu().numpy(), cpu.numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_extract_crops_rounds_half_to_even(device):
    # Value = linear index, so a crop's first value tells its start.
    volume = torch.arange(40 * 40 * 40, dtype=torch.float32).reshape(40, 40, 40).to(device)
    size = (4, 4, 4)
    for center, start in [(10.5, 8), (11.5, 10), (12.0, 10), (12.5, 10), (13.5, 12), (10.4999, 8), (10.5001, 9)]:
        crop = ops.extract_crops(volume, torch.tensor([[center, 20.0, 20.0]], device=device), size, clip=None)
        assert crop[0, 0, 0, 0, 0].item() == start * 1600 + 18 * 40 + 18, center
    # Odd size: center - 2.5.
    crop = ops.extract_crops(volume, torch.tensor([[20.5, 20.0, 20.0]], device=device), (5, 4, 4), clip=None)
    assert crop[0, 0, 0, 0, 0].item() == 18 * 1600 + 18 * 40 + 18


@pytest.mark.parametrize("device", DEVICES)
def test_extract_crops_shift_keeps_crop_inside(device):
    volume = torch.arange(10 * 12 * 14, dtype=torch.int16).reshape(10, 12, 14).to(device)
    # Far outside on every axis: shifted to the last / first full crop.
    crops = ops.extract_crops(
        volume, torch.tensor([[100.0, -50.0, 7.0], [-1e30, 1e30, 0.0]], device=device), (4, 6, 14), clip=None
    )
    np.testing.assert_array_equal(crops[0, 0].cpu().numpy(), volume[6:10, 0:6, 0:14].cpu().numpy())
    np.testing.assert_array_equal(crops[1, 0].cpu().numpy(), volume[0:4, 6:12, 0:14].cpu().numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_extract_crops_pad_fill_and_clip(device):
    volume = torch.full((6, 6, 6), 5000, dtype=torch.int16, device=device)
    crop = ops.extract_crops(volume, torch.tensor([[0.0, 0.0, 0.0]], device=device), (4, 4, 4), mode="pad", fill=-7.0)
    want = np.full((4, 4, 4), -7.0, dtype=np.float32)
    want[2:, 2:, 2:] = 1000.0  # clipped to the default HU window; the fill is not clipped
    np.testing.assert_array_equal(crop[0, 0].cpu().numpy(), want)
    far = ops.extract_crops(volume, torch.tensor([[1e30, -1e30, 3.0]], device=device), (4, 4, 4), mode="pad")
    assert (far == -1000.0).all()
    unclipped = ops.extract_crops(volume, torch.tensor([[3.0, 3.0, 3.0]], device=device), (2, 2, 2), clip=None)
    assert (unclipped == 5000.0).all()
    window = ops.extract_crops(volume, torch.tensor([[3.0, 3.0, 3.0]], device=device), (2, 2, 2), clip=(-5, 40))
    assert (window == 40.0).all()
    # int16 values under a window of non-integers, and beyond int16's range.
    ramp = torch.arange(-4, 4, dtype=torch.int16, device=device).reshape(2, 2, 2)
    half = ops.extract_crops(ramp, torch.tensor([[1.0, 1.0, 1.0]], device=device), (2, 2, 2), clip=(-2.5, 1.25))
    assert half.flatten().tolist() == [-2.5, -2.5, -2.0, -1.0, 0.0, 1.0, 1.25, 1.25]
    wide = ops.extract_crops(ramp, torch.tensor([[1.0, 1.0, 1.0]], device=device), (2, 2, 2), clip=(-1e6, 1e6))
    assert wide.flatten().tolist() == list(range(-4, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_extract_crops_pad_allows_volume_smaller_than_crop(device):
    volume = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4).to(device)
    centers = np.array([[1.0, 1.5, 2.0], [0.0, 0.0, 0.0]])
    got = ops.extract_crops(volume, torch.from_numpy(centers).to(device), (5, 6, 7), mode="pad", fill=-1.0, clip=None)
    np.testing.assert_array_equal(
        got.cpu().numpy(), crops_reference(volume.cpu().numpy(), centers, (5, 6, 7), "pad", -1.0, None)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_extract_crops_out_buffer_is_reused(device):
    rng = np.random.default_rng(5)
    volume = _volume(rng, (16, 18, 20), torch.int16).to(device)
    centers = torch.tensor([[3.0, 4.0, 5.0], [15.0, 0.0, 19.0], [8.0, 9.0, 10.0]], device=device)
    out = torch.full((3, 1, 6, 8, 10), 123.0, device=device)
    result = ops.extract_crops(volume, centers, (6, 8, 10), out=out)
    assert result.data_ptr() == out.data_ptr()
    np.testing.assert_array_equal(
        out.cpu().numpy(), crops_reference(volume.cpu().numpy(), centers.cpu().numpy(), (6, 8, 10))
    )
    # The op directly, as TorchScript would call it: fills out, returns nothing.
    out.fill_(0.0)
    torch.ops.lunakit.extract_crops_into(volume, centers, [6, 8, 10], "shift", -1000.0, -1000.0, 1000.0, out=out)
    np.testing.assert_array_equal(out.cpu().numpy(), result.cpu().numpy())


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_extract_crops_into_any_alignment(offset):
    # Rows of 16 floats over an int16 volume take the CPU's streaming-store path when the output
    # is 16-byte aligned; an output starting 4, 8 or 12 bytes further must give the same values.
    rng = np.random.default_rng(11)
    volume = _volume(rng, (20, 30, 40), torch.int16)
    centers = torch.from_numpy(rng.uniform(-3, 42, size=(9, 3)))
    size = (5, 7, 16)
    storage = torch.full((9 * 5 * 7 * 16 + offset,), 77.0)
    out = storage[offset:].view(9, 1, *size)
    for mode in ("shift", "pad"):
        ops.extract_crops(volume, centers, size, mode=mode, out=out)
        np.testing.assert_array_equal(out.numpy(), crops_reference(volume.numpy(), centers.numpy(), size, mode))


@pytest.mark.parametrize("device", DEVICES)
def test_extract_crops_empty_centers_and_strided_inputs(device):
    volume = torch.arange(12 * 14 * 16, dtype=torch.float32).reshape(12, 14, 16).to(device)
    empty = ops.extract_crops(volume, torch.zeros((0, 3), device=device), (4, 4, 4))
    assert tuple(empty.shape) == (0, 1, 4, 4, 4)
    # A transposed (non-contiguous) volume and float32 centers taken from a wider tensor.
    transposed = volume.transpose(0, 2)  # (16, 14, 12)
    centers = torch.tensor([[5.0, 6.0, 7.0, 0.0], [15.5, 1.0, 11.0, 0.0]], device=device)[:, :3].float()
    got = ops.extract_crops(transposed, centers, (5, 4, 3), clip=None)
    want = crops_reference(transposed.cpu().numpy(), centers.cpu().numpy(), (5, 4, 3), "shift", -1000.0, None)
    np.testing.assert_array_equal(got.cpu().numpy(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "volume_shape, volume_dtype, centers, kwargs, message",
    [
        ((8, 8), torch.int16, [[1.0, 1.0, 1.0]], {}, "volume must be \\[I, R, C\\], got 2 dims"),
        ((8, 8, 8, 1), torch.int16, [[1.0, 1.0, 1.0]], {}, "volume must be \\[I, R, C\\], got 4 dims"),
        ((8, 8, 8), torch.float64, [[1.0, 1.0, 1.0]], {}, "volume must be int16 or float32, got Double"),
        ((8, 8, 8), torch.uint8, [[1.0, 1.0, 1.0]], {}, "volume must be int16 or float32"),
        ((8, 8, 8), torch.int16, [[1.0, 1.0]], {}, "centers_irc must be \\[N, 3\\]"),
        ((8, 8, 8), torch.int16, [1.0, 1.0, 1.0], {}, "centers_irc must be \\[N, 3\\]"),
        ((8, 8, 8), torch.int16, [[1, 1, 1]], {}, "centers_irc must be a floating dtype"),
        ((8, 8, 8), torch.int16, [[float("nan"), 1.0, 1.0]], {}, "centers_irc holds NaN or infinite values"),
        (
            (8, 8, 8),
            torch.int16,
            [[1.0, float("inf"), 1.0]],
            {"mode": "pad"},
            "centers_irc holds NaN or infinite values",
        ),
        ((8, 8, 8), torch.int16, [[1.0, 1.0, 1.0]], {"size": (4, 0, 4)}, "size must be positive"),
        ((8, 8, 8), torch.int16, [[1.0, 1.0, 1.0]], {"size": (4, -2, 4), "mode": "pad"}, "size must be positive"),
        ((8, 8, 8), torch.int16, [[1.0, 1.0, 1.0]], {"size": (4, 4)}, "size"),
        ((8, 8, 8), torch.int16, [[1.0, 1.0, 1.0]], {"mode": "wrap"}, "mode must be 'shift' or 'pad', got 'wrap'"),
        (
            (8, 8, 8),
            torch.int16,
            [[1.0, 1.0, 1.0]],
            {"size": (4, 4, 4), "clip": (5, -5)},
            "clip_min \\(5\\) > clip_max",
        ),
        ((8, 8, 8), torch.int16, [[1.0, 1.0, 1.0]], {"size": (4, 4, 4), "fill": float("nan")}, "fill must not be NaN"),
        (
            (8, 30, 30),
            torch.int16,
            [[1.0, 1.0, 1.0]],
            {"size": (9, 4, 4)},
            "volume \\[8, 30, 30\\] is smaller than the crop \\[9, 4, 4\\] along axis 0",
        ),
        (
            (40, 30, 60),
            torch.float32,
            [[1.0, 1.0, 1.0]],
            {"size": (32, 48, 48)},
            "volume \\[40, 30, 60\\] is smaller than the crop .* along axis 1 \\(mode 'shift' needs the crop to fit; use mode 'pad'\\)",
        ),
    ],
)
def test_extract_crops_rejects_bad_input(device, volume_shape, volume_dtype, centers, kwargs, message):
    volume = torch.zeros(volume_shape, dtype=volume_dtype, device=device)
    centers_t = torch.tensor(centers, device=device)
    with pytest.raises(ops.OpInputError, match="extract_crops: " + message):
        ops.extract_crops(volume, centers_t, **{"size": (4, 4, 4), **kwargs})


@pytest.mark.parametrize("device", DEVICES)
def test_extract_crops_rejects_bad_out(device):
    volume = torch.zeros((10, 10, 10), dtype=torch.int16, device=device)
    centers = torch.zeros((2, 3), device=device)
    cases = [
        (torch.zeros((2, 1, 4, 4, 4), dtype=torch.float64, device=device), "out must be float32"),
        (torch.zeros((3, 1, 4, 4, 4), device=device), "out must have shape \\[2, 1, 4, 4, 4\\]"),
        (torch.zeros((2, 4, 4, 4), device=device), "out must have shape"),
        (torch.zeros((2, 1, 4, 4, 8), device=device)[..., ::2], "out must be contiguous"),
    ]
    for out, message in cases:
        with pytest.raises(ops.OpInputError, match="extract_crops: " + message):
            ops.extract_crops(volume, centers, (4, 4, 4), out=out)


@pytest.mark.skipif(not _HAS_CUDA, reason="needs a GPU and lunakit built with CUDA")
def test_ops_reject_mixed_devices_cuda():
    volume = torch.zeros((10, 10, 10), dtype=torch.int16, device="cuda")
    with pytest.raises(ops.OpInputError, match="extract_crops: centers_irc is on cpu but volume is on cuda"):
        ops.extract_crops(volume, torch.zeros((1, 3)), (4, 4, 4))
    with pytest.raises(ops.OpInputError, match="extract_crops: out is on cpu"):
        ops.extract_crops(volume, torch.zeros((1, 3), device="cuda"), (4, 4, 4), out=torch.zeros((1, 1, 4, 4, 4)))
    labels = torch.zeros((4, 4, 4), dtype=torch.int32, device="cuda")
    with pytest.raises(ops.OpInputError, match="component_stats: weights are on cpu"):
        ops.component_stats(labels, 0, torch.zeros((4, 4, 4)))


def test_raw_ops_raise_value_and_type_errors():
    # The raw op raises the builtin types the wrappers turn into OpInputError.
    with pytest.raises(ValueError, match="extract_crops: volume must be"):
        torch.ops.lunakit.extract_crops(torch.zeros(4, 4), torch.zeros(1, 3))
    with pytest.raises(TypeError, match="extract_crops: volume must be int16 or float32"):
        torch.ops.lunakit.extract_crops(torch.zeros(4, 4, 4, dtype=torch.int32), torch.zeros(1, 3))
    assert issubclass(ops.OpInputError, LunakitError)


# ---- binary_erode -----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (1, 6, 7), (3, 3, 3), (2, 9, 9), (9, 2, 9), (9, 9, 2), (4, 1, 30), (12, 15, 17)]
)
@pytest.mark.parametrize("density", [0.5, 0.85, 1.0])
def test_binary_erode_matches_scipy(device, shape, density):
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    mask = rng.random(shape) < density
    got = ops.binary_erode(torch.from_numpy(mask).to(device))
    assert got.dtype == torch.bool and got.shape == mask.shape
    np.testing.assert_array_equal(got.cpu().numpy(), ndi.binary_erosion(mask, iterations=1))


@pytest.mark.parametrize("device", DEVICES)
def test_binary_erode_hand_computed(device):
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1:4, 1:4, 1:4] = True  # a 3x3x3 cube erodes to its center voxel
    got = ops.binary_erode(torch.from_numpy(mask).to(device)).cpu().numpy()
    assert got.sum() == 1 and got[2, 2, 2]
    full = ops.binary_erode(torch.ones((4, 5, 6), dtype=torch.bool, device=device)).cpu().numpy()
    assert full.sum() == 2 * 3 * 4 and full[1:3, 1:4, 1:5].all()  # the outside counts as background


@pytest.mark.parametrize("device", DEVICES)
def test_binary_erode_rejects_bad_input(device):
    with pytest.raises(ops.OpInputError, match="binary_erode: mask must be bool, got Float"):
        ops.binary_erode(torch.zeros((4, 4, 4), device=device))
    with pytest.raises(ops.OpInputError, match="binary_erode: mask must be \\[I, R, C\\], got 2 dims"):
        ops.binary_erode(torch.zeros((4, 4), dtype=torch.bool, device=device))


# ---- label_components -------------------------------------------------------------------

LABEL_SHAPES = [(1, 1, 1), (1, 1, 17), (17, 1, 1), (1, 13, 17), (9, 1, 11), (7, 9, 1), (12, 16, 20), (20, 21, 23)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("shape", LABEL_SHAPES)
def test_label_components_matches_scipy_on_noise(device, connectivity, shape):
    rng = np.random.default_rng(connectivity * 1000 + int(np.prod(shape)))
    for density in (0.0, 0.05, 0.2, 0.35, 0.5, 0.7, 1.0):
        mask = random_mask(rng, shape, density)
        want, want_count = scipy_label(mask, connectivity)
        labels, count = ops.label_components(torch.from_numpy(mask).to(device), connectivity)
        assert labels.dtype == torch.int32 and labels.device.type == device
        assert count == want_count, (density, count, want_count)
        np.testing.assert_array_equal(labels.cpu().numpy(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_label_components_matches_scipy_on_blobs_and_shapes(device, connectivity):
    rng = np.random.default_rng(connectivity)
    masks = [
        random_mask(rng, (24, 40, 36), 0.15, smooth=True),
        random_mask(rng, (24, 40, 36), 0.4, smooth=True),
        random_mask(rng, (30, 32, 34), 0.3),
    ]
    # Thin planes, lines and a hollow box touching every face of the volume.
    plane = np.zeros((9, 10, 11), dtype=bool)
    plane[4] = rng.random((10, 11)) < 0.6
    plane[:, 3, :] |= rng.random((9, 11)) < 0.6
    masks.append(plane)
    diagonal = np.zeros((12, 12, 12), dtype=bool)
    idx = np.arange(12)
    diagonal[idx, idx, idx] = True  # 26-connected only
    diagonal[idx, idx, 11 - idx] = True  # crosses at the middle only with 26
    diagonal[0, idx, idx] = True  # 18-connected edge steps
    masks.append(diagonal)
    shell = np.ones((8, 9, 10), dtype=bool)
    shell[1:-1, 1:-1, 1:-1] = False
    shell[3:5, 3:6, 3:7] = True
    masks.append(shell)
    for mask in masks:
        want, want_count = scipy_label(mask, connectivity)
        labels, count = ops.label_components(torch.from_numpy(mask).to(device), connectivity)
        assert count == want_count
        np.testing.assert_array_equal(labels.cpu().numpy(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("connectivity", [6, 26])
def test_label_components_more_than_65536_components(device, connectivity):
    mask = np.zeros((100, 100, 60), dtype=bool)
    mask[::2, ::2, ::2] = True  # 50 * 50 * 30 = 75,000 isolated voxels, even with 26-connectivity
    mask[10, 10:40, 20] = True  # and one line joining 15 of them
    want, want_count = scipy_label(mask, connectivity)
    assert want_count > 65536
    labels, count = ops.label_components(torch.from_numpy(mask).to(device), connectivity)
    assert count == want_count
    np.testing.assert_array_equal(labels.cpu().numpy(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_label_components_empty_volume_and_strided_mask(device):
    labels, count = ops.label_components(torch.zeros((0, 4, 5), dtype=torch.bool, device=device))
    assert count == 0 and tuple(labels.shape) == (0, 4, 5) and labels.dtype == torch.int32
    rng = np.random.default_rng(3)
    mask = torch.from_numpy(rng.random((14, 12, 10)) < 0.4).to(device).permute(2, 0, 1)  # non-contiguous
    want, want_count = scipy_label(mask.cpu().numpy(), 6)
    labels, count = ops.label_components(mask)
    assert count == want_count
    np.testing.assert_array_equal(labels.cpu().numpy(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_label_components_rejects_bad_input(device):
    mask = torch.zeros((4, 4, 4), dtype=torch.bool, device=device)
    with pytest.raises(ops.OpInputError, match="label_components: connectivity must be 6, 18 or 26, got 8"):
        ops.label_components(mask, 8)
    with pytest.raises(ops.OpInputError, match="label_components: mask must be bool, got Byte"):
        ops.label_components(mask.to(torch.uint8))
    with pytest.raises(ops.OpInputError, match="label_components: mask must be \\[I, R, C\\], got 4 dims"):
        ops.label_components(mask[None])


# ---- component_stats ----------------------------------------------------------------------


def _stats_case(rng, shape, density, connectivity=6):
    mask = random_mask(rng, shape, density, smooth=True)
    labels, count = scipy_label(mask, connectivity)
    hu = rng.integers(-1500, 2000, size=shape).astype(np.int16)
    return labels.astype(np.int32), count, hu


def assert_stats_match_scipy(stats, labels: np.ndarray, count: int, weights: np.ndarray | None):
    index = np.arange(1, count + 1)
    voxel_count = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    np.testing.assert_array_equal(stats["voxel_count"].cpu().numpy(), voxel_count)
    boxes = ndi.find_objects(labels, max_label=count)
    bbox_min = np.array([[s.start for s in box] for box in boxes]).reshape(count, 3)
    bbox_max = np.array([[s.stop - 1 for s in box] for box in boxes]).reshape(count, 3)
    np.testing.assert_array_equal(stats["bbox_min"].cpu().numpy(), bbox_min)
    np.testing.assert_array_equal(stats["bbox_max"].cpu().numpy(), bbox_max)
    source = (labels > 0).astype(np.float64) if weights is None else weights.astype(np.float64)
    center = np.array(ndi.center_of_mass(source, labels, index)).reshape(count, 3)
    np.testing.assert_allclose(stats["center_irc"].cpu().numpy(), center, rtol=1e-9, atol=0)
    np.testing.assert_allclose(stats["weight_sum"].cpu().numpy(), ndi.sum_labels(source, labels, index), rtol=1e-12)
    assert stats["center_irc"].dtype == torch.float64 and stats["weight_sum"].dtype == torch.float64
    assert stats["voxel_count"].dtype == stats["bbox_min"].dtype == stats["bbox_max"].dtype == torch.int64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape, density", [((20, 30, 40), 0.1), ((16, 24, 20), 0.35), ((1, 25, 30), 0.3), ((9, 1, 31), 0.5)]
)
def test_component_stats_matches_scipy(device, shape, density):
    rng = np.random.default_rng(int(np.prod(shape)))
    labels, count, hu = _stats_case(rng, shape, density)
    assert count > 0
    labels_t = torch.from_numpy(labels).to(device)
    assert_stats_match_scipy(ops.component_stats(labels_t, count), labels, count, None)
    weights = np.clip(hu, -1000, 1000).astype(np.float32) + 1001  # the pipeline's weights
    assert_stats_match_scipy(
        ops.component_stats(labels_t, count, torch.from_numpy(weights).to(device)), labels, count, weights
    )
    for dtype in (np.float64, np.int16):
        w = rng.uniform(0.5, 30, size=shape).astype(dtype)
        assert_stats_match_scipy(ops.component_stats(labels_t, count, torch.from_numpy(w).to(device)), labels, count, w)


@pytest.mark.parametrize("device", DEVICES)
def test_component_stats_hand_computed_and_empty_labels(device):
    labels = torch.zeros((3, 4, 5), dtype=torch.int32)
    labels[0, 0, 0:2] = 1  # voxels (0,0,0), (0,0,1)
    labels[2, 3, 4] = 2
    labels[1, 1:3, 2] = 3
    weights = torch.zeros((3, 4, 5), dtype=torch.float32)
    weights[0, 0, 0], weights[0, 0, 1] = 1.0, 3.0
    stats = ops.component_stats(labels.to(device), 4, weights.to(device) + (labels.to(device) > 1))
    assert stats["voxel_count"].tolist() == [2, 1, 2, 0]
    assert stats["bbox_min"].tolist() == [[0, 0, 0], [2, 3, 4], [1, 1, 2], [-1, -1, -1]]
    assert stats["bbox_max"].tolist() == [[0, 0, 1], [2, 3, 4], [1, 2, 2], [-1, -1, -1]]
    center = stats["center_irc"].cpu()
    assert center[0].tolist() == [0.0, 0.0, 0.75]
    assert center[2].tolist() == [1.0, 1.5, 2.0]
    assert torch.isnan(center[3]).all()  # label 4 never occurs
    assert stats["weight_sum"].tolist() == [4.0, 1.0, 2.0, 0.0]
    none = ops.component_stats(torch.zeros((2, 2, 2), dtype=torch.int32, device=device), 0)
    assert tuple(none["center_irc"].shape) == (0, 3) and tuple(none["voxel_count"].shape) == (0,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", [ops.component_stats, ops.component_cores])
def test_label_ops_reject_bad_input(device, op):
    labels = torch.zeros((4, 4, 4), dtype=torch.int32, device=device)
    cases = [
        (dict(labels=labels.long(), count=1), "labels must be int32, got Long"),
        (dict(labels=labels[0], count=1), "labels must be \\[I, R, C\\], got 2 dims"),
        (dict(labels=labels, count=-1), "count must be >= 0, got -1"),
    ]
    if op is ops.component_stats:
        cases += [
            (dict(labels=labels, count=1, weights=torch.zeros((4, 4, 5), device=device)), "weights shape"),
            (
                dict(labels=labels, count=1, weights=torch.zeros((4, 4, 4), dtype=torch.bool, device=device)),
                "weights must be a real number dtype, got Bool",
            ),
            (dict(labels=labels + 3, count=2), "labels hold 3 .*outside 0..count \\(2\\)"),
            (dict(labels=labels - 1, count=2), "labels hold -1"),
        ]
    else:
        cases += [(dict(labels=labels + 3, count=2), "labels must lie in 0..2, got 3..3")]
    for kwargs, message in cases:
        with pytest.raises(ops.OpInputError, match=f"{op.__name__}: {message}"):
            op(**kwargs)


# ---- component_cores ----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape, density", [((20, 60, 70), 0.3), ((6, 33, 17), 0.55), ((1, 40, 40), 0.6), ((5, 1, 30), 0.5)]
)
def test_component_cores_matches_scipy(device, shape, density):
    rng = np.random.default_rng(int(np.prod(shape)))
    labels, count = ndi.label(
        ndi.binary_opening(rng.random(shape) < density) if min(shape) > 2 else rng.random(shape) < density
    )
    assert count > 0
    got = ops.component_cores(torch.from_numpy(labels.astype(np.int32)).to(device), count).cpu().numpy()
    want = scipy_cores(labels, count)
    assert (got == want).all()
    assert set(np.unique(labels[got])) == set(range(1, count + 1))  # every component keeps a core


@pytest.mark.parametrize("device", DEVICES)
def test_component_cores_hand_computed(device):
    """A 5 x 5 square with a 12-voxel tail, on two slices. Depth 3 at the square's center and at
    its neighbor toward the tail (whose nearest background, beside the tail's root, is 1 + 2 away)."""
    labels = torch.zeros((3, 9, 20), dtype=torch.int32)
    labels[0:2, 2:7, 2:7] = 1
    labels[0:2, 4, 7:19] = 1  # the tail (a vessel) drags the center of mass 2.8 voxels along C
    labels[2, 0, 0] = 3  # a single voxel touching the border: depth 1, its own core
    core = ops.component_cores(labels.to(device), 3).cpu()
    want = torch.zeros_like(core)
    want[0:2, 4, 4:6] = True
    want[2, 0, 0] = True
    assert torch.equal(core, want)
    stats = ops.component_stats(torch.where(core, labels, 0), 3)
    assert stats["center_irc"][0].tolist() == [0.5, 4.0, 4.5]
    assert ops.component_stats(labels, 3)["center_irc"][0, 2].item() > 6.7
    empty = ops.component_cores(torch.zeros((2, 3, 4), dtype=torch.int32, device=device), 0)
    assert empty.dtype == torch.bool and not empty.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, density", [((14, 30, 34), 0.35), ((6, 17, 9), 0.6), ((1, 20, 20), 0.6)])
def test_component_cores_3d_unit_spacing_matches_scipy(device, shape, density):
    """With a unit spacing, depth is scipy's 3D taxicab chamfer distance (the array border as background)."""
    rng = np.random.default_rng(int(np.prod(shape)) + 1)
    mask = rng.random(shape) < density
    labels, count = ndi.label(ndi.binary_opening(mask) if min(shape) > 2 else mask)
    assert count > 0
    got = ops.component_cores(torch.from_numpy(labels.astype(np.int32)).to(device), count, (1.0, 1.0, 1.0))
    depth = ndi.distance_transform_cdt(np.pad(labels > 0, 1), metric="taxicab")[1:-1, 1:-1, 1:-1]
    deepest = np.asarray(ndi.maximum(depth, labels, np.arange(count + 1)))
    assert (got.cpu().numpy() == ((labels > 0) & (depth == deepest[labels]))).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spacing", [(2.5, 0.7, 0.7), (0.8, 0.7, 0.7), (1.0, 0.6, 0.9)])
def test_component_cores_3d_matches_brute_force(device, spacing):
    rng = np.random.default_rng(7)
    labels, count = ndi.label(ndi.binary_opening(rng.random((9, 22, 25)) < 0.45))
    assert count > 1
    got = ops.component_cores(torch.from_numpy(labels.astype(np.int32)).to(device), count, spacing).cpu().numpy()
    assert (got == brute_force_cores_3d(labels, count, spacing)).all()
    assert set(np.unique(labels[got])) == set(range(1, count + 1))


@pytest.mark.parametrize("device", DEVICES)
def test_component_cores_3d_finds_a_nodule_on_a_sheet(device):
    """A 10 mm ball joined to a 2 mm sheet lying in the slice plane (the diaphragm's dome cut by
    thick slices): the sheet is deepest in-plane, the ball's center in 3D."""
    spacing = (0.8, 0.7, 0.7)
    g = np.indices((30, 60, 60)).astype(np.float64)
    ball = sum(((g[k] - c) * spacing[k]) ** 2 for k, c in enumerate((10, 20, 20))) <= 25
    labels = ball.astype(np.int32)
    labels[15:18, 5:55, 5:55] = 1  # slices 15-17: the ball reaches slice 16
    assert ndi.label(labels)[1] == 1
    volume = torch.from_numpy(labels).to(device)
    core = ops.component_cores(volume, 1, spacing).cpu().numpy()
    assert np.allclose(ndi.center_of_mass(core), (10, 20, 20), atol=1.0)
    assert np.argwhere(core)[:, 0].max() <= 12  # on the ball, clear of the sheet
    in_plane = ops.component_cores(volume, 1).cpu().numpy()
    assert np.argwhere(in_plane)[:, 0].min() >= 15  # in-plane, only the sheet


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "spacing, message",
    [
        ((1.0, 1.0), "spacing must hold 3 numbers \\(slice, row, column mm\\), got 2"),
        ((1.0, 0.0, 1.0), "spacing must be finite and positive, got 0"),
        ((1.0, -0.5, 1.0), "spacing must be finite and positive, got -0.5"),
        ((float("nan"), 1.0, 1.0), "spacing must be finite and positive, got nan"),
    ],
)
def test_component_cores_rejects_bad_spacing(device, spacing, message):
    labels = torch.ones((2, 3, 4), dtype=torch.int32, device=device)
    with pytest.raises(ops.OpInputError, match=f"component_cores: {message}"):
        ops.component_cores(labels, 1, spacing)


# ---- lung_field, near_mask ----------------------------------------------------------------


def _chest(seed: int) -> np.ndarray:
    """A body (40 HU) in outside air (-1000) with two noisy lungs (-850), vessels (30) in them,
    a pocket of bowel gas (-1000) and a trachea (-1000) inside the body."""
    rng = np.random.default_rng(seed)
    g = np.indices((20, 64, 80), dtype=np.float64)
    hu = np.full(g.shape[1:], -1000.0)
    hu[((g[1] - 32) / 28) ** 2 + ((g[2] - 40) / 36) ** 2 <= 1] = 40
    for c in (22, 58):
        hu[(g[0] < 16) & (((g[1] - 30) / 18) ** 2 + ((g[2] - c) / 12) ** 2 <= 1)] = -850
    hu += rng.normal(0, 20, hu.shape) * (hu < -500)
    hu[:, 28:31, 20:24] = 30  # vessels: holes in each slice of the left lung
    hu[17:20, 40:46, 36:44] = -1000  # bowel gas below the lungs
    hu[:, 30:33, 39:42] = -1000  # the trachea
    return np.rint(hu).astype(np.int16)


@pytest.mark.parametrize("device", DEVICES)
def test_lung_field_matches_scipy_on_a_phantom_chest(device):
    hu = _chest(3)
    got = ops.lung_field(torch.from_numpy(hu).to(device)).cpu().numpy()
    want = scipy_lung_field(hu)
    assert (got == want).all()
    assert got[8, 30, 22] and got[8, 29, 21]  # a lung, and a vessel inside it
    assert not got[18, 42, 40] and not got[8, 31, 40] and not got[0, 0, 0]  # gas, trachea, outside
    assert not ops.lung_field(torch.full((3, 8, 9), 40, dtype=torch.int16, device=device)).any()


def test_lung_field_matches_scipy_on_the_real_ct(test_data):
    from lunakit.io import ct

    hu = ct.load(require(test_data / REAL_CT)).hu
    got = ops.lung_field(torch.from_numpy(hu)).numpy()
    assert (got == scipy_lung_field(hu)).all()
    assert got.mean() > 0.05


@pytest.mark.parametrize("device", DEVICES)
def test_near_mask_matches_brute_force(device):
    rng = np.random.default_rng(5)
    mask = rng.random((12, 20, 24)) < 0.01
    centers = rng.uniform((-3, -3, -3), (15, 23, 27), size=(40, 3))
    spacing, margin = (2.5, 0.7, 0.9), 3.0
    got = ops.near_mask(torch.from_numpy(mask).to(device), torch.from_numpy(centers).to(device), spacing, margin)
    voxels = np.argwhere(mask).astype(np.float64)
    dist = np.sqrt((((voxels[None] - centers[:, None]) * spacing) ** 2).sum(axis=2)).min(axis=1)
    assert (got.cpu().numpy() == (dist <= margin)).all()
    assert 0 < got.sum() < len(centers)
    empty = ops.near_mask(torch.zeros_like(torch.from_numpy(mask)), torch.from_numpy(centers), spacing, margin)
    assert not empty.any()


def test_lung_ops_reject_bad_input():
    mask = torch.zeros((4, 5, 6), dtype=torch.bool)
    centers = torch.zeros((2, 3))
    cases = [
        (lambda: ops.lung_field(torch.zeros((4, 5))), "lung_field: hu must be \\[I, R, C\\], got 2 dims"),
        (lambda: ops.lung_field(torch.zeros((2, 3, 4), dtype=torch.bool)), "lung_field: hu must be a real number"),
        (lambda: ops.near_mask(mask.int(), centers, (1, 1, 1), 1.0), "near_mask: mask must be bool"),
        (lambda: ops.near_mask(mask, centers[:, :2], (1, 1, 1), 1.0), "near_mask: centers_irc must be \\[K, 3\\]"),
        (lambda: ops.near_mask(mask, centers, (1, 0, 1), 1.0), "near_mask: spacing must be finite and positive"),
        (lambda: ops.near_mask(mask, centers, (1, 1, 1), -1.0), "near_mask: margin_mm must be finite and >= 0"),
        (lambda: ops.near_mask(mask, centers * float("nan"), (1, 1, 1), 1.0), "near_mask: centers_irc must be finite"),
    ]
    for call, message in cases:
        with pytest.raises(ops.OpInputError, match=message):
            call()


# ---- the pipeline's grouping chain, and the op machinery ----------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_grouping_chain_matches_scipy(device):
    """threshold -> erode -> label -> weighted centers -> crops, as the pipeline runs it."""
    rng = np.random.default_rng(11)
    shape = (24, 48, 48)
    hu = rng.integers(-1200, 1500, size=shape).astype(np.int16)
    prob = ndi.gaussian_filter(rng.random(shape), 2.0)
    mask = prob > np.quantile(prob, 0.9)
    eroded = ndi.binary_erosion(mask, iterations=1)
    labels, count = ndi.label(eroded)
    weights = np.clip(hu, -1000, 1000).astype(np.float64) + 1001
    centers = np.array(ndi.center_of_mass(weights, labels, np.arange(1, count + 1))).reshape(count, 3)
    crops = crops_reference(hu, centers, (8, 12, 12))

    hu_t = torch.from_numpy(hu).to(device)
    got_eroded = ops.binary_erode(torch.from_numpy(mask).to(device))
    got_labels, got_count = ops.label_components(got_eroded)
    stats = ops.component_stats(got_labels, got_count, hu_t.clamp(-1000, 1000).double() + 1001)
    got_crops = ops.extract_crops(hu_t, stats["center_irc"], (8, 12, 12))
    assert got_count == count > 3
    np.testing.assert_allclose(stats["center_irc"].cpu().numpy(), centers, rtol=1e-9)
    np.testing.assert_array_equal(got_crops.cpu().numpy(), crops)


def test_ops_run_inside_torchscript():
    @torch.jit.script
    def pipeline(mask: torch.Tensor, hu: torch.Tensor):
        eroded = torch.ops.lunakit.binary_erode(mask)
        labels, count = torch.ops.lunakit.label_components(eroded, 6)
        stats = torch.ops.lunakit.component_stats(labels, count, hu.to(torch.float64) + 1001.0)
        crops = torch.ops.lunakit.extract_crops(hu, stats[3], [4, 6, 6], "shift", -1000.0, -1000.0, 1000.0)
        return crops, count

    mask = torch.zeros((10, 12, 12), dtype=torch.bool)
    mask[2:7, 3:9, 3:9] = True
    hu = torch.arange(10 * 12 * 12, dtype=torch.int16).reshape(10, 12, 12)
    crops, count = pipeline(mask, hu)
    assert count == 1 and tuple(crops.shape) == (1, 1, 4, 6, 6)
    eroded_center = ndi.center_of_mass(hu.numpy().astype(np.float64) + 1001, ndi.binary_erosion(mask.numpy()))
    want = crops_reference(hu.numpy(), [eroded_center], (4, 6, 6))
    np.testing.assert_array_equal(crops.numpy(), want)


def test_opcheck():
    """Schemas, fake kernels and dispatch agree (torch.library.opcheck)."""
    rng = np.random.default_rng(2)
    volume = torch.from_numpy(rng.integers(-2000, 2000, size=(12, 14, 16), dtype=np.int16))
    centers = torch.tensor([[2.0, 3.5, 15.0], [6.0, 7.0, 8.0]])
    mask = torch.from_numpy(rng.random((8, 9, 10)) < 0.5)
    labels, count = ops.label_components(mask)
    weights = torch.from_numpy(rng.random((8, 9, 10)))
    checks = [
        (torch.ops.lunakit.extract_crops.default, (volume, centers, [4, 6, 8], "shift", -1000.0, -1000.0, 1000.0), {}),
        (torch.ops.lunakit.extract_crops.default, (volume.float(), centers, [5, 6, 7], "pad", 0.0, -500.0, 500.0), {}),
        (
            torch.ops.lunakit.extract_crops_into.default,
            (volume, centers, [4, 6, 8], "pad", -1000.0, -1000.0, 1000.0),
            {"out": torch.empty((2, 1, 4, 6, 8))},
        ),
        (torch.ops.lunakit.binary_erode.default, (mask,), {}),
        (torch.ops.lunakit.component_stats.default, (labels, count, weights), {}),
        (torch.ops.lunakit.component_stats.default, (labels, count, None), {}),
        (torch.ops.lunakit.label_components.default, (mask, 18), {}),
        (torch.ops.lunakit.component_cores.default, (labels, count), {}),
        (torch.ops.lunakit.component_cores.default, (labels, count, [2.5, 0.7, 0.7]), {}),
    ]
    for op, args, kwargs in checks:
        torch.library.opcheck(op, args, kwargs)


def test_fake_kernels_give_shapes_without_data():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()):
        volume = torch.empty((300, 512, 512), dtype=torch.int16)
        crops = ops.extract_crops(volume, torch.empty((7, 3)), (32, 48, 48))
        assert tuple(crops.shape) == (7, 1, 32, 48, 48) and crops.dtype == torch.float32
        eroded = ops.binary_erode(torch.empty((300, 512, 512), dtype=torch.bool))
        assert eroded.dtype == torch.bool and tuple(eroded.shape) == (300, 512, 512)
        labels, count = ops.label_components(eroded, 6)
        assert labels.dtype == torch.int32 and isinstance(count, torch.SymInt)  # data-dependent
        stats = ops.component_stats(torch.empty((3, 4, 5), dtype=torch.int32), 9)
        assert tuple(stats["bbox_max"].shape) == (9, 3) and stats["center_irc"].dtype == torch.float64
        core = ops.component_cores(torch.empty((3, 4, 5), dtype=torch.int32), 9)
        assert core.dtype == torch.bool and tuple(core.shape) == (3, 4, 5)
