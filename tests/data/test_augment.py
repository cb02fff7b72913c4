"""lunakit.data.augment: each transform against a hand-computed result or a torch reference."""

from __future__ import annotations

import math

import pytest
import torch

from lunakit.data.augment import (
    AugmentConfig,
    AugmentError,
    affine_matrices,
    apply_affine,
    augment_batch,
    parse_augmentations,
    random_affine_matrices,
)
from lunakit.errors import LunakitError

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


def theta_for(shape, batch=1, flip=(False,) * 3, offset=(0.0,) * 3, scale=(1.0,) * 3, angle=0.0):
    """A fixed matrix for every sample, parameters in array order (I, R, C) or (R, C)."""
    n = len(shape)
    return affine_matrices(
        tuple(shape),
        torch.tensor([flip[:n]] * batch, dtype=torch.bool),
        torch.tensor([offset[:n]] * batch, dtype=torch.float64),
        torch.tensor([scale[:n]] * batch, dtype=torch.float64),
        torch.full((batch,), angle, dtype=torch.float64),
    )


def point_volume(shape, where, device="cpu"):
    x = torch.zeros((1, 1, *shape), device=device)
    x[(0, 0, *where)] = 1.0
    return x


def brightest(x):
    flat = int(torch.argmax(x[0, 0]).item())
    out = []
    for n in reversed(x.shape[2:]):
        out.append(flat % n)
        flat //= n
    return tuple(reversed(out))


def center_of_mass(x):
    """Per sample [B, n] in array order, of a [B, 1, *spatial] non-negative tensor."""
    spatial = x.shape[2:]
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in spatial], indexing="ij")
    w = x[:, 0].double()
    total = w.sum(dim=tuple(range(1, w.dim())))
    return torch.stack([(w * g).sum(dim=tuple(range(1, w.dim()))) / total for g in grids], dim=1)


# ------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("device", DEVICES)
def test_identity_matrix_returns_the_input(device):
    x = torch.randn(3, 1, 8, 12, 10, device=device) * 500
    y = apply_affine(x, theta_for((8, 12, 10), batch=3))
    assert torch.allclose(y, x, atol=1e-5 * 500)


def test_identity_config_returns_a_copy_of_the_input():
    x = torch.randn(2, 1, 4, 6, 6)
    y = augment_batch(x, AugmentConfig.none())
    assert torch.equal(y, x)
    assert y.data_ptr() != x.data_ptr()


# ------------------------------------------------------------------------------- offset


def test_offset_moves_a_point_by_the_hand_computed_shift():
    # Grid units: an offset of t half-widths is t * size / 2 voxels, and the sampler reads the
    # input at p + shift, so the content moves to p - shift.
    shape = (16, 24, 32)
    shift_vox = (2, 3, -4)
    t = tuple(s * 2.0 / n for s, n in zip(shift_vox, shape))  # (0.25, 0.25, -0.25)
    x = point_volume(shape, (5, 10, 20))
    y = apply_affine(x, theta_for(shape, offset=t))
    assert brightest(y) == (5 - 2, 10 - 3, 20 + 4)
    assert y.max().item() == pytest.approx(1.0, abs=1e-5)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_random_offset_moves_each_crop_by_its_matrix():
    shape = (16, 24, 32)
    cfg = AugmentConfig(flip=False, offset=0.2, scale=0.0, rotate=False, noise=0.0)
    x = point_volume(shape, (8, 12, 16)).repeat(6, 1, 1, 1, 1)
    theta = random_affine_matrices(6, shape, cfg, torch.Generator().manual_seed(3))
    y = apply_affine(x, theta)
    # Expected shift per sample, converted by hand from grid units (x, y, z) to voxels (i, r, c).
    shift_irc = theta[:, :, 3].flip(-1) * torch.tensor(shape, dtype=torch.float64) / 2
    assert torch.all(shift_irc.abs() <= 0.2 * torch.tensor(shape) / 2 + 1e-9)
    assert torch.all(shift_irc.abs().amax(dim=1) > 0.1)  # it really moves
    expected = torch.tensor([8.0, 12.0, 16.0], dtype=torch.float64) - shift_irc
    assert torch.allclose(center_of_mass(y), expected, atol=1e-4)
    # augment_batch draws the same matrices from the same seed.
    z = augment_batch(x, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z, y, atol=1e-6)


# ------------------------------------------------------------------------------- flip


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1, 2)])
def test_flip_mirrors_exactly(axes):
    shape = (6, 10, 8)
    x = torch.randn(2, 1, *shape)
    flip = tuple(a in axes for a in range(3))
    y = apply_affine(x, theta_for(shape, batch=2, flip=flip))
    assert torch.allclose(y, x.flip([2 + a for a in axes]), atol=1e-5)


def test_random_flip_gives_only_mirror_images():
    x = torch.randn(16, 1, 4, 6, 6)
    cfg = AugmentConfig(flip=True, offset=0.0, scale=0.0, rotate=False, noise=0.0)
    y = augment_batch(x, cfg, generator=torch.Generator().manual_seed(0))
    seen = set()
    for b in range(16):
        for mask in range(8):
            dims = [2 + a for a in range(3) if mask >> a & 1]
            if torch.allclose(y[b], x[b : b + 1].flip(dims)[0] if dims else x[b], atol=1e-5):
                seen.add(mask)
                break
        else:
            pytest.fail(f"sample {b} is not a mirror image of its input")
    assert len(seen) > 2


# ------------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotation_by_quarter_turns_equals_rot90(device, k):
    x = torch.randn(2, 1, 5, 12, 12, device=device)
    y = apply_affine(x, theta_for((5, 12, 12), batch=2, angle=k * math.pi / 2))
    assert torch.allclose(y, torch.rot90(x, k, dims=(3, 4)), atol=1e-4)


