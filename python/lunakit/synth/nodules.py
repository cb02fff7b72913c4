"""Phantom lung nodules: shape, placement in the lungs, rendering and malignancy.

A nodule is star-shaped around its centre: its surface radius along unit direction u is

    radius(u) = R * (ellipsoid(u) * (1 + lobulation(u)) + spikes(u))

with a random ellipsoid (elongation), a smooth random lobulation and a few thin spicules.
`diameter_mm` is the diameter of the sphere of the same volume, computed from that
radial function (volume = 4/3 pi mean(radius^3)). Malignancy is drawn from size, lobulation,
spiculation and texture the way LIDC readers rate it, and `mal_bool` follows the ratings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage

from lunakit.synth.tubes import Tube, box_grid_mm, box_slices

TEXTURES = ("solid", "ground_glass", "part_solid", "calcified")
LOCATIONS = ("isolated", "juxtapleural", "juxtavascular")


def _fibonacci_sphere(n: int) -> np.ndarray:
    """n unit vectors spread evenly over the sphere (deterministic)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5**0.5) * k
    s = np.sqrt(1 - z * z)
    return np.stack([z, s * np.sin(phi), s * np.cos(phi)], axis=1)


_DIRECTIONS = _fibonacci_sphere(4000)


def _random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@dataclass(frozen=True, eq=False)
class NoduleShape:
    """The radial function of a star-shaped nodule (directions in the canonical mm frame)."""

    scale_mm: float
    axes: np.ndarray  # (3,) ellipsoid semi-axis factors, product 1
    rotation: np.ndarray  # (3, 3) ellipsoid orientation
    lobulation: float  # amplitude of the smooth surface undulation (0 = smooth)
    lobe_dirs: np.ndarray  # (m, 3)
    lobe_freqs: np.ndarray  # (m,)
    lobe_phases: np.ndarray  # (m,)
    spike_dirs: np.ndarray  # (k, 3)
    spike_lengths: np.ndarray  # (k,) in units of scale_mm
    spike_width: float = 0.012

    def unit_radius(self, u: np.ndarray) -> np.ndarray:
        """Radius / scale_mm along unit directions u (N, 3)."""
        v = u @ self.rotation
        ellipsoid = 1.0 / np.sqrt(np.sum((v / self.axes) ** 2, axis=-1))
        lobes = np.zeros(u.shape[:-1])
        if len(self.lobe_dirs):
            waves = np.sin(np.pi * self.lobe_freqs * (u @ self.lobe_dirs.T) + self.lobe_phases)
            lobes = self.lobulation * waves.sum(axis=-1) / np.sqrt(len(self.lobe_dirs))
        spikes = np.zeros(u.shape[:-1])
        if len(self.spike_dirs):
            spikes = (self.spike_lengths * np.exp((u @ self.spike_dirs.T - 1.0) / self.spike_width)).sum(axis=-1)
        return ellipsoid * (1.0 + lobes) + spikes

    def radius_mm(self, u: np.ndarray) -> np.ndarray:
        return self.scale_mm * self.unit_radius(u)

    @cached_property
    def extent_mm(self) -> float:
        """An upper bound of the radius in any direction (with a safety margin)."""
        return 1.15 * self.scale_mm * float(self.unit_radius(_DIRECTIONS).max())

    @cached_property
    def min_radius_mm(self) -> float:
        return self.scale_mm * float(self.unit_radius(_DIRECTIONS).min())

    @cached_property
    def equivalent_diameter_mm(self) -> float:
        return 2.0 * self.scale_mm * float(np.cbrt(np.mean(self.unit_radius(_DIRECTIONS) ** 3)))

    def scaled_to(self, diameter_mm: float) -> "NoduleShape":
        """The same shape with the given equal-volume sphere diameter."""
        unit = 2.0 * float(np.cbrt(np.mean(self.unit_radius(_DIRECTIONS) ** 3)))
        return NoduleShape(
            diameter_mm / unit,
            self.axes,
            self.rotation,
            self.lobulation,
            self.lobe_dirs,
            self.lobe_freqs,
            self.lobe_phases,
            self.spike_dirs,
            self.spike_lengths,
            self.spike_width,
        )


