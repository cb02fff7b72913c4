"""Phantom nodules inserted into a real CT: known truth on anatomy and a scanner we did not draw (#16).

The phantom families test one generator against its own settings. A real scan's lungs,
vessels, airways, bowel gas, noise texture and reconstruction kernel come from no generator of
ours, so nodules inserted into it measure what a model does on anatomy it never saw. Only the
nodules are ours: drawn with a family's nodule mix (size, texture, location, malignancy), then
added to the host the way a lesion adds to a measurement. Each voxel gains the lesion's excess
over the smoothed host there (a vessel denser than the lesion stays), blurred like the
acquisition, so the host's own noise runs through the nodule.

Lesions that the host already holds are not known to us. `known` lists those a reader marked
(patient mm, diameter): they are kept free of insertions and written as irrelevant findings,
so a mark on one is neither a hit nor a false positive. Any other real lesion counts as a
false positive, so the measured rate is an upper bound.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy import ndimage

from lunakit.io.geometry import Geometry
from lunakit.pipeline import ops
from lunakit.synth.anatomy import smooth_noise
from lunakit.synth.dataset import MAX_VOXELS, DatasetSummary, check_arguments, scan_indices, write_scans
from lunakit.synth.family import Family, SynthError, get_family
from lunakit.synth.nodules import Placement, lesion_values, lung_depth_mm, occupancy_box, sphere_shape
from lunakit.synth.scan import CLASSIC_BLUR_VOXELS, PhantomScan, nodule_record, place_nodules, series_uid

AIRWAY_HU = -960.0  # smoothed: air without parenchyma (trachea, bronchi, bowel gas)
SOLID_HU = -300.0  # smoothed, inside the lung field: vessels and bronchial walls


def write_inserted_dataset(
    out,
    host: str,
    n_scans: int,
    seed: int,
    family: Family | str | None = "wide",
    known: str | None = None,
    progress: bool = False,
) -> DatasetSummary:
    """n_scans copies of the host scan (a file or DICOM folder), each with its own draw of
    nodules, written as `lunakit synth` writes phantoms (docs/phantoms.md).

    known: an annotations-style table (seriesuid, coordX, coordY, coordZ, diameter_mm) of
    lesions the host already holds; its rows for the host's series are kept free of
    insertions and listed in annotations_excluded.csv.
    """
    from lunakit.evaluation.tables import read_annotations_table
    from lunakit.io import ct

    n_scans, seed, _ = check_arguments(n_scans, seed, None)
    fam = get_family(family)
    scan = ct.load(host)
    if scan.hu.size > MAX_VOXELS:
        raise SynthError(f"{host}: {scan.hu.size} voxels, more than the {MAX_VOXELS} a scan may have")
    rows: list[tuple[np.ndarray, float]] = []
    if known is not None:
        table = read_annotations_table(known)
        rows = [
            (table.center_xyz[k], float(table.diameter_mm[k]))
            for k, uid in enumerate(table.seriesuid)
            if uid == scan.series_uid
        ]
        if not rows:
            raise SynthError(f"{known}: no row for the host's series {scan.series_uid}")
    where = host_placement(scan.hu, _HostFrames(scan.geometry).spacing_irc)
    manifest = {
        "seed": seed,
        "n_scans": n_scans,
        "shape": None,
        "host": {"path": str(host), "series_uid": scan.series_uid, "known_findings": len(rows)},
        "family": fam.to_dict(),
    }
    scans = (insert_nodules(scan.hu, scan.geometry, seed, k, fam, rows, where) for k in scan_indices(n_scans, progress))
    return write_scans(out, scans, manifest, hard_negatives=False)


class _HostFrames:
    """The host's stored array is the canonical frame: canonical mm = index x spacing."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.spacing_irc = np.asarray(geometry.spacing_xyz, dtype=np.float64)[::-1].copy()

    def xyz(self, canonical_mm: np.ndarray) -> np.ndarray:
        return self.geometry.irc_to_xyz(np.asarray(canonical_mm) / self.spacing_irc)