def test_rotation_of_2d_stacks_equals_rot90():
    x = torch.randn(3, 7, 16, 16)
    y = apply_affine(x, theta_for((16, 16), batch=3, angle=math.pi / 2))
    assert torch.allclose(y, torch.rot90(x, 1, dims=(2, 3)), atol=1e-4)


def test_rotation_of_a_non_square_plane_is_in_voxel_units():
    # R = 24, C = 32: plane center (11.5, 15.5). Input voxel (13, 20) is (+1.5, +4.5) from it;
    # a quarter turn (output (r, c) reads input (c, -r), centered) puts it at (-4.5, +1.5),
    # i.e. voxel (7, 17): distances are kept in voxels, not in grid units.
    shape = (3, 24, 32)
    x = point_volume(shape, (1, 13, 20))
    y = apply_affine(x, theta_for(shape, angle=math.pi / 2))
    assert brightest(y) == (1, 7, 17)
    assert y.max().item() == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------- scale


def test_scale_zooms_about_the_center():
    # Column axis, C = 32 (center 15.5); a point at c = 22 (+6.5) under zoom factor 2.6 is
    # read back at output offset 6.5 / 2.6 = 2.5, i.e. c = 18.
    shape = (3, 8, 32)
    x = point_volume(shape, (1, 4, 22))
    y = apply_affine(x, theta_for(shape, scale=(1.0, 1.0, 2.6)))
    assert brightest(y) == (1, 4, 18)
    assert y.max().item() == pytest.approx(1.0, abs=1e-5)


def test_random_scale_stays_in_range():
    cfg = AugmentConfig(flip=False, offset=0.0, scale=0.2, rotate=False, noise=0.0)
    theta = random_affine_matrices(200, (4, 6, 6), cfg, torch.Generator().manual_seed(1))
    diag = torch.diagonal(theta[:, :, :3], dim1=1, dim2=2)
    assert torch.all((diag >= 0.8) & (diag <= 1.2))
    assert diag.min() < 0.85 and diag.max() > 1.15
    assert torch.all(theta[:, :, 3] == 0)


# ------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("device", DEVICES)
def test_noise_has_the_requested_standard_deviation(device):
    x = torch.full((8, 1, 16, 24, 24), 100.0, device=device)
    cfg = AugmentConfig(flip=False, offset=0.0, scale=0.0, rotate=False, noise=25.0)
    y = augment_batch(x, cfg, generator=torch.Generator(device=device).manual_seed(0))
    d = (y - x).double().cpu()
    assert abs(d.mean().item()) < 0.5  # 73k samples: std of the mean is 0.09
    assert d.std().item() == pytest.approx(25.0, rel=0.02)


# ------------------------------------------------------------------------------- whole batch


@pytest.mark.parametrize("device", DEVICES)
def test_full_augmentation_keeps_shape_device_dtype_and_is_seeded(device):
    x = torch.randn(4, 1, 8, 12, 12, device=device) * 300
    a = augment_batch(x, generator=torch.Generator(device=device).manual_seed(5))
    b = augment_batch(x, generator=torch.Generator(device=device).manual_seed(5))
    c = augment_batch(x, generator=torch.Generator(device=device).manual_seed(6))
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, x, atol=1.0)


def test_keyword_overrides():
    x = torch.randn(2, 1, 4, 6, 6)
    assert torch.equal(augment_batch(x, flip=False, offset=0.0, scale=0.0, rotate=False, noise=0.0), x)
    with pytest.raises(AugmentError, match="bogus"):
        augment_batch(x, bogus=1)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(2, 3, dtype=torch.float32), torch.zeros(1, 1, 4, 4, 4, dtype=torch.int16), [[1.0]]],
)
def test_bad_batches_are_refused(bad):
    with pytest.raises(LunakitError):
        augment_batch(bad)


def test_bad_matrix_shape_is_refused():
    with pytest.raises(AugmentError, match="theta"):
        apply_affine(torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 2, 3))


# ------------------------------------------------------------------------------- parsing


def test_parse_all_names_gives_book_strengths():
    assert parse_augmentations("flip,offset,scale,rotate,noise") == AugmentConfig()


def test_parse_subset_turns_the_rest_off():
    cfg = parse_augmentations("flip, noise")
    assert cfg == AugmentConfig(flip=True, offset=0.0, scale=0.0, rotate=False, noise=25.0)


def test_parse_values_and_none():
    cfg = parse_augmentations("offset=0.3,noise=10")
    assert cfg.offset == 0.3 and cfg.noise == 10.0 and not cfg.flip and cfg.scale == 0.0
    assert parse_augmentations("none") == AugmentConfig.none()
    assert parse_augmentations("") == AugmentConfig.none()
    assert parse_augmentations(None) == AugmentConfig.none()
    assert parse_augmentations(["rotate"]) == AugmentConfig(flip=False, offset=0.0, scale=0.0, rotate=True, noise=0.0)


@pytest.mark.parametrize(
    "spec, word",
    [
        ("flip,warp", "warp"),
        ("flip,flip", "twice"),
        ("flip=1", "no value"),
        ("offset=abc", "abc"),
        ("noise=-1", "noise"),
        ("scale=1.5", "scale"),
        ("offset=nan", "offset"),
    ],
)
def test_parse_bad_specs(spec, word):
    with pytest.raises(AugmentError, match=word) as info:
        parse_augmentations(spec)
    assert isinstance(info.value, LunakitError)
    assert "\n" not in str(info.value)
