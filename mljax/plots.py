"""Figures: matplotlib with the Agg backend (no display needed), saved atomically as PNG."""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from mljax.results import atomic_write_bytes

__all__ = [
    "curve_with_band",
    "image_grid",
    "save_figure",
]


def save_figure(fig: matplotlib.figure.Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Renders ``fig`` to PNG and writes it atomically to ``path``, then closes the figure."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path must end in .png, got {str(path)!r}")
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def curve_with_band(ax, x, values, *, label=None, color=None, alpha=0.25):
    """Plots the mean over axis 0 of ``values [runs, steps]`` with a ±1 std band.

    NaN entries (runs that stopped early, padded) are left out of each step's mean and std; a
    step with no finite value leaves a gap, without numpy's empty-slice warnings."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    seen = np.isfinite(values).any(axis=0)
    mean = np.full(values.shape[1], np.nan)
    std = np.full(values.shape[1], np.nan)
    mean[seen] = np.nanmean(values[:, seen], axis=0)
    std[seen] = np.nanstd(values[:, seen], axis=0)
    (line,) = ax.plot(x, mean, label=label, color=color)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def image_grid(ax, images, *, ncols: int | None = None, cmap="gray", pad: int = 1):
    """Shows ``images [n, h, w]`` or ``[n, h, w, 3]`` as one tiled image (each rescaled to [0, 1])."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be [n, h, w] or [n, h, w, c], got shape {images.shape}")
    n = images.shape[0]
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    h, w = images.shape[1:3]
    lo = images.reshape(n, -1).min(axis=1)
    hi = images.reshape(n, -1).max(axis=1)
    scale = np.where(hi > lo, hi - lo, 1.0)
    shape = (1, 1, 1) if images.ndim == 4 else (1, 1)
    norm = (images - lo.reshape(-1, *shape)) / scale.reshape(-1, *shape)
    canvas_shape = (nrows * (h + pad) - pad, ncols * (w + pad) - pad, *images.shape[3:])
    canvas = np.ones(canvas_shape)
    for i in range(n):
        r, c = divmod(i, ncols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = norm[i]
    ax.imshow(canvas, cmap=cmap if images.ndim == 3 else None, interpolation="nearest")
    ax.set_axis_off()
    return canvas
