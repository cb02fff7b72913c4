"""Batch augmentation for crops and slice stacks: flip, offset, scale, rotation, zoom, noise,
and the intensity changes of other scanners: HU shift, contrast, blur.

One random affine map per sample is built as a matrix and applied with
`F.affine_grid` + `F.grid_sample` on whatever device the batch lives on, so the GPU does
the work when training on a GPU and the CPU otherwise. The translation sits in the last
column of the matrix, where `affine_grid` reads it (the book wrote its offset into a row
that was later dropped, so its crops never moved).

Conventions (grid coordinates, `align_corners=False`): each spatial axis runs over
[-1, 1] edge to edge, so an offset of `t` means a shift of `t` half-widths, i.e.
`t * size / 2` voxels. The sampler reads the input at `theta @ [p, 1]` for output position
`p`, so a positive offset moves the content towards lower indices. Rotation turns the
(row, column) plane (about the slice axis of a 3D crop; the image plane of a 2D stack) in
voxel space, so a square plane rotated by 90 degrees is exactly `torch.rot90`.

Generalization (docs/training.md): `zoom` resamples as another pixel spacing and slice
thickness would (one log-uniform factor shared by rows and columns, one for the slice axis of
a 3D crop); `blur` smooths the (row, column) plane with a Gaussian of random sigma (a softer
reconstruction kernel); `contrast` scales HU about 0 (water) and `shift` adds a random HU
offset (calibration), after which HU are clipped again to the pipeline's window
[-1000, 1000]; `noise` adds white noise last. Each draws nothing when off, so the
other augmentations of a run give the same numbers as before these existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Iterable

import torch
import torch.nn.functional as F

from lunakit.errors import LunakitError

AUGMENTATION_NAMES = ("flip", "offset", "scale", "rotate", "noise", "zoom", "blur", "contrast", "shift")
HU_WINDOW = (-1000.0, 1000.0)  # what the pipeline clips CT to; contrast and shift clip to it again


DEFAULT_STRENGTHS = {"zoom": 0.3, "blur": 1.0, "contrast": 0.1, "shift": 30.0}
"""Strengths of the generalization augmentations when named without a value."""


class AugmentError(LunakitError):
    """An augmentation setting is unknown or out of range."""


@dataclass(frozen=True)
class AugmentConfig:
    """How strongly to augment. Defaults are the book's.

    flip: mirror each spatial axis with probability 1/2.
    offset: translation per axis, uniform in [-offset, offset] half-widths.
    scale: zoom per axis by a factor uniform in [1 - scale, 1 + scale].
    rotate: rotate the (row, column) plane by an angle uniform in [0, 2 pi).
    noise: add Gaussian noise with this standard deviation (HU for CT crops).
    zoom: resample by a factor log-uniform in [1 / (1 + zoom), 1 + zoom], one shared by rows
      and columns, another along the slices of a 3D crop (other pixel spacing, slice thickness).
    blur: Gaussian blur of the (row, column) plane, sigma uniform in [0, blur] voxels.
    contrast: scale HU about 0 by a factor uniform in [1 - contrast, 1 + contrast].
    shift: add an HU offset uniform in [-shift, shift].
    The last four are off unless asked for (their defaults apply when named without a value).
    """

    flip: bool = True
    offset: float = 0.1
    scale: float = 0.2
    rotate: bool = True
    noise: float = 25.0
    zoom: float = 0.0
    blur: float = 0.0
    contrast: float = 0.0
    shift: float = 0.0

    def __post_init__(self) -> None:
        for name in ("offset", "scale", "noise", "zoom", "blur", "contrast", "shift"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise AugmentError(f"augmentation {name} must be a finite number >= 0, got {value!r}")
        if self.scale >= 1:
            raise AugmentError(
                f"augmentation scale must be < 1 (a zoom factor 1 - scale must stay > 0), got {self.scale}"
            )
        if self.contrast >= 1:
            raise AugmentError(f"augmentation contrast must be < 1 (the factor must stay > 0), got {self.contrast}")
        limits = {"zoom": 3.0, "blur": 5.0, "shift": 500.0}
        for name, limit in limits.items():
            if getattr(self, name) > limit:
                raise AugmentError(f"augmentation {name} must be <= {limit:g}, got {getattr(self, name)}")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation at all."""
        return cls(flip=False, offset=0.0, scale=0.0, rotate=False, noise=0.0)

    @property
    def spatial(self) -> bool:
        """Whether any geometric transform is on (else grid sampling is skipped)."""
        return self.flip or self.offset > 0 or self.scale > 0 or self.rotate or self.zoom > 0

    @property
    def intensity(self) -> bool:
        """Whether blur, contrast or shift is on."""
        return self.blur > 0 or self.contrast > 0 or self.shift > 0

    @property
    def enabled(self) -> bool:
        return self.spatial or self.intensity or self.noise > 0


