"""train.figures.confusion_matrix_plot against scikit-learn's confusion matrix and by hand."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from mljax import metrics as mx
from mljax.train.figures import confusion_matrix_plot


def test_confusion_matrix_plot_shows_counts_and_row_shares():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 0, 1, 1, 2, 0, 2, 2])
    cm = np.asarray(mx.confusion_matrix(y_true, y_pred, 3))
    # By hand: row i counts true class i predicted as j.
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 0], [1, 0, 3]])
    fig, ax = plt.subplots()
    im = confusion_matrix_plot(ax, cm, ["a", "b", "c"])
    np.testing.assert_allclose(
        im.get_array(), [[2 / 3, 1 / 3, 0], [0, 1, 0], [1 / 4, 0, 3 / 4]], rtol=1e-12
    )
    assert [t.get_text() for t in ax.texts] == [str(v) for v in cm.ravel()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    plt.close(fig)


def test_confusion_matrix_plot_empty_row_is_zero_not_nan():
    fig, ax = plt.subplots()
    im = confusion_matrix_plot(ax, np.array([[0, 0], [1, 3]]))
    np.testing.assert_allclose(im.get_array(), [[0, 0], [0.25, 0.75]])
    plt.close(fig)


@pytest.mark.parametrize(
    "cm,names,match",
    [
        (np.zeros((2, 3)), None, "square"),
        (np.array([[1, -1], [0, 1]]), None, "finite counts"),
        (np.array([[1, np.nan], [0, 1]]), None, "finite counts"),
        (np.eye(2), ["x"], "2 names"),
    ],
)
def test_confusion_matrix_plot_bad_input(cm, names, match):
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=match):
        confusion_matrix_plot(ax, cm, names)
    plt.close(fig)