def random_shape(rng: np.random.Generator, diameter_mm: float, irregular: float, spiculated: bool) -> NoduleShape:
    """A shape of the given equal-volume diameter; irregular in [0, 1] sets elongation and lobulation.

    Small nodules are kept nearly round so that their centre voxel is always inside them.
    """
    small = diameter_mm < 6.0
    elong = 1.0 + rng.uniform(0.0, 0.15 if small else 0.15 + 0.25 * irregular)
    axes = np.array([elong, 1.0, rng.uniform(0.85, 1.0)])
    axes = axes / np.cbrt(np.prod(axes))
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    m = 4
    lobulation = (0.03 + 0.05 * irregular) if small else (0.03 + 0.17 * irregular)
    spikes = int(rng.integers(3, 8)) if (spiculated and not small) else 0
    shape = NoduleShape(
        scale_mm=1.0,
        axes=axes,
        rotation=rotation,
        lobulation=float(lobulation),
        lobe_dirs=_random_unit(rng, m),
        lobe_freqs=rng.uniform(1.5, 3.5, m),
        lobe_phases=rng.uniform(0, 2 * np.pi, m),
        spike_dirs=_random_unit(rng, spikes) if spikes else np.zeros((0, 3)),
        spike_lengths=rng.uniform(0.4, 0.9, spikes) if spikes else np.zeros(0),
    )
    return shape.scaled_to(diameter_mm)


def sphere_shape(diameter_mm: float) -> NoduleShape:
    """A plain sphere (used for the tiny findings of annotations_excluded.csv)."""
    return NoduleShape(
        diameter_mm / 2.0,
        np.ones(3),
        np.eye(3),
        0.0,
        np.zeros((0, 3)),
        np.zeros(0),
        np.zeros(0),
        np.zeros((0, 3)),
        np.zeros(0),
    )


def scar_shape(rng: np.random.Generator) -> NoduleShape:
    """A scar: a flat, elongated, slightly wavy band (semi-axes 4-10 x 1-2 x 0.6-1.2 mm)."""
    axes = np.array([rng.uniform(4.0, 10.0), rng.uniform(1.0, 2.0), rng.uniform(0.6, 1.2)])
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return NoduleShape(
        scale_mm=1.0,
        axes=axes,
        rotation=rotation,
        lobulation=0.08,
        lobe_dirs=_random_unit(rng, 4),
        lobe_freqs=rng.uniform(1.5, 3.5, 4),
        lobe_phases=rng.uniform(0, 2 * np.pi, 4),
        spike_dirs=np.zeros((0, 3)),
        spike_lengths=np.zeros(0),
    )


@dataclass(frozen=True, eq=False)
class Nodule:
    """One nodule (or small excluded finding) of a phantom scan, in the canonical mm frame."""

    center_mm: np.ndarray  # (3,) canonical (i, r, c) index * spacing
    shape: NoduleShape
    texture: str  # one of TEXTURES
    location: str  # one of LOCATIONS
    hu: float  # mean HU of the lesion (of its ground glass, for part-solid)
    core_hu: float = 0.0  # HU of a part-solid nodule's solid core
    irregular: float = 0.0  # 0..1: elongation + lobulation
    spiculated: bool = False
    ratings: tuple[int, ...] = field(default_factory=tuple)

    @property
    def diameter_mm(self) -> float:
        return self.shape.equivalent_diameter_mm

    @property
    def is_malignant(self) -> bool:
        """LIDC-style consensus: at least half of the readers rate it 4 or 5."""
        return 2 * sum(r >= 4 for r in self.ratings) >= len(self.ratings) > 0


