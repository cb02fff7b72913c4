"""report.html: pictures a radiologist would rather look at than read.

For each finding above the nodule threshold: axial, coronal and sagittal views centered on it,
the candidate outlined (its bounding box), with p_nodule and p_malignant; plus an overview, a
coronal maximum-intensity projection of the lungs with every finding marked. PNGs are written
with Pillow (a well-kept imaging library: PNG encoding and drawing are not ours to rewrite).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from lunakit.errors import LunakitError
from lunakit.io.ct import CtScan
from lunakit.pipeline.options import AnalysisOptions, Finding

VIEW_MM = 60.0  # field of view of each close-up, in mm
VIEW_PX = 240  # close-up size on screen
LUNG_WINDOW = (-1350.0, 150.0)  # HU shown black..white (window 1500, level -600)


def _pillow():
    try:
        from PIL import Image, ImageDraw
    except ModuleNotFoundError:
        raise LunakitError("--report needs Pillow: pip install pillow") from None
    return Image, ImageDraw


def _to_gray(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    lo, hi = window
    return (np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def _plane(scan: CtScan, finding: Finding, view: str):
    """A 2D cut through the finding's center: (pixels, axis spacings in mm, center and bbox in-plane)."""
    i, r, c = (int(round(v)) for v in finding.center_irc)
    n_i, n_r, n_c = scan.hu.shape
    i, r, c = min(max(i, 0), n_i - 1), min(max(r, 0), n_r - 1), min(max(c, 0), n_c - 1)
    sx, sy, sz = (float(s) for s in scan.geometry.spacing_xyz)
    lo, hi = finding.bbox_irc
    if view == "axial":  # rows x cols at slice i
        return scan.hu[i], (sy, sx), (finding.center_irc[1], finding.center_irc[2]), (lo[1], lo[2], hi[1], hi[2])
    if view == "coronal":  # slices x cols at row r
        return scan.hu[:, r, :], (sz, sx), (finding.center_irc[0], finding.center_irc[2]), (lo[0], lo[2], hi[0], hi[2])
    # sagittal: slices x rows at column c
    return scan.hu[:, :, c], (sz, sy), (finding.center_irc[0], finding.center_irc[1]), (lo[0], lo[1], hi[0], hi[1])