def host_placement(hu: np.ndarray, spacing_irc: np.ndarray) -> Placement:
    """Where nodules may go in a real scan: lung depth, open lung (not airways), vessel voxels."""
    field = ops.lung_field(torch.from_numpy(hu)).numpy()  # the pipeline's (option lung_margin_mm)
    if not field.any():
        raise SynthError("host scan: no lung field found (no parenchyma-like air inside the body)")
    # the work happens in the lungs' bounding box, one voxel wider (outside it nothing is lung)
    box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in ndimage.find_objects(field.astype(np.uint8))[0])
    lungs = field[box]
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), sigma=(0.5, 1.0, 1.0))[box]
    airway = ndimage.binary_dilation(smooth < AIRWAY_HU, iterations=2)
    sampling = tuple(float(s) for s in spacing_irc)
    solid = lungs & (smooth > SOLID_HU)
    thickness = ndimage.distance_transform_edt(solid, sampling=sampling).astype(np.float32)
    centreline = solid & (thickness == ndimage.maximum_filter(thickness, size=3))

    def full(part: np.ndarray) -> np.ndarray:
        whole = np.zeros(hu.shape, dtype=part.dtype)
        whole[box] = part
        return whole

    open_lung = full(lungs & ~airway)
    return Placement(
        lung=open_lung,
        lung_depth_mm=full(lung_depth_mm(lungs, spacing_irc)),
        costal=open_lung,
        vessels=[],
        spacing_irc=np.asarray(spacing_irc, dtype=np.float64),
        solid=full(solid),
        vessel_radius_mm=full(np.where(centreline, thickness, 0.0).astype(np.float32)),
    )


def insert_nodules(
    host_hu: np.ndarray,
    geometry: Geometry,
    seed: int,
    index: int,
    family: Family | str | None = "wide",
    known: list[tuple[np.ndarray, float]] = (),
    where: Placement | None = None,
) -> PhantomScan:
    """The host scan with the index-th draw of nodules inserted (deterministic in seed, index).

    known: (center_xyz, diameter_mm) of lesions the host already holds. `where` may pass a
    host_placement computed once for many copies (it is not changed).
    """
    fam = get_family(family)
    frames = _HostFrames(geometry)
    spacing = frames.spacing_irc
    if where is None:
        where = host_placement(host_hu, spacing)
    where = dataclasses.replace(where, taken=[])
    for center_xyz, diameter in known:
        center_mm = geometry.xyz_to_irc(np.asarray(center_xyz, dtype=np.float64)) * spacing
        where.taken.append((center_mm, sphere_shape(max(diameter, 3.0)).extent_mm))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x1A5E]))
    ramp_mm = float(np.mean(spacing[1:]))
    nodules = place_nodules(rng, where, ramp_mm, fam)
    hu = host_hu.astype(np.float32)
    texture = smooth_noise(rng, host_hu.shape, (0.8, 1.6, 1.6))  # the phantoms' tissue texture
    for nodule in nodules:
        _add_lesion(hu, host_hu, texture, nodule, spacing, ramp_mm)
    low = float(min(host_hu.min(), -1024))
    stored = np.clip(np.rint(hu), low, 3071).astype(np.int16)
    records = [nodule_record(n, frames, host_hu.shape, ramp_mm) for n in nodules]
    candidates = [(r.center_xyz, 1) for r in records]
    excluded = [(np.asarray(c, dtype=np.float64), float(d)) for c, d in known]
    params = {"family": fam.name, "host_shape_irc": list(host_hu.shape), "inserted": len(nodules)}
    return PhantomScan(series_uid(seed, index), stored, geometry, "host", records, excluded, candidates, [], params)


def _add_lesion(
    hu: np.ndarray, host_hu: np.ndarray, texture: np.ndarray, nodule, spacing_irc: np.ndarray, ramp_mm: float
) -> None:
    """Add the lesion's excess over the smoothed host, blurred like an acquisition, in place."""
    found = occupancy_box(nodule, spacing_irc, hu.shape, ramp_mm)
    if found is None:
        return
    box, occ = found
    lesion = lesion_values(nodule, box, occ, texture, spacing_irc, ramp_mm)
    margin = tuple(slice(max(b.start - 3, 0), min(b.stop + 3, n)) for b, n in zip(box, hu.shape))
    inner = tuple(slice(b.start - m.start, b.stop - m.start) for b, m in zip(box, margin))
    background = ndimage.gaussian_filter(host_hu[margin].astype(np.float32), sigma=(0.5, 1.5, 1.5), mode="nearest")
    excess = np.zeros_like(background)
    excess[inner] = occ * np.maximum(lesion - background[inner], 0.0)
    hu[margin] += ndimage.gaussian_filter(excess, sigma=CLASSIC_BLUR_VOXELS, mode="constant")
