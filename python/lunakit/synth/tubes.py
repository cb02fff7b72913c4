"""Tapered tubes (vessels, airways) drawn into a volume as partial-volume occupancy.

Points are in the *canonical millimetre frame*: (i, r, c) index times the voxel size along
that axis, so distances are true millimetres. Each tube is rasterised only inside its own
bounding box, never over the whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tube:
    """A straight capsule from p0_mm to p1_mm whose radius goes linearly from r0_mm to r1_mm."""

    p0_mm: tuple[float, float, float]
    p1_mm: tuple[float, float, float]
    r0_mm: float
    r1_mm: float
    depth: int = 0  # generation in its tree (0 = trunk)

    def point_mm(self, t: float) -> np.ndarray:
        p0, p1 = np.asarray(self.p0_mm), np.asarray(self.p1_mm)
        return p0 + t * (p1 - p0)

    def radius_mm(self, t: float) -> float:
        return self.r0_mm + t * (self.r1_mm - self.r0_mm)

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(np.subtract(self.p1_mm, self.p0_mm)))


def box_slices(
    lo_mm: np.ndarray, hi_mm: np.ndarray, spacing_irc: np.ndarray, shape_irc: tuple[int, int, int]
) -> tuple[slice, slice, slice] | None:
    """Index slices covering the mm box [lo, hi], clipped to the volume; None when empty."""
    lo = np.maximum(np.floor(lo_mm / spacing_irc).astype(int), 0)
    hi = np.minimum(np.ceil(hi_mm / spacing_irc).astype(int) + 1, np.asarray(shape_irc))
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def box_grid_mm(box: tuple[slice, slice, slice], spacing_irc: np.ndarray) -> list[np.ndarray]:
    """Broadcastable mm coordinates (i, r, c) of the voxel centres of a box."""
    gi = (np.arange(box[0].start, box[0].stop, dtype=np.float32) * spacing_irc[0])[:, None, None]
    gr = (np.arange(box[1].start, box[1].stop, dtype=np.float32) * spacing_irc[1])[None, :, None]
    gc = (np.arange(box[2].start, box[2].stop, dtype=np.float32) * spacing_irc[2])[None, None, :]
    return [gi, gr, gc]


def draw_tube(
    occupancy: np.ndarray, tube: Tube, spacing_irc: np.ndarray, ramp_mm: float, extra_mm: float = 0.0
) -> None:
    """occupancy = max(occupancy, fraction of each voxel inside the tube grown by extra_mm)."""
    p0 = np.asarray(tube.p0_mm, dtype=np.float32)
    p1 = np.asarray(tube.p1_mm, dtype=np.float32)
    reach = max(tube.r0_mm, tube.r1_mm) + extra_mm + ramp_mm
    box = box_slices(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach, spacing_irc, occupancy.shape)
    if box is None:
        return
    g = box_grid_mm(box, spacing_irc)
    d = p1 - p0
    length2 = float(d @ d) or 1e-6
    t = np.clip(((g[0] - p0[0]) * d[0] + (g[1] - p0[1]) * d[1] + (g[2] - p0[2]) * d[2]) / length2, 0.0, 1.0)
    dist2 = (g[0] - p0[0] - t * d[0]) ** 2 + (g[1] - p0[1] - t * d[1]) ** 2 + (g[2] - p0[2] - t * d[2]) ** 2
    radius = tube.r0_mm + t * (tube.r1_mm - tube.r0_mm) + extra_mm
    occ = np.clip((radius - np.sqrt(dist2)) / ramp_mm + 0.5, 0.0, 1.0)
    np.maximum(occupancy[box], occ, out=occupancy[box])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) or 1.0)


def _turn(rng: np.random.Generator, direction: np.ndarray, angle_rad: float) -> np.ndarray:
    """direction rotated by angle_rad about a random axis perpendicular to it."""
    helper = rng.standard_normal(3)
    perp = _unit(helper - (helper @ direction) * direction)
    return _unit(np.cos(angle_rad) * direction + np.sin(angle_rad) * perp)


def grow_tree(
    rng: np.random.Generator,
    root_mm: np.ndarray,
    inside: "InsideTest",
    trunk_dirs: list[np.ndarray],
    trunk_length_mm: float,
    trunk_radius_mm: float,
    max_depth: int = 5,
    min_radius_mm: float = 0.35,
) -> list[Tube]:
    """A random branching tree from root_mm; a branch stops where it would leave `inside`.

    Each generation is ~0.75x as long and ~0.75x as thick as its parent and splits in two at
    20-45 degrees, drifting away from the root (vessels fan out toward the lung periphery).
    """
    tubes: list[Tube] = []
    stack = [(root_mm, _unit(d), trunk_length_mm, trunk_radius_mm, 0) for d in trunk_dirs]
    while stack:
        start, direction, length, radius, depth = stack.pop()
        end_radius = max(radius * 0.88, min_radius_mm)
        # Walk the segment and stop at the last sample still inside.
        steps = np.linspace(0.0, 1.0, 9)[1:]
        end = start
        for s in steps:
            p = start + s * length * direction
            if not inside(p):
                break
            end = p
        seg_len = float(np.linalg.norm(end - start))
        if seg_len < 0.25 * length or seg_len < 0.8:
            continue
        reached_end = seg_len >= 0.99 * length
        tubes.append(Tube(tuple(start), tuple(end), float(radius), float(end_radius), depth))
        if depth + 1 > max_depth or not reached_end or end_radius * 0.8 < min_radius_mm:
            continue
        outward = _unit(end - root_mm)
        for _ in range(2):
            child = _turn(rng, _unit(direction + 0.35 * outward), np.deg2rad(rng.uniform(20, 45)))
            stack.append((end, child, length * rng.uniform(0.65, 0.85), end_radius * rng.uniform(0.8, 0.9), depth + 1))
    return tubes


class InsideTest:
    """Whether a mm point (canonical frame) falls in a boolean mask voxel."""

    def __init__(self, mask: np.ndarray, spacing_irc: np.ndarray) -> None:
        self.mask = mask
        self.spacing_irc = spacing_irc

    def __call__(self, p_mm: np.ndarray) -> bool:
        idx = np.rint(np.asarray(p_mm) / self.spacing_irc).astype(int)
        if np.any(idx < 0) or np.any(idx >= self.mask.shape):
            return False
        return bool(self.mask[tuple(idx)])
