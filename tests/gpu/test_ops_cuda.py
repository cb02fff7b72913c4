"""CUDA kernels vs the CPU ones on pipeline-sized inputs (tests/gpu/run.sh runs these on a GPU).

tests/test_ops.py holds the reference cases (scipy, numpy) for both devices; here the CUDA
results must equal the CPU op's, bit for bit where the CPU result is exact, on volumes the
size of a CT scan, and must not depend on the run, the stream or the device index.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import lunakit._core
from lunakit.pipeline import ops

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and lunakit._core.built_with_cuda()),
    reason="needs a GPU and lunakit built with CUDA (tests/gpu/run.sh)",
)

SHAPE = (160, 256, 256)


def blob_mask(seed: int, shape=SHAPE, fraction: float = 0.15) -> torch.Tensor:
    """Smooth blobs covering ~fraction of the voxels (many touching the volume's faces)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(ndi.gaussian_filter(rng.standard_normal([s // 8 for s in shape]), 1.0).astype(np.float32))
    field = torch.nn.functional.interpolate(coarse[None, None], size=shape, mode="trilinear")[0, 0]
    return field > torch.quantile(field[::4, ::4, ::4].flatten(), 1.0 - fraction)


def noise_mask(seed: int, shape=SHAPE, density: float = 0.3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random(shape) < density)


@pytest.fixture(scope="module")
def hu() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).integers(-1500, 2500, size=SHAPE, dtype=np.int16))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("kind", ["blobs", "sparse_blobs", "noise", "dense_noise"])
def test_label_and_stats_equal_cpu(hu, connectivity, kind):
    mask = {
        "blobs": lambda: blob_mask(connectivity),
        "sparse_blobs": lambda: blob_mask(connectivity, fraction=0.002),
        "noise": lambda: noise_mask(connectivity, density=0.2),
        "dense_noise": lambda: noise_mask(connectivity, density=0.6),
    }[kind]()
    labels_cpu, count_cpu = ops.label_components(mask, connectivity)
    labels_gpu, count_gpu = ops.label_components(mask.cuda(), connectivity)
    assert count_gpu == count_cpu
    assert torch.equal(labels_gpu.cpu(), labels_cpu)
    weights = hu.clamp(-1000, 1000).float() + 1001
    for w in (None, weights):
        cpu = ops.component_stats(labels_cpu, count_cpu, w)
        gpu = ops.component_stats(labels_gpu, count_gpu, None if w is None else w.cuda())
        for key in ("voxel_count", "bbox_min", "bbox_max"):
            assert torch.equal(gpu[key].cpu(), cpu[key]), key
        if w is None:  # integer sums: exact
            assert torch.equal(gpu["center_irc"].cpu(), cpu["center_irc"])
        torch.testing.assert_close(gpu["center_irc"].cpu(), cpu["center_irc"], rtol=1e-12, atol=0)
        torch.testing.assert_close(gpu["weight_sum"].cpu(), cpu["weight_sum"], rtol=1e-12, atol=0)


def test_label_is_deterministic_and_matches_scipy_on_scan_size():
    mask = blob_mask(7, shape=(300, 512, 512), fraction=0.001)
    runs = [ops.label_components(mask.cuda()) for _ in range(4)]
    for labels, count in runs[1:]:
        assert count == runs[0][1] and torch.equal(labels, runs[0][0])
    want, want_count = ndi.label(mask.numpy())
    assert runs[0][1] == want_count
    np.testing.assert_array_equal(runs[0][0].cpu().numpy(), want)


def test_more_than_65536_components():
    mask = torch.zeros((120, 120, 80), dtype=torch.bool)
    mask[::2, ::2, ::2] = True  # 60 * 60 * 40 = 144,000 components
    labels, count = ops.label_components(mask.cuda(), 26)
    assert count == 144000
    assert torch.equal(labels.cpu(), ops.label_components(mask, 26)[0])


@pytest.mark.parametrize("mode", ["shift", "pad"])
@pytest.mark.parametrize("dtype", [torch.int16, torch.float32])
def test_crops_equal_cpu(hu, mode, dtype):
    rng = np.random.default_rng(3)
    centers = torch.from_numpy(rng.uniform(-20, np.array(SHAPE) + 20, size=(1000, 3)))
    volume = hu.to(dtype)
    cpu = ops.extract_crops(volume, centers, mode=mode)
    gpu = ops.extract_crops(volume.cuda(), centers.cuda(), mode=mode)
    assert torch.equal(gpu.cpu(), cpu)
    out = torch.empty_like(gpu)
    assert ops.extract_crops(volume.cuda(), centers.float().cuda(), mode=mode, out=out).data_ptr() == out.data_ptr()
    assert torch.equal(out.cpu(), ops.extract_crops(volume, centers.float(), mode=mode))


def test_erode_equals_cpu():
    for mask in (blob_mask(5), noise_mask(5, density=0.9), torch.ones((3, 4, 5), dtype=torch.bool)):
        assert torch.equal(ops.binary_erode(mask.cuda()).cpu(), ops.binary_erode(mask))


def test_kernels_run_on_the_current_stream():
    mask = blob_mask(9)
    hu = torch.from_numpy(np.random.default_rng(2).integers(-1000, 1000, size=SHAPE, dtype=np.int16))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        mask_gpu, hu_gpu = mask.cuda(non_blocking=True), hu.cuda(non_blocking=True)
        eroded = ops.binary_erode(mask_gpu)
        labels, count = ops.label_components(eroded)
        stats = ops.component_stats(labels, count, hu_gpu.float() + 1001)
        crops = ops.extract_crops(hu_gpu, stats["center_irc"], (8, 16, 16))
    stream.synchronize()
    labels_cpu, count_cpu = ops.label_components(ops.binary_erode(mask))
    assert count == count_cpu and torch.equal(labels.cpu(), labels_cpu)
    centers_cpu = ops.component_stats(labels_cpu, count_cpu, hu.float() + 1001)["center_irc"]
    assert torch.equal(crops.cpu(), ops.extract_crops(hu, centers_cpu, (8, 16, 16)))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_kernels_follow_the_tensor_device():
    mask = noise_mask(4, shape=(20, 30, 40))
    with torch.cuda.device(0):
        labels, count = ops.label_components(mask.to("cuda:1"))
    assert labels.device == torch.device("cuda:1")
    assert torch.equal(labels.cpu(), ops.label_components(mask)[0])


def test_bad_labels_and_mixed_devices_raise_on_cuda():
    labels = torch.zeros((4, 5, 6), dtype=torch.int32)
    labels[2, 3, 4] = 9
    with pytest.raises(
        ops.OpInputError, match=r"component_stats: labels hold 9 at irc \(2, 3, 4\), outside 0..count \(2\)"
    ):
        ops.component_stats(labels.cuda(), 2)
    with pytest.raises(ops.OpInputError, match="extract_crops: centers_irc is on cpu but volume is on cuda"):
        ops.extract_crops(torch.zeros((40, 50, 50), device="cuda"), torch.zeros((1, 3)))
    with pytest.raises(ops.OpInputError, match="extract_crops: centers_irc holds NaN"):
        ops.extract_crops(torch.zeros((40, 50, 50), device="cuda"), torch.full((1, 3), float("nan"), device="cuda"))
