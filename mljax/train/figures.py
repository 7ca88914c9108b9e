"""Training figures (matplotlib, Agg): decision boundaries, loss curves with std bands,
confusion matrices, first-layer filters, probability bars. Each draws on a given ``ax`` and
returns what it drew; save with :func:`mljax.plots.save_figure`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mljax.plots import curve_with_band, image_grid
from mljax.train.sweep import GroupStats

__all__ = [
    "confusion_matrix_plot",
    "curves_with_bands",
    "decision_boundary",
    "first_layer_filters",
    "probability_bars",
]


def decision_boundary(
    ax,
    predict: Callable[[np.ndarray], np.ndarray],
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    extent: tuple[float, float, float, float] = (-6.0, 6.0, -6.0, 6.0),
    resolution: int = 120,
    title: str | None = None,
) -> np.ndarray:
    """Colours the plane by ``predict`` and overlays the test points.

    Args:
        predict: ``points [m, 2] -> scores [m]`` (sign = class; the Playground's tanh output).
        x_test: ``[n, 2]`` test points; y_test: ``[n]`` labels (sign = class).
        extent: (x_min, x_max, y_min, y_max).
        resolution: grid points per axis.

    Returns:
        The ``[resolution, resolution]`` score grid.
    """
    x0, x1, y0, y1 = extent
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    scores = np.asarray(predict(pts), dtype=np.float64).reshape(resolution, resolution)
    ax.contourf(
        gx, gy, scores, levels=np.linspace(-1, 1, 21), cmap="RdBu", alpha=0.6, extend="both"
    )
    ax.contour(gx, gy, scores, levels=[0.0], colors="k", linewidths=0.8)
    x_test, y_test = np.asarray(x_test), np.asarray(y_test).ravel()
    pos = y_test > 0
    ax.scatter(
        x_test[pos, 0],
        x_test[pos, 1],
        s=10,
        c="tab:blue",
        edgecolors="w",
        linewidths=0.4,
        label="test +1",
    )
    ax.scatter(
        x_test[~pos, 0],
        x_test[~pos, 1],
        s=10,
        c="tab:orange",
        edgecolors="w",
        linewidths=0.4,
        label="test -1",
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=8)
    return scores


def curves_with_bands(
    ax,
    curves,
    *,
    x: np.ndarray | None = None,
    ylabel: str = "loss",
    log: bool = False,
    labels: Sequence[str] | None = None,
):
    """One mean ± std band per curve.

    Args:
        curves: ``{label: [runs, steps]}`` (mean and std over runs, NaN ignored), or the
            :class:`mljax.train.sweep.GroupStats` of a per-epoch metric (its ``mean`` ± ``std``
            per group, labelled by the group's values unless ``labels`` is given).
        x: the steps' x values (default 1, 2, ...).
        labels: legend labels for a ``GroupStats``, one per group.
    """
    lines = []
    if isinstance(curves, GroupStats):
        mean, std = np.asarray(curves.mean, np.float64), np.asarray(curves.std, np.float64)
        if mean.ndim != 2:
            raise ValueError(
                f"GroupStats of a curve metric needed ([G, T] means), got {mean.shape}"
            )
        if labels is not None and len(labels) != mean.shape[0]:
            raise ValueError(f"labels must give one label per group ({mean.shape[0]})")
        for g in range(mean.shape[0]):
            xs = np.arange(1, mean.shape[1] + 1) if x is None else x
            label = curves.label(g) if labels is None else labels[g]
            (line,) = ax.plot(xs, mean[g], label=label)
            band = np.nan_to_num(std[g])  # no band where one member is left (or none)
            ax.fill_between(
                xs, mean[g] - band, mean[g] + band, color=line.get_color(), alpha=0.25, lw=0
            )
            lines.append(line)
    else:
        for label, values in curves.items():
            values = np.asarray(values, dtype=np.float64)
            xs = np.arange(1, values.shape[-1] + 1) if x is None else x
            lines.append(curve_with_band(ax, xs, values, label=label))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if lines:
        ax.legend(fontsize=6)
    return lines


def confusion_matrix_plot(ax, cm: np.ndarray, class_names: Sequence[str] | None = None):
    """Row-normalised confusion matrix ``cm [k, k]`` (rows: true class) with its counts.

    Each cell is coloured by ``cm[i, j] / Σ_j cm[i, j]`` (the share of true class ``i``
    predicted as ``j``; 0 for an empty row) and labelled with the count ``cm[i, j]``.

    Args:
        cm: ``[k, k]`` counts, e.g. :func:`mljax.metrics.confusion_matrix`.
        class_names: ``k`` tick labels (default ``0 .. k-1``).

    Returns:
        The ``AxesImage`` (its array is the row-normalised matrix).

    Raises:
        ValueError: ``cm`` not square, negative or not finite; wrong number of names.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square [k, k] matrix, got shape {cm.shape}")
    if not np.all(np.isfinite(cm)) or np.any(cm < 0):
        raise ValueError("cm must hold finite counts >= 0")
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names must give {k} names, got {len(names)}")
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=90, fontsize=6)
    ax.set_yticks(range(k), names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=5,
                color="w" if norm[i, j] > 0.5 else "k",
            )
    return im


def first_layer_filters(ax, kernel: np.ndarray, *, image_shape: tuple[int, int] | None = None):
    """First-layer weights as an image grid.

    Args:
        kernel: a conv kernel ``[kh, kw, c, f]`` (one tile per filter, channel mean when
            c ∉ {1, 3}) or a dense kernel ``[h·w, f]`` with ``image_shape = (h, w)``.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim == 4:
        tiles = np.moveaxis(kernel, -1, 0)  # [f, kh, kw, c]
        if tiles.shape[-1] == 1:
            tiles = tiles[..., 0]
        elif tiles.shape[-1] != 3:
            tiles = tiles.mean(axis=-1)
    elif kernel.ndim == 2:
        if image_shape is None or int(np.prod(image_shape)) != kernel.shape[0]:
            raise ValueError(
                f"a dense kernel {kernel.shape} needs image_shape with h·w = {kernel.shape[0]}"
            )
        tiles = kernel.T.reshape(kernel.shape[1], *image_shape)
    else:
        raise ValueError(f"kernel must be [kh, kw, c, f] or [d, f], got shape {kernel.shape}")
    return image_grid(ax, tiles)


def probability_bars(
    axes,
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    images: np.ndarray | None = None,
):
    """For each example: its image (optional) and a bar chart of class probabilities.

    Args:
        axes: array of axes ``[n, 2]`` with images, else ``[n]``.
        probs: ``[n, k]`` predicted probabilities; labels: ``[n]`` true classes.
    """
    probs = np.asarray(probs)
    axes = np.asarray(axes)
    for i in range(probs.shape[0]):
        if images is not None:
            axi, axb = axes[i]
            axi.imshow(np.asarray(images[i]).squeeze(), cmap="gray")
            axi.set_axis_off()
        else:
            axb = axes[i]
        colors = ["tab:green" if c == labels[i] else "tab:gray" for c in range(probs.shape[1])]
        axb.bar(range(probs.shape[1]), probs[i], color=colors)
        axb.set_ylim(0, 1)
        axb.set_xticks(range(probs.shape[1]), list(class_names), rotation=90, fontsize=5)
    return axes