def occupancy_box(
    nodule: Nodule, spacing_irc: np.ndarray, shape_irc: tuple[int, int, int], ramp_mm: float, shrink: float = 1.0
):
    """(box slices, fraction of each box voxel inside the nodule) or None if off the volume."""
    reach = nodule.shape.extent_mm * shrink + ramp_mm
    box = box_slices(nodule.center_mm - reach, nodule.center_mm + reach, spacing_irc, shape_irc)
    if box is None:
        return None
    g = box_grid_mm(box, spacing_irc)
    offset = np.stack(
        np.broadcast_arrays(g[0] - nodule.center_mm[0], g[1] - nodule.center_mm[1], g[2] - nodule.center_mm[2]), axis=-1
    ).astype(np.float64)
    dist = np.linalg.norm(offset, axis=-1)
    u = offset / np.maximum(dist, 1e-9)[..., None]
    radius = nodule.shape.radius_mm(u) * shrink
    occ = np.clip((radius - dist) / ramp_mm + 0.5, 0.0, 1.0).astype(np.float32)
    return box, occ


def draw_nodule(hu: np.ndarray, texture: np.ndarray, nodule: Nodule, spacing_irc: np.ndarray, ramp_mm: float) -> None:
    """Blend the nodule over the volume; where the volume is already denser (vessel, wall) it stays."""
    found = occupancy_box(nodule, spacing_irc, hu.shape, ramp_mm)
    if found is None:
        return
    box, occ = found
    lesion = lesion_values(nodule, box, occ, texture, spacing_irc, ramp_mm)
    region = hu[box]
    np.maximum(region, region * (1 - occ) + lesion * occ, out=region)


def lesion_values(
    nodule: Nodule,
    box: tuple[slice, ...],
    occ: np.ndarray,
    texture: np.ndarray,
    spacing_irc: np.ndarray,
    ramp_mm: float,
) -> np.ndarray:
    """The lesion's own HU over its occupancy box (textured; a part-solid one with its solid core)."""
    amplitude = 30.0 if nodule.texture in ("ground_glass", "part_solid") else 12.0
    lesion = nodule.hu + amplitude * np.clip(texture[box], -1.5, 1.5)
    if nodule.texture == "part_solid":
        core = occupancy_box(nodule, spacing_irc, texture.shape, ramp_mm, shrink=0.45)
        if core is not None:
            core_box, core_occ = core
            inner = np.zeros_like(occ)
            inner[tuple(slice(cb.start - b.start, cb.stop - b.start) for cb, b in zip(core_box, box))] = core_occ
            lesion = lesion * (1 - inner) + (nodule.core_hu + 10.0 * texture[box]) * inner
    return lesion


def lesion_mask(nodule: Nodule, spacing_irc: np.ndarray, shape_irc: tuple[int, int, int], ramp_mm: float):
    """(box, bool mask of the voxels at least half inside the nodule)."""
    found = occupancy_box(nodule, spacing_irc, shape_irc, ramp_mm)
    if found is None:
        return None
    box, occ = found
    return box, occ >= 0.5


def malignancy_ratings(
    rng: np.random.Generator, diameter_mm: float, texture: str, irregular: float, spiculated: bool
) -> tuple[int, ...]:
    """3-5 reader ratings (1 = benign ... 5 = malignant), as LIDC readers would give them.

    Larger, more lobulated and spiculated, and part-solid nodules score higher; calcified
    ones are benign.
    """
    score = (
        2.5 * np.log2(diameter_mm / 10.0)
        + 1.5 * irregular
        + 2.0 * spiculated
        + 1.0 * (texture == "part_solid")
        + 0.3 * (texture == "ground_glass")
        - 5.0 * (texture == "calcified")
    )
    p = 1.0 / (1.0 + np.exp(-score))
    level = 1.0 + 4.0 * p
    n_readers = int(rng.choice([3, 4, 4, 4, 5], p=[0.32, 0.22, 0.22, 0.22, 0.02]))
    ratings = np.clip(np.rint(level + rng.normal(0.0, 0.7, n_readers)), 1, 5).astype(int)
    return tuple(int(x) for x in ratings)


