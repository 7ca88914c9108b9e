"""Generative classifier with one Gaussian mixture per class (seed 000, CSC2515 Q4).

For classes ``c = 1..C`` with priors ``p(c)`` (class frequencies in the training set) and
class-conditional mixtures ``p(x | c) = sum_k pi_ck N(x | mu_ck, Sigma_ck)``, Bayes' rule gives

    log p(c | x) = log p(c) + log p(x | c) - logsumexp_c' (log p(c') + log p(x | c')),

and the prediction is ``argmax_c log p(c | x)``.

All class mixtures share the same ``k`` and covariance type, so they are fitted in one
vmapped call: the training rows of each class are gathered into a ``[C, m, d]`` block
(``m`` = size of the largest class), shorter classes padded with copies of one of their own
rows given weight 0, and :func:`mljax.cluster.gmm.fit` runs vmapped over (block, weights, key).
Zero-weight rows contribute nothing to any EM statistic, so each fit equals the fit on that
class alone, at the cost of ``C × m`` rather than ``n`` rows per iteration (equal for balanced
classes such as Fashion-MNIST's).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mljax import validation
from mljax.cluster import gmm

__all__ = [
    "MoGClassifier",
    "class_blocks",
    "error_rate",
    "fit",
    "joint_log_likelihood",
    "predict",
    "predict_log_proba",
    "predict_proba",
    "score",
]


class MoGClassifier(NamedTuple):
    """A fitted mixture-of-Gaussians classifier.

    Attributes:
        log_priors: ``[C]`` log class priors.
        params: :class:`mljax.cluster.gmm.GMMParams` with a leading class axis
            (``weights [C, k]``, ``means [C, k, d]``, covariances ``[C, ...]``).
        log_likelihood: ``[C]`` final mean per-sample log-likelihood of each class mixture on
            its own training rows.
        log_likelihood_trace: ``[C, max_iter]`` per-iteration traces (NaN after the stop).
        n_iter: ``[C]`` EM iterations run.
        converged: ``[C]`` bool.
    """

    log_priors: jax.Array
    params: gmm.GMMParams
    log_likelihood: jax.Array
    log_likelihood_trace: jax.Array
    n_iter: jax.Array
    converged: jax.Array


def _check_labels(y, n, n_classes):
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape (n,) = ({n},); got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels; got dtype {y.dtype}")
    n_classes = validation.check_positive_int(n_classes, "n_classes")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"y must be in [0, n_classes) = [0, {n_classes}); got range [{y.min()}, {y.max()}]"
        )
    return y


def class_blocks(x, y, n_classes: int):
    """Gathers each class's rows into a padded ``[C, m, d]`` block with ``[C, m]`` weights.

    Args:
        x: ``[n, d]`` data (concrete).
        y: ``[n]`` integer labels in ``[0, n_classes)``; every class needs a row.
        n_classes: ``C``.

    Returns:
        ``(blocks [C, m, d], weights [C, m])`` with weight 1 on real rows and 0 on padding
        (padding repeats the class's first row, so it stays inside the class's data range).
    """
    x = np.asarray(x)
    y = _check_labels(y, x.shape[0], n_classes)
    counts = np.bincount(y, minlength=n_classes)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"every class needs training rows; classes {missing} have none")
    m = int(counts.max())
    idx = np.empty((n_classes, m), dtype=np.int64)
    w = np.zeros((n_classes, m), dtype=x.dtype)
    for c in range(n_classes):
        rows = np.flatnonzero(y == c)
        idx[c, : rows.size] = rows
        idx[c, rows.size :] = rows[0]
        w[c, : rows.size] = 1.0
    return x[idx], w


def fit(
    key,
    x,
    y,
    n_classes: int,
    k: int,
    *,
    covariance_type: str = "diag",
    init="kmeans",
    n_init: int = 1,
    max_iter: int = 100,
    tol=1e-3,
    reg_covar=1e-6,
    min_variance=None,
    rand_const=10.0,
) -> MoGClassifier:
    """Fits one ``k``-component mixture per class (vmapped over classes) and the class priors.

    Args:
        key: PRNG key, split over classes.
        x: ``[n, d]`` training data.
        y: ``[n]`` integer labels in ``[0, n_classes)``; every class must occur.
        n_classes: number of classes ``C`` (static).
        k: components per class (static); at most the size of the smallest class.
        covariance_type, init, n_init, max_iter, tol, reg_covar, min_variance, rand_const:
            as in :func:`mljax.cluster.gmm.fit` (``init`` a string here).

    Returns:
        :class:`MoGClassifier`.

    Raises:
        ValueError: bad ``x`` (via :func:`gmm.fit`'s checks), labels of the wrong shape or
            range, a class without rows, ``k`` above the smallest class size, or a non-string
            ``init``.
    """
    x = validation.check_matrix(x, "x")
    n = x.shape[0]
    y = _check_labels(y, n, n_classes)
    counts = np.bincount(y, minlength=n_classes)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"every class needs training rows; classes {missing} have none")
    if not isinstance(init, str):
        raise ValueError(f"init must be one of {gmm.INITS} (a string) for the classifier")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= counts.min():
        raise ValueError(
            f"k must satisfy 1 <= k <= smallest class size = {int(counts.min())}; got {k!r}"
        )
    blocks, weights = class_blocks(np.asarray(x), y, n_classes)
    # gmm.fit validates again, but under vmap; check the static choices here, before tracing.
    gmm.check_covariance_type(covariance_type)
    if init not in gmm.INITS:
        raise ValueError(f"init must be one of {gmm.INITS}; got {init!r}")

    def one(key, xb, wb):
        return gmm.fit(
            key, xb, int(k), covariance_type=covariance_type, init=init, n_init=n_init,
            max_iter=max_iter, tol=tol, reg_covar=reg_covar, min_variance=min_variance,
            rand_const=rand_const, sample_weight=wb,
        )  # fmt: skip

    keys = jax.random.split(key, n_classes)
    res = jax.jit(jax.vmap(one))(keys, jnp.asarray(blocks, x.dtype), jnp.asarray(weights, x.dtype))
    log_priors = jnp.log(jnp.asarray(counts / counts.sum(), x.dtype))
    return MoGClassifier(
        log_priors, res.params, res.log_likelihood, res.log_likelihood_trace, res.n_iter,
        res.converged,
    )  # fmt: skip


def joint_log_likelihood(model: MoGClassifier, x, *, covariance_type=None) -> jax.Array:
    """``log p(c) + log p(x | c)`` for every point and class: ``[n, C]``.

    Args:
        model: a fitted :class:`MoGClassifier`.
        x: ``[n, d]`` points.
        covariance_type: the mixtures' covariance type; inferred from the shapes when ``None``
            (:func:`mljax.cluster.gmm.score_samples` asks for it when ``k == d`` is ambiguous).
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != model.params.means.shape[-1]:
        raise ValueError(
            f"x must have shape (n, {model.params.means.shape[-1]}); got {tuple(x.shape)}"
        )
    ll = jax.vmap(lambda p: gmm.score_samples(x, p, covariance_type=covariance_type))(model.params)
    return ll.T + model.log_priors[None, :]


def predict_log_proba(model: MoGClassifier, x, *, covariance_type=None) -> jax.Array:
    """``log p(c | x)``: ``[n, C]`` (Bayes' rule in log space)."""
    j = joint_log_likelihood(model, x, covariance_type=covariance_type)
    return j - jax.nn.logsumexp(j, axis=1, keepdims=True)


def predict_proba(model: MoGClassifier, x, *, covariance_type=None) -> jax.Array:
    """Posterior class probabilities ``p(c | x)``: ``[n, C]``."""
    return jnp.exp(predict_log_proba(model, x, covariance_type=covariance_type))


def predict(model: MoGClassifier, x, *, covariance_type=None) -> jax.Array:
    """Most probable class of each point: ``[n]`` int32."""
    j = joint_log_likelihood(model, x, covariance_type=covariance_type)
    return jnp.argmax(j, axis=1).astype(jnp.int32)


def score(model: MoGClassifier, x, y, *, covariance_type=None) -> jax.Array:
    """Classification accuracy on ``(x, y)``: ``[]``."""
    return jnp.mean(predict(model, x, covariance_type=covariance_type) == jnp.asarray(y))


def error_rate(model: MoGClassifier, x, y, *, covariance_type=None) -> jax.Array:
    """Fraction misclassified on ``(x, y)``: ``[]``."""
    return 1.0 - score(model, x, y, covariance_type=covariance_type)