def _close_up(scan: CtScan, finding: Finding, view: str, path: Path) -> None:
    """A VIEW_MM-wide window around the finding, resampled to square pixels, bbox outlined."""
    Image, ImageDraw = _pillow()
    plane, (s_down, s_across), (c_down, c_across), (d0, a0, d1, a1) = _plane(scan, finding, view)
    half_down, half_across = VIEW_MM / 2.0 / s_down, VIEW_MM / 2.0 / s_across
    top, left = int(np.floor(c_down - half_down)), int(np.floor(c_across - half_across))
    bottom, right = int(np.ceil(c_down + half_down)), int(np.ceil(c_across + half_across))
    padded = np.full((bottom - top, right - left), -1000, dtype=np.int16)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(bottom, plane.shape[0]), min(right, plane.shape[1])
    if src_bottom > src_top and src_right > src_left:
        padded[src_top - top : src_bottom - top, src_left - left : src_right - left] = plane[
            src_top:src_bottom, src_left:src_right
        ]
    image = Image.fromarray(_to_gray(padded)).convert("RGB")
    scale_down, scale_across = VIEW_PX / padded.shape[0], VIEW_PX / padded.shape[1]
    image = image.resize((VIEW_PX, VIEW_PX), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    box = (
        (a0 - left) * scale_across - 2,
        (d0 - top) * scale_down - 2,
        (a1 + 1 - left) * scale_across + 2,
        (d1 + 1 - top) * scale_down + 2,
    )
    draw.rectangle(box, outline=(255, 200, 0), width=2)
    draw.text((4, 4), view, fill=(0, 255, 0))
    image.save(path)


def lung_mask(hu: np.ndarray) -> np.ndarray:
    """Air inside the body (the lungs), closed so vessels and nodules within them are kept.

    Low-density voxels (< -400 HU) that are not connected to the volume's side borders are the
    lungs and airways; outside air always touches a border of the axial slices.
    """
    from scipy import ndimage

    low = hu < -400
    labels, count = ndimage.label(low)
    if count == 0:
        return low
    border = np.zeros(count + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = True
    inside = ~border[labels]
    return ndimage.binary_closing(inside, structure=np.ones((1, 7, 7), dtype=bool))


def _overview(scan: CtScan, findings: list[Finding], threshold: float, path: Path) -> None:
    """Coronal maximum-intensity projection of the lungs, findings above threshold marked."""
    Image, ImageDraw = _pillow()
    lungs = lung_mask(scan.hu)
    if lungs.any():
        mip = np.where(lungs, scan.hu, np.int16(-1000)).max(axis=1)  # (I, C): project along rows
    else:
        mip = scan.hu.max(axis=1)
    sx, _, sz = (float(s) for s in scan.geometry.spacing_xyz)
    width = 512
    height = max(1, int(round(width * mip.shape[0] * sz / (mip.shape[1] * sx))))
    image = Image.fromarray(_to_gray(mip, (-1000.0, 200.0))).convert("RGB").resize((width, height), Image.BILINEAR)
    # Head at the top: when the slice index runs towards the head (+z in LPS), flip.
    flip = bool(scan.geometry.direction[2, 2] > 0)
    scale_i, scale_c = height / mip.shape[0], width / mip.shape[1]
    if flip:
        image = image.transpose(Image.FLIP_TOP_BOTTOM)
    draw = ImageDraw.Draw(image)
    for rank, f in enumerate(findings, start=1):
        if f.p_nodule <= threshold:
            continue
        i, _, c = f.center_irc
        y = (mip.shape[0] - 1 - i if flip else i) * scale_i
        x = c * scale_c
        radius = max(6.0, f.diameter_mm / sx * scale_c)
        color = (255, 60, 60)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=color, width=2)
        draw.text((x + radius + 2, y - radius), str(rank), fill=color)
    image.save(path)


def write_report(out_dir: Path, scan: CtScan, findings: list[Finding], options: AnalysisOptions) -> Path:
    """Write report.html and its PNGs into `out_dir`; returns the HTML path."""
    out_dir = Path(out_dir)
    images = out_dir / "report_images"
    images.mkdir(exist_ok=True)
    _overview(scan, findings, options.nodule_threshold, images / "overview.png")
    shown = [f for f in findings if f.p_nodule > options.nodule_threshold]
    rows = []
    for rank, f in enumerate(findings, start=1):
        if f not in shown:
            continue
        cells = []
        for view in ("axial", "coronal", "sagittal"):
            name = f"finding{rank:03d}_{view}.png"
            _close_up(scan, f, view, images / name)
            cells.append(f'<img src="report_images/{name}" alt="{view}" width="{VIEW_PX}">')
        mal = "n/a" if f.p_malignant is None else f"{f.p_malignant:.3f}"
        x, y, z = f.center_xyz
        rows.append(
            f"<section><h2>Finding {rank}</h2><p>p_nodule <b>{f.p_nodule:.3f}</b>, p_malignant <b>{mal}</b>, "
            f"diameter {f.diameter_mm:.1f} mm, center ({x:.1f}, {y:.1f}, {z:.1f}) mm, "
            f"{f.voxel_count} voxels</p>{''.join(cells)}</section>"
        )
    body = "\n".join(rows) if rows else "<p>No finding above the nodule threshold.</p>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lunakit report: {html.escape(scan.series_uid)}</title>
<style>body{{font-family:sans-serif;background:#111;color:#eee;margin:2em}} img{{margin:4px;border:1px solid #444}}
section{{margin-bottom:2em}}</style></head><body>
<h1>lunakit findings</h1>
<p>Series {html.escape(scan.series_uid)}; {len(findings)} candidates, {len(shown)} above p_nodule
{options.nodule_threshold}. Research software, not for clinical use.</p>
<h2>Overview</h2><img src="report_images/overview.png" alt="overview: coronal MIP with findings">
{body}
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path