def lesion_hu(
    rng: np.random.Generator, texture: str, ground_glass_hu: tuple[float, float] = (-450.0, -300.0)
) -> tuple[float, float]:
    """(mean HU of the lesion, HU of a part-solid nodule's solid core)."""
    if texture == "solid":
        return float(rng.uniform(20, 60)), 0.0
    if texture == "ground_glass":
        return float(rng.uniform(*ground_glass_hu)), 0.0
    if texture == "part_solid":
        return float(rng.uniform(-430, -300)), float(rng.uniform(10, 50))
    return float(rng.uniform(250, 600)), 0.0  # calcified


def lung_depth_mm(lung: np.ndarray, spacing_irc: np.ndarray) -> np.ndarray:
    """float32: each lung voxel's distance (mm) to the nearest non-lung voxel, the volume's outside included."""
    sampling = tuple(float(v) for v in spacing_irc)
    return ndimage.distance_transform_edt(np.pad(lung, 1), sampling=sampling)[1:-1, 1:-1, 1:-1].astype(np.float32)


@dataclass
class Placement:
    """What nodule placement needs to know about a scan (canonical frame)."""

    lung: np.ndarray  # bool
    lung_depth_mm: np.ndarray  # float32: distance of each lung voxel to the nearest non-lung voxel
    costal: np.ndarray  # bool: where a juxtapleural nodule may sit (against the chest wall)
    vessels: list[Tube]
    spacing_irc: np.ndarray
    taken: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (center_mm, extent_mm)
    # A real host scan has no vessel tubes: its vessels as voxels instead (lunakit.synth.insert).
    solid: np.ndarray | None = None  # bool: vessel (or bronchial wall) voxels inside the lung field
    vessel_radius_mm: np.ndarray | None = None  # float32: vessel radius on centreline voxels, 0 elsewhere

    def free(self, center_mm: np.ndarray, extent_mm: float, gap_mm: float = 2.0) -> bool:
        """Whether a lesion there keeps gap_mm away from every lesion placed so far."""
        return all(np.linalg.norm(center_mm - c) >= extent_mm + e + gap_mm for c, e in self.taken)

    def inside_volume(self, center_mm: np.ndarray, extent_mm: float) -> bool:
        top = (np.asarray(self.lung.shape) - 1) * self.spacing_irc
        return bool(np.all(center_mm >= extent_mm) and np.all(center_mm <= top - extent_mm))

    def lung_fraction(self, center_mm: np.ndarray, radius_mm: float) -> float:
        """Fraction of the sphere of that radius around center_mm that lies in the lung."""
        idx = np.rint((center_mm + radius_mm * _DIRECTIONS[::20]) / self.spacing_irc).astype(int)
        ok = np.all((idx >= 0) & (idx < self.lung.shape), axis=1)
        hits = np.zeros(len(idx), dtype=bool)
        hits[ok] = self.lung[tuple(idx[ok].T)]
        return float(hits.mean())

    def open_lung_around(self, center_mm: np.ndarray, r_eq_mm: float) -> bool:
        """A nodule against the wall must still face open lung (not fill a thin recess)."""
        return (
            self.lung_fraction(center_mm, 0.8 * r_eq_mm) >= 0.6 and self.lung_fraction(center_mm, 1.6 * r_eq_mm) >= 0.5
        )

    def pick_voxel(self, rng: np.random.Generator, candidates: np.ndarray) -> np.ndarray | None:
        """A random voxel of a bool mask, jittered within the voxel, in mm; None if empty."""
        flat = np.flatnonzero(candidates)
        if flat.size == 0:
            return None
        idx = np.array(np.unravel_index(int(flat[rng.integers(flat.size)]), candidates.shape), dtype=np.float64)
        return (idx + rng.uniform(-0.45, 0.45, 3)) * self.spacing_irc


