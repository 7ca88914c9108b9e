"""first_layer_filters and probability_bars (restored from 8026a66^ for experiments.nn_vs_cnn):
tiles and bars checked against the arrays drawn, by hand."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from mljax.train import figures


def _tile(canvas, i, h, w, ncols, pad=1):
    r, c = divmod(i, ncols)
    return canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w]


def _unit(a):
    a = np.asarray(a, np.float64)
    return (a - a.min()) / (a.max() - a.min())


def test_dense_kernel_tiles_are_its_columns_as_images():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(6 * 4, 3))  # 3 units of 6x4 images
    fig, ax = plt.subplots()
    canvas = figures.first_layer_filters(ax, kernel, image_shape=(6, 4))
    ncols = 2  # ceil(sqrt(3))
    for j in range(3):
        np.testing.assert_allclose(_tile(canvas, j, 6, 4, ncols), _unit(kernel[:, j].reshape(6, 4)))
    plt.close(fig)


def test_conv_kernel_tiles_are_its_filters():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(5, 5, 1, 4))  # [kh, kw, c, f]
    fig, ax = plt.subplots()
    canvas = figures.first_layer_filters(ax, kernel)
    for f in range(4):
        np.testing.assert_allclose(_tile(canvas, f, 5, 5, 2), _unit(kernel[:, :, 0, f]))
    plt.close(fig)


@pytest.mark.parametrize(
    "kernel, shape",
    [(np.zeros((10, 3)), None), (np.zeros((10, 3)), (3, 3)), (np.zeros((2, 2, 2)), None)],
    ids=["dense-without-shape", "dense-wrong-shape", "3d"],
)
def test_bad_kernel_is_a_value_error(kernel, shape):
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="kernel"):
        figures.first_layer_filters(ax, kernel, image_shape=shape)
    plt.close(fig)


def test_probability_bars_heights_and_true_class_colour():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.45, 0.45]])
    labels = np.array([1, 2])
    imgs = np.zeros((2, 4, 4, 1))
    fig, axes = plt.subplots(2, 2)
    figures.probability_bars(axes, probs, labels, ["a", "b", "c"], images=imgs)
    green = matplotlib.colors.to_rgba("tab:green")
    for i in range(2):
        bars = axes[i, 1].patches
        np.testing.assert_allclose([b.get_height() for b in bars], probs[i])
        coloured = [k for k, b in enumerate(bars) if b.get_facecolor() == green]
        assert coloured == [labels[i]]
    plt.close(fig)
