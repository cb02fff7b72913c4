"""The chest of a phantom scan: body, fat, bone, heart, airways, lungs and their vessels.

Everything is drawn in the *canonical frame*: index axes (i, r, c) pointing superior,
posterior and to the patient's left (LPS), identity direction. Sizes are fractions of the
volume, so the phantom is a miniature chest that fills whatever shape it is given; lesion
and vessel sizes are in millimetres (see docs/phantoms.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lunakit.synth.tubes import InsideTest, Tube, draw_tube, grow_tree


@dataclass
class Anatomy:
    """A scan's anatomy before lesions, noise and blur (float32 HU, canonical frame)."""

    hu: np.ndarray  # float32 [I, R, C]
    body: np.ndarray  # bool: inside the skin
    lung: np.ndarray  # bool: lung parenchyma (vessels included)
    costal: np.ndarray  # bool: lung voxels in the lateral/posterior band along the ribs
    vessel_occupancy: np.ndarray  # float32 0..1, inside the lungs
    vessels: list[Tube]
    texture: np.ndarray  # float32, smooth, ~N(0, 1): tissue texture shared by all structures
    spacing_irc: np.ndarray  # mm per index step along (i, r, c)
    hard_negatives: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (kind, canonical mm)


@dataclass
class AnatomyExtras:
    """What a phantom family adds to the classic anatomy; every draw comes from `rng`."""

    rng: np.random.Generator
    vessel_density: float = 1.0  # factor on the 7 vessel trunks per lung
    airways: bool = False  # a segmental airway tree (walls and air lumen) in each lung
    fissures: bool = False  # one oblique fissure per lung
    end_on_vessels: int = 0  # nodule-sized vessel segments running along z (seen end-on)
    vessel_crossings: int = 0  # two vessels crossing at a point


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma: tuple[float, float, float]
) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def build_anatomy(
    rng: np.random.Generator,
    shape_irc: tuple[int, int, int],
    spacing_irc: np.ndarray,
    extras: AnatomyExtras | None = None,
) -> Anatomy:
    n_i, n_r, n_c = shape_irc
    sz = float(spacing_irc[0])
    i = np.arange(n_i, dtype=np.float32)[:, None, None]
    r = np.arange(n_r, dtype=np.float32)[None, :, None]
    c = np.arange(n_c, dtype=np.float32)[None, None, :]
    t = i / max(n_i - 1, 1)  # 0 = inferior end, 1 = superior end
    texture = smooth_noise(rng, shape_irc, (0.8, 1.6, 1.6))

    # Body: a rounded-rectangle (superellipse) cross-section whose size drifts along the scan.
    # A family sizes the chest by the shorter in-plane side, so a non-square matrix shows the
    # same body with more air around it (a rectangular field of view); the classic generator
    # (extras None) stretches it to the matrix, as it always did.
    body_r, body_c = (n_r, n_c) if extras is None else (min(n_r, n_c),) * 2
    cx = (n_c - 1) / 2 + rng.uniform(-0.02, 0.02) * body_c
    cy = (n_r - 1) / 2 + rng.uniform(-0.01, 0.03) * body_r
    wobble = 1 + 0.03 * np.sin(2 * np.pi * (t * rng.uniform(0.5, 1.5) + rng.uniform(0, 1)))
    bx = body_c * rng.uniform(0.40, 0.45) * wobble
    by_ant = body_r * rng.uniform(0.30, 0.34) * wobble
    by_post = body_r * rng.uniform(0.27, 0.30) * wobble
    xn = (c - cx) / bx  # (I, 1, C)
    yn = np.where(r < cy, (r - cy) / by_ant, (r - cy) / by_post)  # (I, R, 1)
    p = 2.4
    rho = (np.abs(xn) ** p + np.abs(yn) ** p) ** (1 / p)  # (I, R, C): 1 on the skin
    body = rho < 1.0

    fat_width = rng.uniform(0.06, 0.10)
    lung_wall = 1.0 - fat_width - rng.uniform(0.09, 0.12)  # lungs end here (pleura)
    hu = np.full(shape_irc, -1000.0, dtype=np.float32)
    muscle = rng.uniform(35, 55)
    hu[body] = (muscle + 8 * texture)[body]
    fat = body & (rho > 1.0 - fat_width)
    hu[fat] = (rng.uniform(-110, -90) + 12 * texture)[fat]

    # Table under the patient.
    table_row = int(round(cy + by_post.max() + rng.uniform(2, 5)))
    if table_row + 2 < n_r:
        hu[:, table_row : table_row + 2, :] = rng.uniform(80, 200)

    # Ribs: a band inside the chest wall, periodic along z and sloping down anteriorly.
    period_mm = max(3.5 * sz, n_i * sz / rng.uniform(6, 9))
    z_mm = i * sz
    rib_phase = (z_mm - 0.25 * period_mm * yn) / period_mm + rng.uniform(0, 1)  # (I, R, 1)
    in_band = (rho > lung_wall + 0.015) & (rho < lung_wall + 0.055)
    ribs = in_band & (np.mod(rib_phase, 1.0) < 0.35) & (np.abs(xn) > 0.15) & (t > 0.05)
    hu[ribs] = (rng.uniform(450, 650) + 60 * texture)[ribs]

    # Spine (vertebral bodies with cortex and discs) and sternum.
    spine_q = ((c - cx) / (0.16 * bx)) ** 2 + ((r - (cy + 0.66 * by_post)) / (0.14 * by_post)) ** 2
    vertebra = spine_q < 1.0
    disc = np.mod(z_mm / period_mm + rng.uniform(0, 1), 1.0) < 0.18
    hu[vertebra] = np.where(disc, 70.0, np.where(spine_q > 0.6, 650.0, 260.0) + 30 * texture)[vertebra]
    sternum = (((c - cx) / (0.12 * bx)) ** 2 + ((r - (cy - 0.86 * by_ant)) / (0.05 * by_ant)) ** 2 < 1) & (t > 0.3)
    hu[sternum] = 380.0

    # Heart: an ellipsoid left of centre in the lower chest.
    t_heart = rng.uniform(0.22, 0.32)
    heart = (
        ((c - cx - 0.12 * bx) / (0.40 * bx)) ** 2
        + ((r - cy + 0.22 * by_ant) / (0.42 * by_ant)) ** 2
        + ((t - t_heart) / 0.27) ** 2
    ) < 1.0
    hu[heart] = (45 + 6 * texture)[heart]

    # Lungs: one ellipse per side whose cross-section shrinks toward the apex and is cut
    # from below by the diaphragm dome; clipped by the chest wall, the mediastinum and the heart.
    lung = np.zeros(shape_irc, dtype=bool)
    t_top = rng.uniform(0.90, 0.97)
    t_mid = 0.55
    hilum_irc = []  # (t, c, r) of each lung's hilum
    for side in (-1, 1):  # -1: patient right (smaller x), +1: patient left
        xl = cx + side * 0.47 * bx
        yl = cy - 0.05 * by_ant
        ax = bx * (0.42 if side < 0 else 0.38)
        ay = by_ant * 0.85
        apex = np.sqrt(np.clip((t_top - t) / (t_top - t_mid), 0.0, 1.0)) + 1e-3
        q = ((c - xl) / (ax * apex)) ** 2 + ((r - yl) / (ay * apex)) ** 2
        dome = rng.uniform(0.12, 0.2)
        t_base = rng.uniform(0.05, 0.12) + (0.04 if side < 0 else 0.0)
        lung |= (q < 1.0) & (t > t_base + dome * (1.0 - q))
        t_hilum = rng.uniform(0.45, 0.6)
        hilum_irc.append(
            (t_hilum, float(np.mean(xl)) - side * 0.45 * float(np.mean(ax)), float(np.mean(yl)) + 0.05 * body_r)
        )
    lung &= (rho < lung_wall) & ~heart & (np.abs(c - cx) > 0.10 * bx)
    lung = _largest_per_side(lung, int(round(cx)))

    parenchyma = (rng.uniform(-875, -830) + 25 * np.clip(yn, -1, 1) + 10 * texture).astype(np.float32)
    hu[lung] = parenchyma[lung]

    # Vessels: a random tree per lung from its hilum; composited only inside the lungs.
    vessel_occ = np.zeros(shape_irc, dtype=np.float32)
    vessels: list[Tube] = []
    inside = InsideTest(lung, spacing_irc)
    ramp_mm = float(np.mean(spacing_irc[1:]))
    roots: list[tuple[np.ndarray, int, float]] = []  # (root mm, side, lung size mm)
    for t_hilum, x_hilum, y_hilum in hilum_irc:
        root_irc = np.array([t_hilum * (n_i - 1), y_hilum, x_hilum])
        root_mm = _pull_inside(root_irc * spacing_irc, inside, spacing_irc, lung)
        if root_mm is None:
            continue
        side = 1 if x_hilum > cx else -1
        size_mm = float(
            np.cbrt(
                lung[:, :, (slice(None, n_c // 2) if side < 0 else slice(n_c // 2, None))].sum() * np.prod(spacing_irc)
            )
        )
        trunks = [
            np.array([1.0, 0.0, 0.3 * side]),
            np.array([-1.0, 0.1, 0.3 * side]),
            np.array([0.0, -0.5, side]),
            np.array([0.1, 0.6, side]),
        ]
        trunks += [d + np.array([0.0, 0.0, side]) for d in rng.standard_normal((3, 3))]
        roots.append((root_mm, side, size_mm))
        if extras is not None and extras.vessel_density < 1.0:
            trunks = trunks[: max(2, int(round(len(trunks) * extras.vessel_density)))]
        tree = grow_tree(
            rng,
            root_mm,
            inside,
            trunks,
            trunk_length_mm=0.28 * size_mm,
            trunk_radius_mm=rng.uniform(1.4, 2.0),
            max_depth=5,
        )
        for tube in tree:
            draw_tube(vessel_occ, tube, spacing_irc, ramp_mm)
        vessels.extend(tree)
    hard_negatives: list[tuple[str, np.ndarray]] = []
    if extras is not None:
        more = _extra_vessels(extras, roots, inside, lung, spacing_irc)
        for tube in more:
            draw_tube(vessel_occ, tube, spacing_irc, ramp_mm)
        vessels.extend(more)
        hard_negatives = _vessel_hard_negatives(extras, inside, lung, spacing_irc, vessel_occ, vessels, ramp_mm)
    vessel_occ *= lung
    vessel_hu = rng.uniform(30, 60) + 8 * texture
    hu[lung] = (hu * (1 - vessel_occ) + vessel_hu * vessel_occ)[lung]

    _draw_airways(hu, rng, spacing_irc, cx, cy, bx, by_post, hilum_irc, n_i, ramp_mm)
    if extras is not None and extras.fissures:
        _draw_fissures(hu, extras.rng, lung, spacing_irc, int(round(cx)), ramp_mm)
    if extras is not None and extras.airways:
        _draw_airway_tree(hu, extras.rng, lung, vessel_occ, roots, inside, spacing_irc, ramp_mm)
    costal = lung & (rho > lung_wall - 0.35) & (np.abs(xn) > 0.35)
    return Anatomy(
        hu=hu,
        body=body,
        lung=lung,
        costal=costal,
        vessel_occupancy=vessel_occ,
        vessels=vessels,
        texture=texture,
        spacing_irc=spacing_irc,
        hard_negatives=hard_negatives,
    )


def _extra_vessels(
    extras: AnatomyExtras, roots: list, inside: InsideTest, lung: np.ndarray, spacing_irc: np.ndarray
) -> list[Tube]:
    """More vessel trunks per lung when the family's density factor is above 1."""
    rng = extras.rng
    out: list[Tube] = []
    if extras.vessel_density <= 1.0:
        return out
    for root_mm, side, size_mm in roots:
        n_more = int(round(7 * (extras.vessel_density - 1.0)))
        if n_more <= 0:
            continue
        dirs = [d + np.array([0.0, 0.0, side]) for d in rng.standard_normal((n_more, 3))]
        out.extend(
            grow_tree(
                rng,
                root_mm,
                inside,
                dirs,
                trunk_length_mm=0.25 * size_mm,
                trunk_radius_mm=rng.uniform(0.9, 1.5),
                max_depth=5,
            )
        )
    return out


def _tube_inside(inside: InsideTest, p0: np.ndarray, p1: np.ndarray, radius_mm: float) -> bool:
    """Whether the tube's axis and a margin of radius + 1 mm around it lie in the mask."""
    axis = p1 - p0
    axis = axis / (np.linalg.norm(axis) or 1.0)
    helper = np.array([0.0, 1.0, 0.0]) if abs(axis[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    margin = radius_mm + 1.0
    for s in np.linspace(0.0, 1.0, 7):
        p = p0 + s * (p1 - p0)
        for q in (p, p + margin * u, p - margin * u, p + margin * v, p - margin * v):
            if not inside(q):
                return False
    return True


def _random_lung_point(rng: np.random.Generator, lung: np.ndarray, spacing_irc: np.ndarray) -> np.ndarray | None:
    flat = np.flatnonzero(lung)
    if flat.size == 0:
        return None
    idx = np.array(np.unravel_index(int(flat[rng.integers(flat.size)]), lung.shape), dtype=np.float64)
    return idx * spacing_irc


def _vessel_hard_negatives(
    extras: AnatomyExtras,
    inside: InsideTest,
    lung: np.ndarray,
    spacing_irc: np.ndarray,
    vessel_occ: np.ndarray,
    vessels: list[Tube],
    ramp_mm: float,
) -> list[tuple[str, np.ndarray]]:
    """Vessel segments seen end-on (running along z, 2.6-4.8 mm thick) and vessel crossings,
    drawn into the vessel occupancy and returned as (kind, centre mm) hard negatives."""
    rng = extras.rng
    out: list[tuple[str, np.ndarray]] = []
    for kind, count in (("end_on_vessel", extras.end_on_vessels), ("vessel_crossing", extras.vessel_crossings)):
        for _ in range(count):
            for _try in range(30):
                p = _random_lung_point(rng, lung, spacing_irc)
                if p is None:
                    break
                if kind == "end_on_vessel":
                    tilt = np.deg2rad(rng.uniform(0, 12))
                    phi = rng.uniform(0, 2 * np.pi)
                    d = np.array([np.cos(tilt), np.sin(tilt) * np.sin(phi), np.sin(tilt) * np.cos(phi)])
                    half = rng.uniform(8.0, 16.0)
                    r = rng.uniform(1.3, 2.4)
                    tubes = [Tube(tuple(p - half * d), tuple(p + half * d), r, 0.85 * r, depth=0)]
                else:
                    d1 = rng.standard_normal(3)
                    d1 /= np.linalg.norm(d1)
                    d2 = rng.standard_normal(3)
                    d2 -= (d2 @ d1) * d1 * rng.uniform(0.0, 0.5)  # 60-90 degrees apart
                    d2 /= np.linalg.norm(d2)
                    tubes = []
                    for d in (d1, d2):
                        half = rng.uniform(6.0, 12.0)
                        r = rng.uniform(1.0, 1.8)
                        tubes.append(Tube(tuple(p - half * d), tuple(p + half * d), r, 0.9 * r, depth=0))
                if all(_tube_inside(inside, np.asarray(t.p0_mm), np.asarray(t.p1_mm), t.r0_mm) for t in tubes):
                    for t in tubes:
                        draw_tube(vessel_occ, t, spacing_irc, ramp_mm)
                    vessels.extend(tubes)
                    out.append((kind, p))
                    break
    return out


def _draw_fissures(
    hu: np.ndarray, rng: np.random.Generator, lung: np.ndarray, spacing_irc: np.ndarray, mid_c: int, ramp_mm: float
) -> None:
    """One oblique fissure per lung: a thin sheet (about 1 mm, -700..-550 HU) running from
    posterior-superior to anterior-inferior through the lung."""
    for cols in (slice(None, mid_c), slice(mid_c, None)):
        idx = np.argwhere(lung[:, :, cols])
        if idx.size == 0:
            continue
        idx[:, 2] += cols.start or 0
        p_mm = idx * spacing_irc
        theta = np.deg2rad(rng.uniform(30, 60))
        normal = np.array([np.cos(theta), np.sin(theta), rng.uniform(-0.2, 0.2)])
        normal /= np.linalg.norm(normal)
        centre = p_mm.mean(axis=0)
        extent = float(np.ptp(p_mm @ normal))
        offset = rng.uniform(-0.15, 0.15) * extent
        dist = np.abs((p_mm - centre) @ normal - offset)
        half = rng.uniform(0.35, 0.6)
        occ = np.clip((half - dist) / ramp_mm + 0.5, 0.0, 1.0).astype(np.float32)
        fissure_hu = rng.uniform(-700, -550)
        sel = tuple(idx.T)
        old = hu[sel]
        hu[sel] = np.maximum(old, old * (1 - occ) + fissure_hu * occ)


def _draw_airway_tree(
    hu: np.ndarray,
    rng: np.random.Generator,
    lung: np.ndarray,
    vessel_occ: np.ndarray,
    roots: list,
    inside: InsideTest,
    spacing_irc: np.ndarray,
    ramp_mm: float,
) -> None:
    """Lobar and segmental bronchi from each hilum: air lumen (1.2-2 mm radius at the root)
    with a soft-tissue wall (0.3 of the radius, at least 0.5 mm), drawn inside the lungs and
    behind the vessels (a vessel, or a hard negative drawn as one, stays whole)."""
    wall = np.zeros(hu.shape, dtype=np.float32)
    lumen = np.zeros(hu.shape, dtype=np.float32)
    for root_mm, side, size_mm in roots:
        dirs = [d + np.array([0.0, 0.0, side]) for d in rng.standard_normal((4, 3))]
        tree = grow_tree(
            rng,
            root_mm,
            inside,
            dirs,
            trunk_length_mm=0.22 * size_mm,
            trunk_radius_mm=rng.uniform(1.2, 2.0),
            max_depth=3,
            min_radius_mm=0.5,
        )
        for tube in tree:
            draw_tube(wall, tube, spacing_irc, ramp_mm, extra_mm=max(0.3 * tube.r0_mm, 0.5))
            draw_tube(lumen, tube, spacing_irc, ramp_mm)
    keep = lung * (1.0 - vessel_occ)
    wall *= keep
    lumen *= keep
    hu[...] = hu * (1 - wall) + 30.0 * wall
    hu[...] = hu * (1 - lumen) - 1000.0 * lumen


def _largest_per_side(lung: np.ndarray, mid_c: int) -> np.ndarray:
    """Keep the largest connected piece of each lung (drops slivers the clipping leaves)."""
    out = np.zeros_like(lung)
    for cols in (slice(None, mid_c), slice(mid_c, None)):
        part = lung[:, :, cols]
        labels, n = ndimage.label(part)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        out[:, :, cols] = labels == (int(np.argmax(sizes)) + 1)
    return out


def _pull_inside(p_mm: np.ndarray, inside: InsideTest, spacing_irc: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """p_mm if inside the mask, else the nearest point on the way to the mask's centroid."""
    if inside(p_mm):
        return p_mm
    side_c = int(round(p_mm[2] / spacing_irc[2]))
    cols = slice(None, mask.shape[2] // 2) if side_c < mask.shape[2] // 2 else slice(mask.shape[2] // 2, None)
    idx = np.argwhere(mask[:, :, cols])
    if idx.size == 0:
        return None
    idx[:, 2] += cols.start or 0
    target = idx.mean(axis=0) * spacing_irc
    for s in np.linspace(0, 1, 41)[1:]:
        q = p_mm + s * (target - p_mm)
        if inside(q):
            return q
    return None


def _draw_airways(
    hu: np.ndarray,
    rng: np.random.Generator,
    spacing_irc: np.ndarray,
    cx: float,
    cy: float,
    bx: np.ndarray,
    by_post: np.ndarray,
    hilum_irc: list,
    n_i: int,
    ramp_mm: float,
) -> None:
    """Trachea from the top of the scan to the carina, then one main bronchus to each hilum."""
    t_carina = rng.uniform(0.62, 0.72)
    width_mm = float(np.mean(bx)) * float(spacing_irc[2])
    lumen_mm = 0.065 * width_mm
    wall_mm = max(0.35 * lumen_mm, 0.6)
    carina = np.array([t_carina * (n_i - 1), cy + 0.25 * float(np.mean(by_post)), cx]) * spacing_irc
    top = np.array([(n_i - 1) + 2.0, carina[1] / spacing_irc[1], cx]) * spacing_irc
    tubes = [Tube(tuple(carina), tuple(top), lumen_mm, lumen_mm)]
    for t_hilum, x_hilum, y_hilum in hilum_irc:
        hilum = np.array([t_hilum * (n_i - 1), y_hilum, x_hilum]) * spacing_irc
        end = carina + 0.8 * (hilum - carina)
        tubes.append(Tube(tuple(carina), tuple(end), 0.75 * lumen_mm, 0.55 * lumen_mm))
    wall = np.zeros(hu.shape, dtype=np.float32)
    lumen = np.zeros(hu.shape, dtype=np.float32)
    for tube in tubes:
        draw_tube(wall, tube, spacing_irc, ramp_mm, extra_mm=wall_mm)
        draw_tube(lumen, tube, spacing_irc, ramp_mm)
    hu[...] = hu * (1 - wall) + 40.0 * wall
    hu[...] = hu * (1 - lumen) - 1000.0 * lumen
