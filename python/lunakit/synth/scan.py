"""One phantom scan: anatomy + nodules + findings + candidates, stored in a LUNA16-like orientation.

The scan is built in the canonical frame (identity direction). Its stored geometry may then
flip axes (the array is flipped to match, so patient positions do not change) or tilt
(oblique direction: the array stays, the patient-space coordinates rotate). Every table
coordinate is computed from a stored voxel index through `Geometry.irc_to_xyz`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lunakit.io.geometry import Geometry
from lunakit.synth.anatomy import AnatomyExtras, build_anatomy, smooth_noise
from lunakit.synth.family import CLASSIC, SLICE_SPACINGS_MM, Family, get_family
from lunakit.synth.nodules import (
    Nodule,
    Placement,
    center_voxel_inside,
    draw_nodule,
    lesion_hu,
    lesion_mask,
    lung_depth_mm,
    malignancy_ratings,
    place_center,
    random_shape,
    scar_shape,
    sphere_shape,
)

CLASSIC_BLUR_VOXELS = (0.35, 0.6, 0.6)  # the classic acquisition's Gaussian blur (slice, row, column)

__all__ = ["SLICE_SPACINGS_MM", "PhantomScan", "make_scan", "series_uid"]


@dataclass(frozen=True)
class Orientation:
    """How the stored array relates to the canonical one: flips per (i, r, c) axis, then a rotation."""

    flip_irc: tuple[bool, bool, bool]
    rotation: np.ndarray  # (3, 3) patient-space rotation (identity unless oblique)
    name: str


@dataclass(frozen=True)
class NoduleRecord:
    """A nodule as the tables describe it (stored frame, patient mm)."""

    center_xyz: np.ndarray
    diameter_mm: float
    is_malignant: bool
    ratings: tuple[int, ...]
    bbox_low_xyz: np.ndarray
    bbox_high_xyz: np.ndarray
    texture: str
    location: str


@dataclass(frozen=True)
class PhantomScan:
    """A finished phantom scan: int16 HU [I, R, C] as stored, its geometry and its truth."""

    series_uid: str
    hu: np.ndarray
    geometry: Geometry
    orientation: str
    nodules: list[NoduleRecord]
    excluded: list[tuple[np.ndarray, float]]  # (center_xyz, diameter_mm or -1)
    candidates: list[tuple[np.ndarray, int]]  # (center_xyz, class)
    hard_negatives: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (kind, center_xyz), also class 0
    params: dict = field(default_factory=dict)  # what was drawn: spacing, noise, blur, padding, anatomy


def series_uid(seed: int, index: int) -> str:
    """A DICOM-style UID (digits and dots, no leading zeros, <= 64 characters), fixed by (seed, index)."""
    prefix = f"1.3.6.1.4.1.14519.5.2.1.9999.{int(seed)}.{int(index)}."
    digest = int(hashlib.sha256(f"lunakit-synth:{seed}:{index}".encode()).hexdigest(), 16)
    return prefix + str(digest)[: max(64 - len(prefix), 1)]


def _orientation(rng: np.random.Generator, index: int) -> Orientation:
    """Scan 0 plain, scan 1 flipped, scan 2 oblique; later scans drawn at random."""
    kind = (
        ["plain", "flipped", "oblique"][index]
        if index < 3
        else str(rng.choice(["plain", "flipped", "oblique"], p=[0.6, 0.25, 0.15]))
    )
    if kind == "plain":
        return Orientation((False, False, False), np.eye(3), "plain")
    if kind == "flipped":
        flips = [(True, False, False), (False, True, True)][int(rng.integers(2))]  # (1,1,-1) / (-1,-1,1)
        return Orientation(flips, np.eye(3), "flipped")
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(3, 9))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    return Orientation((False, False, False), rotation, "oblique")


class _Frames:
    """Canonical mm <-> stored index, and stored index -> patient mm through the Geometry."""

    def __init__(
        self,
        shape_irc: tuple[int, int, int],
        spacing_irc: np.ndarray,
        orientation: Orientation,
        canonical_origin_xyz: np.ndarray,
    ) -> None:
        self.shape_irc = np.asarray(shape_irc)
        self.spacing_irc = spacing_irc
        self.flip_irc = np.asarray(orientation.flip_irc)
        flip_xyz = self.flip_irc[::-1]
        spacing_xyz = spacing_irc[::-1]
        signs_xyz = np.where(flip_xyz, -1.0, 1.0)
        direction = orientation.rotation @ np.diag(signs_xyz)
        # The stored voxel 0 of a flipped axis is the canonical last voxel of that axis.
        origin = canonical_origin_xyz + orientation.rotation @ (flip_xyz * (self.shape_irc[::-1] - 1) * spacing_xyz)
        self.geometry = Geometry(origin_xyz=origin, spacing_xyz=spacing_xyz, direction=direction)

    def stored_irc(self, canonical_mm: np.ndarray) -> np.ndarray:
        irc = np.asarray(canonical_mm) / self.spacing_irc
        return np.where(self.flip_irc, self.shape_irc - 1 - irc, irc)

    def xyz(self, canonical_mm: np.ndarray) -> np.ndarray:
        return self.geometry.irc_to_xyz(self.stored_irc(canonical_mm))

    def store(self, volume: np.ndarray) -> np.ndarray:
        axes = tuple(int(a) for a in np.flatnonzero(self.flip_irc))
        return np.ascontiguousarray(np.flip(volume, axis=axes) if axes else volume)


def make_scan(
    seed: int, index: int, shape_irc: tuple[int, int, int] | None = None, family: Family | str | None = None
) -> PhantomScan:
    """The index-th phantom scan of a dataset made with `seed` (deterministic).

    `family` (a name or a Family; None = classic) sets the ranges its parameters are drawn
    from (lunakit.synth.family). The classic family draws exactly what the generator drew
    before families existed; every draw a family adds comes from a second generator, so it
    never shifts the classic ones.
    """
    fam = get_family(family)
    classic = fam.is_classic
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x1A2B]))
    extra = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x5EED]))
    if shape_irc is None:
        n_slices = int(rng.integers(fam.slices[0], fam.slices[1] + 1))
        rows, cols = fam.matrices[int(extra.integers(len(fam.matrices)))]
        shape_irc = (n_slices, rows, cols)
    shape_irc = tuple(int(n) for n in shape_irc)
    pixel_mm = round(float(rng.uniform(*fam.pixel_mm)), 6)
    if fam.slice_choices is not None:
        slice_mm = float(rng.choice(fam.slice_choices))
    else:
        slice_mm = round(float(rng.uniform(*fam.slice_mm)), 4)
    spacing_irc = np.array([slice_mm, pixel_mm, pixel_mm])
    orientation = _orientation(rng, index)
    fov_xyz = np.array([shape_irc[2], shape_irc[1], shape_irc[0]]) * spacing_irc[::-1]
    origin_xyz = np.array(
        [
            -fov_xyz[0] / 2 + rng.uniform(-20, 20),
            -fov_xyz[1] / 2 + rng.uniform(-20, 20),
            rng.uniform(-350, -50) - fov_xyz[2],
        ]
    )
    origin_xyz = np.round(origin_xyz, 4)
    frames = _Frames(shape_irc, spacing_irc, orientation, origin_xyz)
    ramp_mm = float(np.mean(spacing_irc[1:]))

    extras = None
    if not classic:
        extras = AnatomyExtras(
            rng=extra,
            vessel_density=float(extra.uniform(*fam.vessel_density)),
            airways=bool(extra.uniform() < fam.airway_prob),
            fissures=bool(extra.uniform() < fam.fissure_prob),
            end_on_vessels=int(extra.integers(fam.end_on_vessels[0], fam.end_on_vessels[1] + 1)),
            vessel_crossings=int(extra.integers(fam.vessel_crossings[0], fam.vessel_crossings[1] + 1)),
        )
    anatomy = build_anatomy(rng, shape_irc, spacing_irc, extras)
    where = Placement(
        anatomy.lung, lung_depth_mm(anatomy.lung, spacing_irc), anatomy.costal, anatomy.vessels, spacing_irc
    )

    nodules = place_nodules(rng, where, ramp_mm, fam)
    findings = _place_findings(rng, where, ramp_mm)
    hard_lesions = [] if classic else _place_hard_lesions(extra, where, ramp_mm, fam)
    for lesion in nodules + [f for f, _ in findings] + [h for _, h in hard_lesions]:
        draw_nodule(anatomy.hu, anatomy.texture, lesion, spacing_irc, ramp_mm)

    hu, acquisition = _acquire(rng, anatomy.hu, spacing_irc, fam, extra)
    records = [nodule_record(n, frames, shape_irc, ramp_mm) for n in nodules]
    excluded = [(frames.xyz(f.center_mm), d) for f, d in findings]
    hard = [(kind, h.center_mm) for kind, h in hard_lesions] + list(anatomy.hard_negatives)
    hard = [(kind, p) for kind, p in hard if _far_from(p, nodules, 2.0)]
    candidates = _candidates(rng, anatomy, nodules, findings, frames, spacing_irc, [p for _, p in hard])
    params = (
        {}
        if classic
        else {
            "family": fam.name,
            "shape_irc": list(shape_irc),
            "pixel_mm": pixel_mm,
            "slice_mm": slice_mm,
            **acquisition,
            "vessel_density": round(extras.vessel_density, 4),
            "airway_tree": extras.airways,
            "fissures": extras.fissures,
        }
    )
    return PhantomScan(
        series_uid(seed, index),
        frames.store(hu),
        frames.geometry,
        orientation.name,
        records,
        excluded,
        candidates,
        [(kind, frames.xyz(p)) for kind, p in hard],
        params,
    )


def _far_from(p_mm: np.ndarray, nodules: list[Nodule], gap_mm: float) -> bool:
    return all(np.linalg.norm(p_mm - n.center_mm) >= n.shape.extent_mm + gap_mm for n in nodules)


def place_nodules(rng: np.random.Generator, where: Placement, ramp_mm: float, fam: Family = CLASSIC) -> list[Nodule]:
    """1-4 nodules of 3.5-30 mm (median ~7 mm), shrunk until they fit the lungs (classic family)."""
    out: list[Nodule] = []
    for _ in range(int(rng.integers(fam.nodules[0], fam.nodules[1] + 1))):
        texture = str(rng.choice(["solid", "ground_glass", "part_solid", "calcified"], p=list(fam.textures)))
        location = str(rng.choice(["isolated", "juxtapleural", "juxtavascular"], p=list(fam.locations)))
        diameter = float(np.clip(np.exp(rng.normal(np.log(fam.diameter_median_mm), fam.diameter_log_sd)), 3.5, 30.0))
        if texture in ("ground_glass", "part_solid"):
            diameter = max(diameter, 6.0)
        if texture == "calcified":
            diameter = min(diameter, 10.0)
        irregular = float(rng.beta(1.5, 3.0) if texture != "calcified" else rng.uniform(0, 0.1))
        spiculated = bool(texture != "calcified" and rng.uniform() < 0.15 + 0.5 * irregular)
        center = None
        while center is None and diameter >= 3.5:
            shape = random_shape(rng, diameter, irregular, spiculated)
            center = place_center(rng, where, shape, location)
            if center is None and location == "juxtavascular":
                location = "isolated"
                center = place_center(rng, where, shape, location)
            if center is None:
                diameter *= 0.8
        if center is None:
            continue
        center = center_voxel_inside(center, shape, where.spacing_irc, ramp_mm)
        hu, core_hu = lesion_hu(rng, texture, fam.ground_glass_hu)
        ratings = malignancy_ratings(rng, shape.equivalent_diameter_mm, texture, irregular, spiculated)
        nodule = Nodule(center, shape, texture, location, hu, core_hu, irregular, spiculated, ratings)
        where.taken.append((center, shape.extent_mm))
        out.append(nodule)
    return out


def _place_hard_lesions(
    rng: np.random.Generator, where: Placement, ramp_mm: float, fam: Family
) -> list[tuple[str, Nodule]]:
    """Hard negatives drawn like lesions: calcified granulomas (3-5 mm, 800-1200 HU, denser than
    any calcified nodule) and scars (flat elongated soft-tissue bands, often against the wall)."""
    out: list[tuple[str, Nodule]] = []
    for kind, (lo, hi) in (("granuloma", fam.granulomas), ("scar", fam.scars)):
        for _ in range(int(rng.integers(lo, hi + 1))):
            if kind == "granuloma":
                shape = sphere_shape(float(rng.uniform(3.0, 5.0)))
                texture, location, hu = "calcified", "isolated", float(rng.uniform(800, 1200))
            else:
                shape = scar_shape(rng)
                texture, hu = "solid", float(rng.uniform(-150, 20))
                location = str(rng.choice(["isolated", "juxtapleural"]))
            center = place_center(rng, where, shape, location)
            if center is None:
                continue
            center = center_voxel_inside(center, shape, where.spacing_irc, ramp_mm)
            where.taken.append((center, shape.extent_mm))
            out.append((kind, Nodule(center, shape, texture, location, hu)))
    return out


def _place_findings(rng: np.random.Generator, where: Placement, ramp_mm: float) -> list[tuple[Nodule, float]]:
    """Irrelevant findings: calcified specks (diameter often unknown, -1) and nodules < 3 mm."""
    out: list[tuple[Nodule, float]] = []
    n_specks, n_tiny = int(rng.integers(1, 5)), int(rng.integers(0, 3))
    for k in range(n_specks + n_tiny):
        speck = k < n_specks
        diameter = float(rng.uniform(1.0, 2.5) if speck else rng.uniform(2.0, 2.9))
        shape = sphere_shape(diameter)
        center = place_center(rng, where, shape, "isolated")
        if center is None:
            continue
        center = center_voxel_inside(center, shape, where.spacing_irc, ramp_mm)
        hu = float(rng.uniform(400, 900) if speck else rng.uniform(0, 40))
        lesion = Nodule(center, shape, "calcified" if speck else "solid", "isolated", hu)
        where.taken.append((center, shape.extent_mm))
        listed = -1.0 if (speck and (not out or rng.uniform() < 0.7)) else round(diameter, 4)
        out.append((lesion, listed))
    return out


def _acquire(
    rng: np.random.Generator,
    clean_hu: np.ndarray,
    spacing_irc: np.ndarray,
    fam: Family = CLASSIC,
    extra: np.random.Generator | None = None,
) -> tuple[np.ndarray, dict]:
    """What the scanner makes of the phantom: blur, correlated noise, round field of view, int16.

    Returns the stored HU and what was drawn (noise_hu, blur_mm in-plane, pad_hu or None).
    """
    if fam.blur_mm is None:
        sigma = CLASSIC_BLUR_VOXELS
        blur_mm = 0.6 * float(spacing_irc[1])
    else:
        blur_mm = float(extra.uniform(*fam.blur_mm))
        sigma = (0.35, blur_mm / float(spacing_irc[1]), blur_mm / float(spacing_irc[2]))
    hu = ndimage.gaussian_filter(clean_hu, sigma=sigma)
    sigma_hu = rng.uniform(*fam.noise_hu)
    hu += sigma_hu * smooth_noise(rng, clean_hu.shape, (0.3, 0.5, 0.5))
    pad_hu = None
    if rng.uniform() < fam.pad_prob:  # outside the reconstruction circle: padding value
        pad_hu = fam.pad_hu[0] if len(fam.pad_hu) == 1 else float(fam.pad_hu[int(extra.integers(len(fam.pad_hu)))])
        n_r, n_c = hu.shape[1:]
        rr = np.arange(n_r)[:, None] - (n_r - 1) / 2
        cc = np.arange(n_c)[None, :] - (n_c - 1) / 2
        hu[:, rr**2 + cc**2 > (0.5 * max(n_r, n_c)) ** 2] = pad_hu
    low = min(-2048.0, pad_hu) if pad_hu is not None else -2048.0
    drawn = {"noise_hu": round(float(sigma_hu), 4), "blur_mm": round(blur_mm, 4), "pad_hu": pad_hu}
    return np.clip(np.rint(hu), low, 3071).astype(np.int16), drawn


def nodule_record(nodule: Nodule, frames: _Frames, shape_irc: tuple[int, int, int], ramp_mm: float) -> NoduleRecord:
    found = lesion_mask(nodule, frames.spacing_irc, shape_irc, ramp_mm)
    center_xyz = frames.xyz(nodule.center_mm)
    if found is None or not found[1].any():
        low = high = center_xyz
    else:
        box, mask = found
        idx = np.argwhere(mask) + np.array([b.start for b in box])
        xyz = frames.xyz(idx * frames.spacing_irc)
        # the voxels' own extent along each patient axis, so the box covers whole voxels
        half_voxel_xyz = 0.5 * np.abs(frames.geometry.direction) @ frames.geometry.spacing_xyz
        low, high = xyz.min(axis=0) - half_voxel_xyz, xyz.max(axis=0) + half_voxel_xyz
    return NoduleRecord(
        center_xyz,
        round(nodule.diameter_mm, 6),
        nodule.is_malignant,
        nodule.ratings,
        low,
        high,
        nodule.texture,
        nodule.location,
    )


def _candidates(
    rng: np.random.Generator,
    anatomy,
    nodules: list[Nodule],
    findings: list[tuple[Nodule, float]],
    frames: _Frames,
    spacing_irc: np.ndarray,
    hard_mm: list[np.ndarray] = (),
) -> list[tuple[np.ndarray, int]]:
    """Detector-like candidates: 1-3 jittered class-1 points per nodule, many class-0 look-alikes
    (hard_mm: the family's hard negatives, each one class-0 row)."""
    rows: list[tuple[np.ndarray, int]] = []
    for n in nodules:
        r_eq = n.diameter_mm / 2
        for _ in range(1 + int(n.diameter_mm > 10) + int(rng.integers(0, 2))):
            jitter = np.clip(rng.normal(0.0, 0.15 * r_eq, 3), -0.3 * r_eq, 0.3 * r_eq)
            rows.append((n.center_mm + jitter, 1))

    def far_from_nodules(p_mm: np.ndarray) -> bool:
        return all(np.linalg.norm(p_mm - n.center_mm) >= n.shape.extent_mm + 2.0 for n in nodules)

    negatives: list[np.ndarray] = []
    want = {
        "vessel": int(rng.integers(10, 17)),
        "wall": int(rng.integers(6, 11)),
        "parenchyma": int(rng.integers(4, 9)),
    }
    # Vessels: points on centrelines (branch points half of the time), weighted by length.
    if anatomy.vessels:
        lengths = np.array([v.length_mm for v in anatomy.vessels])
        for _ in range(4 * want["vessel"]):
            if len(negatives) >= want["vessel"]:
                break
            v = anatomy.vessels[int(rng.choice(len(lengths), p=lengths / lengths.sum()))]
            p = v.point_mm(1.0 if rng.uniform() < 0.5 else rng.uniform(0.1, 0.9))
            if far_from_nodules(p):
                negatives.append(p)
    # Chest wall, mediastinum and diaphragm next to the lung; then plain parenchyma.
    lung = anatomy.lung
    near_wall = ndimage.binary_dilation(lung, iterations=2) & ~lung & anatomy.body
    parenchyma = lung & (anatomy.vessel_occupancy < 0.05)
    where = Placement(lung, np.zeros(1), lung, [], spacing_irc)
    for mask, count in ((near_wall, want["wall"]), (parenchyma, want["parenchyma"])):
        got = 0
        for _ in range(4 * count):
            if got >= count:
                break
            p = where.pick_voxel(rng, mask)
            if p is None:
                break
            if far_from_nodules(p):
                negatives.append(p)
                got += 1
    # Some candidates fire on the irrelevant findings, as real detectors do.
    for f, _ in findings:
        if rng.uniform() < 0.5 and far_from_nodules(f.center_mm):
            negatives.append(f.center_mm + rng.normal(0.0, 0.3, 3))
    negatives.extend(np.asarray(p, dtype=np.float64) for p in hard_mm)
    rows.extend((p, 0) for p in negatives)
    order = rng.permutation(len(rows))
    return [(frames.xyz(rows[k][0]), rows[k][1]) for k in order]
