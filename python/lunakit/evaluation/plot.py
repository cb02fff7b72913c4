"""The FROC picture. matplotlib is optional: without it, plotting fails naming what to install."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from lunakit.errors import LunakitError
from lunakit.evaluation.froc import FrocResult

__all__ = ["plot_froc", "require_matplotlib"]

_FORMATS = {".png", ".pdf", ".svg"}


def require_matplotlib():
    """matplotlib.pyplot on the non-interactive Agg backend, or a LunakitError naming the package."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LunakitError("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def check_plot_path(path: str | Path) -> Path:
    """The plot's path, checked before any work: known extension, existing folder."""
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise LunakitError(f"{path}: plot file must end in one of {', '.join(sorted(_FORMATS))}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise LunakitError(f"{path}: folder {parent} does not exist")
    if path.is_dir():
        raise LunakitError(f"{path}: is a directory")
    return path


def plot_froc(result: FrocResult, path: str | Path, cpm_ci: tuple[float, float] | None = None) -> Path:
    """Write the FROC curve (log2 x axis, 1/8..8 FPs per scan, the seven rates marked); atomic."""
    path = check_plot_path(path)
    plt = require_matplotlib()

    fig, ax = plt.subplots(figsize=(6.0, 4.5), dpi=150)
    try:
        # extend the curve flat past its last point so it spans the axis, as the reading rule does
        xs = np.r_[result.fp_per_scan, max(float(result.fp_per_scan[-1]), result.fp_rates[-1]) * 2.0]
        ys = np.r_[result.sensitivity, result.sensitivity[-1]]
        ax.plot(xs, ys, color="tab:blue", lw=2, label="FROC")
        ax.plot(result.fp_rates, result.sensitivities, "o", color="tab:red", label="7 LUNA16 rates", clip_on=False)
        ax.set_xscale("log", base=2)
        ax.set_xlim(result.fp_rates[0], result.fp_rates[-1])
        ax.set_ylim(0.0, 1.0)
        ax.set_xticks(result.fp_rates)
        ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
        ax.set_yticks(np.linspace(0.0, 1.0, 11))
        ax.grid(True, which="both", alpha=0.4)
        ax.set_xlabel("average number of false positives per scan")
        ax.set_ylabel("sensitivity")
        title = f"FROC: CPM {result.cpm:.3f}"
        if cpm_ci is not None:
            title += f" (95% CI {cpm_ci[0]:.3f}-{cpm_ci[1]:.3f})"
        ax.set_title(f"{title}\n{result.n_scans} scans, {result.n_nodules} nodules")
        ax.legend(loc="upper left")
        fig.tight_layout()
        _save_atomically(fig, path)
    finally:
        plt.close(fig)
    return path


def _save_atomically(fig, path: Path) -> None:
    """Write next to `path` under a temporary name, then rename: never a partial file at `path`."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise LunakitError(f"{path}: cannot write in {path.parent} ({exc.strerror})") from None
    os.close(fd)
    try:
        fig.savefig(tmp, format=path.suffix.lower().lstrip("."))
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise LunakitError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