def place_center(rng: np.random.Generator, where: Placement, shape: NoduleShape, location: str) -> np.ndarray | None:
    """A centre (mm) for a nodule of this shape at this kind of location, or None if none fits.

    A juxtavascular nodule needs a vessel thinner than itself; place_nodule falls back to
    an isolated one when the lungs have none.
    """
    extent = shape.extent_mm
    r_eq = shape.equivalent_diameter_mm / 2.0
    for _ in range(25):
        if location == "juxtavascular" and where.vessel_radius_mm is not None:
            center = _beside_vessel_voxel(rng, where, r_eq)
            if center is None:
                return None
            if _depth_at(where, center) < min(0.9 * extent, r_eq + 1.0) or _depth_at(where, center, where.solid) > 0:
                continue  # too near the lung's edge, or its centre inside the vessel
        elif location == "juxtavascular":
            # a vessel thinner than the nodule, so that the nodule stands out from it
            thick = [v for v in where.vessels if min(v.r0_mm, v.r1_mm) >= 0.35 and max(v.r0_mm, v.r1_mm) <= 0.5 * r_eq]
            if not thick:
                return None
            lengths = np.array([v.length_mm for v in thick])
            vessel = thick[int(rng.choice(len(thick), p=lengths / lengths.sum()))]
            s = rng.uniform(0.15, 0.85)
            axis = np.subtract(vessel.p1_mm, vessel.p0_mm)
            axis = axis / (np.linalg.norm(axis) or 1.0)
            perp = rng.standard_normal(3)
            perp -= (perp @ axis) * axis
            perp /= np.linalg.norm(perp) or 1.0
            center = vessel.point_mm(s) + (0.85 * r_eq + 0.5 * vessel.radius_mm(s)) * perp
            if _depth_at(where, center) < min(0.9 * extent, r_eq + 1.0):
                continue
        else:
            if location == "juxtapleural":
                zone, lo, hi = where.costal, 0.45 * r_eq, 0.85 * r_eq
            else:
                zone, lo, hi = where.lung, min(0.9 * extent, r_eq + 1.5), np.inf
            center = where.pick_voxel(rng, zone & (where.lung_depth_mm >= lo) & (where.lung_depth_mm <= hi))
            if center is None:
                return None
        if location == "juxtapleural" and not where.open_lung_around(center, r_eq):
            continue
        if where.inside_volume(center, extent) and where.free(center, extent):
            return center
    return None


def _beside_vessel_voxel(rng: np.random.Generator, where: Placement, r_eq: float) -> np.ndarray | None:
    """A centre beside a host scan's vessel thinner than the nodule (any direction); None if none."""
    radius = where.vessel_radius_mm
    start = where.pick_voxel(rng, (radius >= 0.35) & (radius <= 0.5 * r_eq))
    if start is None:
        return None
    r_vessel = float(radius[tuple(np.rint(start / where.spacing_irc).astype(int))])
    return start + (0.85 * r_eq + 0.5 * r_vessel) * _random_unit(rng, 1)[0]


def _depth_at(where: Placement, center_mm: np.ndarray, values: np.ndarray | None = None) -> float:
    """The lung depth (or another per-voxel array's value) at the voxel nearest center_mm; 0 off the volume."""
    idx = np.rint(center_mm / where.spacing_irc).astype(int)
    if np.any(idx < 0) or np.any(idx >= where.lung.shape):
        return 0.0
    return float((where.lung_depth_mm if values is None else values)[tuple(idx)])


def center_voxel_inside(
    center_mm: np.ndarray, shape: NoduleShape, spacing_irc: np.ndarray, ramp_mm: float
) -> np.ndarray:
    """Move the centre toward its nearest voxel until that voxel lies well inside the nodule.

    The annotation's centre, rounded to a voxel, must land in the nodule (readers of the data
    check the HU there); this guarantees it even for 3 mm nodules on 2.5 mm slices.
    """
    for _ in range(8):
        voxel_mm = np.rint(center_mm / spacing_irc) * spacing_irc
        offset = voxel_mm - center_mm
        dist = float(np.linalg.norm(offset))
        if dist < 1e-9:
            return center_mm
        radius = float(shape.radius_mm((offset / dist)[None, :])[0])
        if radius - dist >= 0.4 * ramp_mm:
            return center_mm
        center_mm = voxel_mm - 0.5 * offset
    return np.rint(center_mm / spacing_irc) * spacing_irc + 0.05 * spacing_irc