def parse_augmentations(spec: str | Iterable[str] | None) -> AugmentConfig:
    """`"flip,offset,scale,rotate,noise"` -> AugmentConfig with the named ones on (book strengths).

    Names not listed are off. Every name but flip and rotate takes an optional strength:
    `"offset=0.2,noise=10,shift=40"`. An empty spec or `"none"` turns everything off.
    """
    if spec is None:
        return AugmentConfig.none()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [str(item).strip() for item in items if str(item).strip()]
    if items == ["none"]:
        return AugmentConfig.none()
    defaults = replace(AugmentConfig(), **DEFAULT_STRENGTHS)
    chosen: dict[str, object] = {}
    for item in items:
        name, has_value, raw = item.partition("=")
        name = name.strip().lower()
        if name not in AUGMENTATION_NAMES:
            raise AugmentError(f"unknown augmentation {name!r} (known: {', '.join(AUGMENTATION_NAMES)})")
        if name in chosen:
            raise AugmentError(f"augmentation {name!r} given twice")
        if has_value:
            if name in ("flip", "rotate"):
                raise AugmentError(f"augmentation {name!r} takes no value, got {item!r}")
            try:
                chosen[name] = float(raw)
            except ValueError:
                raise AugmentError(f"augmentation {name!r}: {raw!r} is not a number") from None
        else:
            chosen[name] = getattr(defaults, name)
    off = AugmentConfig.none()
    return replace(off, **chosen)  # validated by __post_init__


# ---------------------------------------------------------------------------------------------
# Matrices


def affine_matrices(
    spatial_shape: tuple[int, ...],
    flip: torch.Tensor,
    offset: torch.Tensor,
    scale: torch.Tensor,
    angle: torch.Tensor,
) -> torch.Tensor:
    """Per-sample sampling matrices for `F.affine_grid`, from explicit parameters.

    spatial_shape: (I, R, C) for 3D or (R, C) for 2D.
    flip: bool [B, n], offset and scale (zoom factors) float [B, n], all in the array's axis
    order (I, R, C) or (R, C); angle: float [B] radians, rotating the (R, C) plane.
    Returns theta [B, n, n + 1] in grid order (x = C, y = R[, z = I]).
    """
    n = len(spatial_shape)
    if n not in (2, 3):
        raise AugmentError(f"spatial shape must be (R, C) or (I, R, C), got {tuple(spatial_shape)}")
    batch = angle.shape[0]
    dtype = torch.float64
    device = angle.device
    # Grid order is the reverse of array order: x = column, y = row, z = slice.
    sign = torch.where(flip.flip(-1), -1.0, 1.0).to(dtype)
    diag = sign * scale.flip(-1).to(dtype)  # [B, n]
    linear = torch.diag_embed(diag)  # [B, n, n]

    # Rotation of the (x, y) = (C, R) plane in voxel units: S^-1 Rot S with S = half-sizes.
    cos, sin = torch.cos(angle.to(dtype)), torch.sin(angle.to(dtype))
    half_x, half_y = spatial_shape[-1] / 2.0, spatial_shape[-2] / 2.0
    rot = torch.eye(n, dtype=dtype, device=device).repeat(batch, 1, 1)
    rot[:, 0, 0] = cos
    rot[:, 0, 1] = -sin * (half_y / half_x)
    rot[:, 1, 0] = sin * (half_x / half_y)
    rot[:, 1, 1] = cos
    linear = rot @ linear

    theta = torch.cat([linear, offset.flip(-1).to(dtype).unsqueeze(-1)], dim=-1)  # [B, n, n + 1]
    return theta


