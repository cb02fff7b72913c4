"""Pictures of a validation pass: the ROC curve (classifiers) and slice overlays (U-Net).

Drawn with matplotlib's object API (no pyplot state, Agg canvas), so training in a
headless process or several ranks never touches a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auc: float, title: str) -> Any:
    """The ROC curve with its area in the legend."""
    fig = _new_figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr, color="tab:blue", lw=2, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def overlay_figure(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]], threshold: float = 0.5) -> Any:
    """One panel per (center slice HU [H, W], label bool [H, W], probability [H, W], caption):
    the slice in grey, true positive pixels green, missed (false negative) red, false
    positive yellow."""
    n = max(1, len(samples))
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig = _new_figure(3.2 * cols, 3.4 * rows)
    for k, (hu, label, prob, caption) in enumerate(samples):
        ax = fig.add_subplot(rows, cols, k + 1)
        grey = np.clip((np.asarray(hu, dtype=np.float32) + 1000.0) / 2000.0, 0.0, 1.0)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        label = np.asarray(label, dtype=bool)
        predicted = np.asarray(prob) > threshold
        for mask, color in (
            (label & predicted, (0.1, 0.9, 0.1)),
            (label & ~predicted, (1.0, 0.1, 0.1)),
            (~label & predicted, (1.0, 0.9, 0.0)),
        ):
            rgb[mask] = 0.4 * rgb[mask] + 0.6 * np.asarray(color)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
        ax.set_axis_off()
    fig.suptitle("green: found  red: missed  yellow: false positive", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
