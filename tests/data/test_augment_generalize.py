"""The generalization augmentations (zoom, blur, contrast, shift): each does what it says,
measured on the output, against scipy or a hand computation; shapes kept; labels kept; off
means no draw (other augmentations unchanged)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from lunakit.data.augment import (
    AugmentConfig,
    AugmentError,
    augment_batch,
    augment_intensity,
    gaussian_blur_plane,
    parse_augmentations,
    random_affine_matrices,
    scale_shift_hu,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_parse_new_names_and_default_strengths() -> None:
    cfg = parse_augmentations("zoom,blur,contrast,shift")
    assert (cfg.zoom, cfg.blur, cfg.contrast, cfg.shift) == (0.3, 1.0, 0.1, 30.0)
    assert not cfg.flip and cfg.noise == 0 and cfg.spatial and cfg.intensity
    cfg = parse_augmentations("shift=50,contrast=0.2")
    assert (cfg.shift, cfg.contrast, cfg.zoom, cfg.blur) == (50.0, 0.2, 0.0, 0.0)
    assert AugmentConfig().zoom == 0 and not AugmentConfig().intensity  # the book's set is unchanged


@pytest.mark.parametrize(
    "spec, message",
    [
        ("contrast=1", "contrast must be < 1"),
        ("zoom=9", "zoom must be <="),
        ("shift=-5", ">= 0"),
        ("blur=x", "not a number"),
    ],
)
def test_bad_strengths(spec: str, message: str) -> None:
    with pytest.raises(AugmentError, match=message):
        parse_augmentations(spec)


def test_shift_moves_the_mean_by_the_drawn_offset() -> None:
    images = torch.zeros(400, 1, 4, 6, 6)
    out = augment_batch(images, AugmentConfig.none(), generator=gen(), shift=40.0)
    per_sample = out.mean(dim=(1, 2, 3, 4))
    # each sample is shifted as a whole (constant image stays constant) by a value in [-40, 40]
    assert torch.allclose(out, per_sample.view(-1, 1, 1, 1, 1).expand_as(out))
    assert per_sample.abs().max() <= 40 and per_sample.abs().max() > 35
    # uniform on [-40, 40]: mean 0, std 40 / sqrt(3)
    assert abs(float(per_sample.mean())) < 4
    assert abs(float(per_sample.std()) - 40 / math.sqrt(3)) < 3


def test_contrast_scales_about_water_and_changes_the_std() -> None:
    torch.manual_seed(0)
    images = torch.randn(200, 1, 8, 8, 8) * 100  # std 100 HU about 0
    out = augment_batch(images, AugmentConfig.none(), generator=gen(1), contrast=0.25)
    ratio = out.std(dim=(1, 2, 3, 4)) / images.std(dim=(1, 2, 3, 4))
    means_ratio = out.mean(dim=(1, 2, 3, 4)) / images.mean(dim=(1, 2, 3, 4))
    assert torch.all(ratio > 0.75 - 1e-4) and torch.all(ratio < 1.25 + 1e-4)
    assert torch.allclose(ratio, means_ratio, rtol=1e-3)  # one factor per sample, pivot 0
    assert float(ratio.max() - ratio.min()) > 0.4


def test_scale_shift_by_hand_and_clipped_to_the_window() -> None:
    x = torch.tensor([[-1000.0, -500.0, 0.0, 100.0, 990.0]]).view(1, 1, 5)
    out = scale_shift_hu(x, torch.tensor([1.1]), torch.tensor([20.0]))
    expected = torch.tensor([-1000.0, -530.0, 20.0, 130.0, 1000.0])  # -1080 and 1109 clipped
    assert torch.allclose(out.flatten(), expected)


def test_blur_matches_scipy_and_keeps_constants() -> None:
    rng = np.random.default_rng(0)
    plane = rng.normal(0, 50, (2, 3, 20, 24)).astype(np.float32)
    sigma = torch.tensor([1.3, 0.0])
    out = gaussian_blur_plane(torch.from_numpy(plane), sigma).numpy()
    reference = ndimage.gaussian_filter(plane[0], sigma=(0, 1.3, 1.3), mode="nearest", truncate=3.0)
    # scipy's radius is int(3 * 1.3 + 0.5) = 4, ours ceil(3 * 1.3) = 4: the same kernel
    assert np.allclose(out[0], reference, atol=1e-3)
    assert np.array_equal(out[1], plane[1])  # sigma 0: unchanged
    const = torch.full((1, 1, 3, 10, 10), -700.0)
    assert torch.allclose(gaussian_blur_plane(const, torch.tensor([2.0])), const)


def test_blur_sigmas_differ_per_sample() -> None:
    rng = np.random.default_rng(1)
    plane = rng.normal(0, 50, (3, 1, 2, 16, 18)).astype(np.float32)  # [B, 1, I, R, C]
    sigmas = [0.5, 2.0, 0.0]
    out = gaussian_blur_plane(torch.from_numpy(plane), torch.tensor(sigmas)).numpy()
    for b, s in enumerate(sigmas):
        reference = ndimage.gaussian_filter(plane[b], sigma=(0, 0, s, s), mode="nearest", truncate=3.0)
        assert np.allclose(out[b], reference, atol=1e-3), s


def test_blur_lowers_the_noise_std() -> None:
    torch.manual_seed(1)
    images = torch.randn(16, 1, 4, 32, 32) * 30
    out = augment_batch(images, AugmentConfig.none(), generator=gen(2), blur=2.0)
    assert out.shape == images.shape
    ratio = out.std(dim=(1, 2, 3, 4)) / images.std(dim=(1, 2, 3, 4))
    assert torch.all(ratio <= 1.0 + 1e-6) and float(ratio.min()) < 0.4  # sigma up to 2 voxels


def disc_radius(image: np.ndarray) -> float:
    return math.sqrt(float((image > 0.5).sum()) / math.pi)


def test_zoom_rescales_rows_and_columns_together() -> None:
    size = 64
    r = np.arange(size) - (size - 1) / 2
    disc = ((r[:, None] ** 2 + r[None, :] ** 2) <= 12.0**2).astype(np.float32)
    images = torch.from_numpy(np.repeat(disc[None, None], 64, axis=0))  # [B, 1, R, C]
    cfg = AugmentConfig.none()
    from dataclasses import replace

    cfg = replace(cfg, zoom=0.5)
    theta = random_affine_matrices(64, (size, size), cfg, gen(3))
    factors = theta[:, 0, 0].numpy()
    assert np.allclose(theta[:, 0, 0], theta[:, 1, 1])  # one factor for rows and columns
    assert factors.min() >= 1 / 1.5 - 1e-9 and factors.max() <= 1.5 + 1e-9
    assert factors.min() < 0.8 and factors.max() > 1.25  # log-uniform over the whole range
    out = augment_batch(images, cfg, generator=gen(3))
    radii = np.array([disc_radius(o[0]) for o in out.numpy()])
    # sampling at factor f shows the disc 1/f as large
    assert np.allclose(radii, 12.0 / factors, rtol=0.06)


def test_zoom_of_3d_crops_has_its_own_slice_factor() -> None:
    cfg = AugmentConfig(flip=False, offset=0.0, scale=0.0, rotate=False, noise=0.0, zoom=0.4)
    theta = random_affine_matrices(200, (32, 48, 48), cfg, gen(4))
    in_plane, slices = theta[:, 0, 0], theta[:, 2, 2]  # grid order: x = C, y = R, z = I
    assert torch.allclose(theta[:, 0, 0], theta[:, 1, 1])
    assert not torch.allclose(in_plane, slices)
    assert float(slices.min()) >= 1 / 1.4 - 1e-9 and float(slices.max()) <= 1.4 + 1e-9


def test_off_means_no_draw_so_book_augmentation_is_unchanged() -> None:
    images = torch.randn(4, 1, 8, 12, 12)
    book = AugmentConfig()
    a = augment_batch(images, book, generator=gen(5))
    b = augment_batch(images, book, generator=gen(5), zoom=0.0, blur=0.0, contrast=0.0, shift=0.0)
    assert torch.equal(a, b)
    assert augment_intensity(images, AugmentConfig.none(), gen(5)) is images


def test_segmentation_labels_follow_zoom() -> None:
    """The segment task warps labels with the same matrix; zoom changes it like any spatial one."""
    from lunakit.data.augment import apply_affine

    cfg = AugmentConfig(flip=False, offset=0.0, scale=0.0, rotate=False, noise=0.0, zoom=0.5)
    size = 48
    r = np.arange(size) - (size - 1) / 2
    disc = torch.from_numpy(((r[:, None] ** 2 + r[None, :] ** 2) <= 8.0**2).astype(np.float32))
    stacks = (disc * 1040 - 1000).expand(6, 7, size, size).clone()  # lesion 40 HU in air
    labels = disc.bool().expand(6, 1, size, size).clone()
    theta = random_affine_matrices(6, (size, size), cfg, gen(6))
    warped = apply_affine(stacks, theta)
    warped_labels = apply_affine(labels.float(), theta) > 0.5
    assert warped.shape == stacks.shape and warped_labels.shape == labels.shape
    agree = ((warped[:, 3:4] > -480) == warped_labels).float().mean()
    assert float(agree) > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(2)
    images = torch.randn(4, 1, 8, 24, 24) * 200
    sigma = torch.tensor([0.0, 0.7, 1.5, 2.5])
    cpu = gaussian_blur_plane(images, sigma)
    gpu = gaussian_blur_plane(images.cuda(), sigma.cuda())
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-3)
    factor, offset = torch.tensor([0.9, 1.0, 1.1, 1.05]), torch.tensor([-20.0, 0.0, 30.0, 5.0])
    assert torch.allclose(
        scale_shift_hu(images.cuda(), factor.cuda(), offset.cuda()).cpu(), scale_shift_hu(images, factor, offset)
    )
    cfg = parse_augmentations("flip,offset,scale,rotate,noise,zoom,blur,contrast,shift")
    out = augment_batch(images.cuda(), cfg, generator=torch.Generator(device="cuda").manual_seed(0))
    assert out.shape == images.shape and out.device.type == "cuda" and torch.isfinite(out).all()
