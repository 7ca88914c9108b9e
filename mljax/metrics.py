"""Evaluation metrics as pure, jit- and vmap-able JAX functions.

Labels are integer arrays ``[n]``. Sizes that shape an output (the number of classes or
clusters) are static arguments; when omitted they are read from the data, which needs
concrete (non-traced) labels.

Adjusted Rand index (Hubert & Arabie 1985). With the contingency table ``n_ij`` (points in
true class ``i`` and predicted cluster ``j``), row sums ``a_i``, column sums ``b_j`` and
``C(m) = m (m - 1) / 2``::

    index    = sum_ij C(n_ij)
    expected = sum_i C(a_i) sum_j C(b_j) / C(n)
    max      = (sum_i C(a_i) + sum_j C(b_j)) / 2
    ARI      = (index - expected) / (max - expected)

and ``ARI = 1`` when ``max == expected`` (both partitions trivial, as scikit-learn does).
The contingency table is a one-hot matmul ``onehot(true)ᵀ onehot(pred)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mljax.validation import is_concrete

__all__ = [
    "accuracy",
    "adjusted_rand_index",
    "confusion_matrix",
    "contingency_matrix",
    "error_rate",
]


def _labels(a, name):
    a = jnp.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D [n]; got shape {tuple(a.shape)}")
    if not jnp.issubdtype(a.dtype, jnp.integer):
        if not is_concrete(a):
            raise ValueError(f"{name} must be an integer array; got dtype {a.dtype}")
        an = np.asarray(a)
        if not np.all(an == np.round(an)):
            raise ValueError(f"{name} must hold integer labels; got non-integer values")
        a = a.astype(jnp.int32)
    return a


def _pair(y_true, y_pred, names=("labels_true", "labels_pred")):
    a, b = _labels(y_true, names[0]), _labels(y_pred, names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape; got {a.shape} and {b.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{names[0]} is empty; need at least one label")
    return a, b


def _n_values(a, given, name):
    """The number of label values (static): ``given`` or ``max(a) + 1`` from concrete data."""
    if given is not None:
        if not isinstance(given, (int, np.integer)) or given < 1:
            raise ValueError(f"{name} must be an int >= 1; got {given!r}")
        return int(given)
    if not is_concrete(a):
        raise ValueError(f"{name} must be given when the labels are traced (under jit or vmap)")
    an = np.asarray(a)
    if an.min() < 0:
        raise ValueError(f"labels must be >= 0 (or pass {name}); got min {an.min()}")
    return int(an.max()) + 1


def contingency_matrix(labels_true, labels_pred, n_true: int, n_pred: int, weights=None):
    """``[n_true, n_pred]`` counts of points in each (true, predicted) pair.

    Labels outside ``[0, n_true)`` / ``[0, n_pred)`` are not counted.
    """
    dtype = jnp.result_type(float)  # float64 under jax_enable_x64
    a = jax.nn.one_hot(labels_true, n_true, dtype=dtype)
    b = jax.nn.one_hot(labels_pred, n_pred, dtype=dtype)
    if weights is not None:
        a = a * weights[:, None]
    # Sums of 0/1 products: exact up to 2**24 points per cell in float32.
    return a.T @ b


def _comb2(m):
    return m * (m - 1.0) / 2.0


def _densify(a, b):
    """Relabels both vectors to ``0..u-1`` (concrete data only) so the table is small."""
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    return jnp.asarray(ai.reshape(-1), jnp.int32), jnp.asarray(bi.reshape(-1), jnp.int32)


def adjusted_rand_index(labels_true, labels_pred, *, n_true=None, n_pred=None) -> jax.Array:
    """Adjusted Rand index between two partitions (scikit-learn's ``adjusted_rand_score``).

    Args:
        labels_true: ``[n]`` integer labels of the reference partition.
        labels_pred: ``[n]`` integer labels of the partition to evaluate.
        n_true: number of reference labels (labels in ``[0, n_true)``); static. Needed under
            jit/vmap (labels outside the range are not counted). When either is omitted, the
            labels must be concrete and may take any integer values (they are renumbered).
        n_pred: likewise for ``labels_pred``.

    Returns:
        ``[]`` ARI (default float dtype): 1 for identical partitions (up to renaming), about 0 for random
        ones, possibly negative.
    """
    a, b = _pair(labels_true, labels_pred)
    if n_true is None or n_pred is None:
        if not (is_concrete(a) and is_concrete(b)):
            raise ValueError("n_true and n_pred must be given when the labels are traced")
        a, b = _densify(a, b)
        n_true, n_pred = int(a.max()) + 1, int(b.max()) + 1
    else:
        n_true = _n_values(a, n_true, "n_true")
        n_pred = _n_values(b, n_pred, "n_pred")
    return _ari(a, b, n_true, n_pred)


@jax.jit(static_argnames=("n_true", "n_pred"))
def _ari(a, b, n_true, n_pred):
    table = contingency_matrix(a, b, n_true, n_pred)
    n = jnp.sum(table)
    index = jnp.sum(_comb2(table))
    sum_a = jnp.sum(_comb2(jnp.sum(table, axis=1)))
    sum_b = jnp.sum(_comb2(jnp.sum(table, axis=0)))
    expected = sum_a * sum_b / jnp.maximum(_comb2(n), 1.0)
    max_index = (sum_a + sum_b) / 2.0
    denom = max_index - expected
    # Trivial partitions (one cluster each, or all singletons): scikit-learn returns 1.
    return jnp.where(denom == 0, 1.0, (index - expected) / jnp.where(denom == 0, 1.0, denom))


def accuracy(labels_true, labels_pred) -> jax.Array:
    """Fraction of equal labels: ``mean(labels_true == labels_pred)`` (``[]`` float32)."""
    a, b = _pair(labels_true, labels_pred)
    return jnp.mean((a == b).astype(jnp.float32))


def error_rate(labels_true, labels_pred) -> jax.Array:
    """Fraction of differing labels, ``1 - accuracy`` (``[]`` float32)."""
    a, b = _pair(labels_true, labels_pred)
    return jnp.mean((a != b).astype(jnp.float32))


def confusion_matrix(labels_true, labels_pred, n_classes=None) -> jax.Array:
    """``[c, c]`` int32 counts: entry ``(i, j)`` counts points of true class ``i`` predicted
    as ``j`` (scikit-learn's ``confusion_matrix`` with ``labels=range(c)``).

    Args:
        labels_true: ``[n]`` integer labels in ``[0, n_classes)``.
        labels_pred: ``[n]`` integer labels in ``[0, n_classes)``.
        n_classes: number of classes (static); read from concrete labels when omitted.
    """
    a, b = _pair(labels_true, labels_pred)
    if n_classes is None:
        n_classes = max(_n_values(a, None, "n_classes"), _n_values(b, None, "n_classes"))
    else:
        n_classes = _n_values(a, n_classes, "n_classes")
    return contingency_matrix(a, b, n_classes, n_classes).astype(jnp.int32)