def random_affine_matrices(
    batch: int,
    spatial_shape: tuple[int, ...],
    config: AugmentConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random theta [B, n, n + 1] (float64, on the generator's device or CPU) drawn per `config`."""
    n = len(spatial_shape)
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(*shape: int) -> torch.Tensor:  # in [-1, 1)
        return torch.rand(*shape, generator=generator, device=device, dtype=torch.float64) * 2 - 1

    flip = (
        torch.rand(batch, n, generator=generator, device=device) < 0.5
        if config.flip
        else torch.zeros(batch, n, dtype=torch.bool, device=device)
    )
    offset = (
        uniform(batch, n) * config.offset
        if config.offset > 0
        else torch.zeros(batch, n, dtype=torch.float64, device=device)
    )
    scale = (
        1.0 + uniform(batch, n) * config.scale
        if config.scale > 0
        else torch.ones(batch, n, dtype=torch.float64, device=device)
    )
    angle = (
        torch.rand(batch, generator=generator, device=device, dtype=torch.float64) * (2 * math.pi)
        if config.rotate
        else torch.zeros(batch, dtype=torch.float64, device=device)
    )
    if config.zoom > 0:  # drawn last, so that the draws above do not depend on it
        log_max = math.log1p(config.zoom)
        in_plane = torch.exp(uniform(batch, 1) * log_max)
        factors = in_plane.repeat(1, n)
        if n == 3:
            factors[:, 0] = torch.exp(uniform(batch) * log_max)
        scale = scale * factors
    return affine_matrices(tuple(spatial_shape), flip, offset, scale, angle)


def apply_affine(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample [B, ch, *spatial] by theta [B, n, n + 1]; edge values extend past the border."""
    _check_images(images)
    n = images.dim() - 2
    if theta.shape != (images.shape[0], n, n + 1):
        raise AugmentError(f"theta must be [{images.shape[0]}, {n}, {n + 1}], got {list(theta.shape)}")
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def add_noise(images: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """images + N(0, std^2), drawn on the generator's device (or the images' device)."""
    if std <= 0:
        return images
    device = generator.device if generator is not None else images.device
    noise = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
    return images + noise.to(images.device) * std


def gaussian_blur_plane(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur the last two axes (row, column) of each sample with its own Gaussian sigma (voxels).

    images [B, ch, ..., R, C], sigma [B] (0 = unchanged). Kernels are truncated at
    ceil(3 sigma) and normalized; edges replicate, so a constant image stays constant. One
    weighted sum over a sliding window per axis for the whole batch (no per-sample loop).
    """
    sigma = sigma.detach().to(torch.float64).cpu()
    if not bool((sigma > 0).any()):
        return images.clone()
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    weights = torch.exp(-0.5 * (x[None, :] / safe[:, None]) ** 2)
    weights = torch.where((sigma > 0)[:, None], weights, (x == 0).to(torch.float64)[None, :])
    weights = weights * (x.abs()[None, :] <= torch.ceil(3 * sigma)[:, None].clamp(min=1))  # per-sample truncation
    weights = (weights / weights.sum(dim=1, keepdim=True)).to(images.dtype).to(images.device)  # [B, K]
    batch, shape = images.shape[0], images.shape
    flat = images.reshape(batch, -1, shape[-2], shape[-1])  # [B, N, R, C]
    padded = F.pad(flat, (radius, radius, 0, 0), mode="replicate")
    cols = torch.einsum("bnrck,bk->bnrc", padded.unfold(-1, 2 * radius + 1, 1), weights)
    padded = F.pad(cols, (0, 0, radius, radius), mode="replicate")
    rows = torch.einsum("bnrck,bk->bnrc", padded.unfold(-2, 2 * radius + 1, 1), weights)
    return rows.reshape(shape)


def scale_shift_hu(images: torch.Tensor, factor: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """images * factor + offset per sample (factor, offset [B]), clipped to HU_WINDOW."""
    shape = (-1,) + (1,) * (images.dim() - 1)
    out = images * factor.to(images).view(shape) + offset.to(images).view(shape)
    return out.clamp_(HU_WINDOW[0], HU_WINDOW[1])


def augment_intensity(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Blur, contrast and shift of `config` (noise is separate: add_noise); draws nothing when off."""
    if not config.intensity:
        return images
    batch = images.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform() -> torch.Tensor:  # [B] in [-1, 1)
        return torch.rand(batch, generator=generator, device=device, dtype=torch.float64) * 2 - 1

    out = images
    if config.blur > 0:
        sigma = (uniform() + 1) / 2 * config.blur
        out = gaussian_blur_plane(out, sigma)
    if config.contrast > 0 or config.shift > 0:
        factor = 1 + uniform() * config.contrast if config.contrast > 0 else torch.ones(batch, dtype=torch.float64)
        offset = uniform() * config.shift if config.shift > 0 else torch.zeros(batch, dtype=torch.float64)
        out = scale_shift_hu(out, factor.to(images.device), offset.to(images.device))
    return out


def augment_batch(
    images: torch.Tensor,
    config: AugmentConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    **overrides: object,
) -> torch.Tensor:
    """Augment a batch: crops [B, 1, I, R, C] (3D) or slice stacks [B, ch, R, C] (2D).

    `config` defaults to the book's AugmentConfig(); keyword overrides replace fields
    (`augment_batch(x, noise=0.0)`). Returns a new tensor of the same shape, device and dtype.
    """
    _check_images(images)
    cfg = config if config is not None else AugmentConfig()
    if overrides:
        known = {f.name for f in fields(AugmentConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise AugmentError(f"unknown augmentation setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        cfg = replace(cfg, **overrides)
    out = images
    if cfg.spatial:
        theta = random_affine_matrices(images.shape[0], tuple(images.shape[2:]), cfg, generator)
        out = apply_affine(images, theta)
    if cfg.intensity:
        out = augment_intensity(out, cfg, generator)
    if cfg.noise > 0:
        out = add_noise(out, cfg.noise, generator)
    if out is images:
        out = images.clone()
    return out


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise AugmentError(f"augmentation needs a torch.Tensor, got {type(images).__name__}")
    if images.dim() not in (4, 5):
        raise AugmentError(f"augmentation needs [B, ch, R, C] or [B, ch, I, R, C], got shape {list(images.shape)}")
    if not images.is_floating_point():
        raise AugmentError(f"augmentation needs floating-point images, got {images.dtype}")
