"""Stratified k-fold cross-validation as one vmapped program.

Folds are not Python loops and not gathered subsets: every fold fits on the *same* ``x`` with
per-row sample weights, 1 on its training rows and 0 on its held-out rows, and scores on the
held-out rows with the complementary weights. So all folds have one shape, vmap over the
weights, and a vmapped fit whose ``x`` is not batched does one pass over ``x`` per evaluation
for all folds together (the folds' weights stacked, see
:mod:`mljax.linear.logistic_regression`).

A sweep over PCA sizes (:func:`pca_size_sweep`) is one program too: the data are projected
once onto the largest size, and each member masks the trailing components it does not use
(``feature_mask``), which gives exactly the fit on the leading components (the top-``m``
principal axes are the first ``m`` of the top-``M`` ones).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mljax.linear import logistic_regression as lr
from mljax.linear import pca
from mljax.validation import check_finite, check_int, check_scalar, is_concrete

__all__ = [
    "CVResult",
    "SweepResult",
    "check_folds",
    "cross_validate",
    "fold_weights",
    "logreg_cross_validate",
    "pca_size_sweep",
    "stratified_kfold",
]


class CVResult(NamedTuple):
    """Scores and fitted models of a cross-validation.

    Attributes:
        scores: ``[n_folds]`` held-out score of each fold.
        models: the fold models, stacked along a leading ``[n_folds]`` axis.
    """

    scores: jax.Array
    models: Any


class SweepResult(NamedTuple):
    """A PCA-size × fold sweep of logistic regression.

    Attributes:
        sizes: ``[m]`` numbers of leading components.
        scores: ``[m, n_folds]`` held-out accuracies.
        n_iter: ``[m, n_folds]`` L-BFGS iterations.
        converged: ``[m, n_folds]`` gradient tolerance reached.
    """

    sizes: jax.Array
    scores: jax.Array
    n_iter: jax.Array
    converged: jax.Array


def check_folds(y: Any, n_folds: Any) -> int:
    """``n_folds`` as an int in ``[2, smallest class count]`` (``y`` concrete labels)."""
    n_folds = check_int(n_folds, "n_folds", minimum=2)
    if is_concrete(y):
        _, counts = np.unique(np.asarray(y), return_counts=True)
        if n_folds > counts.min():
            raise ValueError(
                f"n_folds must be <= the smallest class count ({int(counts.min())}) so that "
                f"every fold holds every class; got {n_folds}"
            )
    return n_folds


def stratified_kfold(key: jax.Array, y: jax.Array, n_folds: int) -> jax.Array:
    """Stratified fold assignment: the fold ``[n]`` (int32) in which each row is held out.

    Rows are shuffled within each class (by ``key``), sorted by class, and dealt to folds
    round-robin; so every class is spread over the folds as evenly as possible (class counts
    per fold differ by at most one) and fold sizes differ by at most one.

    Raises:
        ValueError: ``n_folds`` < 2 or more than the smallest class count; ``y`` not 1-D ints.
    """
    y = jnp.asarray(y)
    if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be 1-D integer labels; got shape {y.shape}, dtype {y.dtype}")
    n_folds = check_folds(y, n_folds)
    return _stratified_kfold(key, y, n_folds)


@functools.partial(jax.jit, static_argnames="n_folds")
def _stratified_kfold(key, y, n_folds):
    n = y.shape[0]
    u = jax.random.uniform(key, (n,))
    order = jnp.lexsort((u, y))  # by class, random within a class
    fold_of_position = (jnp.arange(n) % n_folds).astype(jnp.int32)
    return jnp.zeros((n,), jnp.int32).at[order].set(fold_of_position)


def fold_weights(
    fold_ids: jax.Array, n_folds: int, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """``(train, test)`` 0/1 weights ``[n_folds, n]`` from fold ids ``[n]``."""
    test = (fold_ids[None, :] == jnp.arange(n_folds)[:, None]).astype(dtype)
    return 1 - test, test


def cross_validate(
    fit_fn: Callable[..., Any],
    score_fn: Callable[..., jax.Array],
    x: jax.Array,
    y: jax.Array,
    folds: jax.Array,
    *,
    n_folds: int | None = None,
) -> CVResult:
    """Fits and scores every fold in one vmapped program.

    Args:
        fit_fn: ``fit_fn(x, y, sample_weight) -> model``; pure, traceable (give it static
            settings such as ``n_classes`` by closure or ``functools.partial``).
        score_fn: ``score_fn(model, x, y, sample_weight) -> scalar``.
        x: ``[n, ...]`` data, shared by every fold (not copied per fold).
        y: ``[n]`` labels.
        folds: ``[n]`` fold ids (from :func:`stratified_kfold`).
        n_folds: number of folds (default ``max(folds) + 1``).

    Returns:
        A :class:`CVResult`.
    """
    if n_folds is None:
        if not is_concrete(folds):
            raise ValueError("n_folds must be given when folds is traced")
        n_folds = int(np.asarray(folds).max()) + 1
    n_folds = check_int(n_folds, "n_folds", minimum=2)
    check_finite(x, "x")
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    train_w, test_w = fold_weights(jnp.asarray(folds), n_folds, dtype)
    return _cv_jit(fit_fn, score_fn, x, y, train_w, test_w)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _cv_jit(fit_fn, score_fn, x, y, train_w, test_w):
    def one(wtr, wte):
        model = fit_fn(x, y, wtr)
        return score_fn(model, x, y, wte), model

    scores, models = jax.vmap(one)(train_w, test_w)
    return CVResult(scores, models)


def logreg_cross_validate(
    x: jax.Array,
    y: jax.Array,
    folds: jax.Array,
    *,
    n_folds: int,
    C: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-4,
    n_classes: int | None = None,
) -> CVResult:
    """k-fold cross-validated accuracy of :func:`logistic_regression.fit`, folds vmapped."""
    _check_lr_args(x, y, C, n_folds)
    n_classes = lr.check_labels(y, n_classes)
    fit_fn = functools.partial(_lr_fit, n_classes=n_classes, C=float(C), max_iter=max_iter, tol=tol)
    return cross_validate(fit_fn, lr.score, x, y, folds, n_folds=n_folds)


def _lr_fit(x, y, sw, *, n_classes, C, max_iter, tol, mask=None):
    return lr.fit(
        x, y, C=C, sample_weight=sw, n_classes=n_classes, max_iter=max_iter, tol=tol,
        feature_mask=mask,
    )  # fmt: skip


def _check_lr_args(x, y, C, n_folds):
    if len(x.shape) != 2:
        raise ValueError(f"x must be a 2-D array [n, d]; got shape {tuple(x.shape)}")
    check_finite(x, "x")
    check_scalar(C, "C", minimum=0.0, strict_minimum=True)
    check_folds(y, n_folds)


def pca_size_sweep(
    x: jax.Array,
    y: jax.Array,
    sizes: tuple[int, ...],
    folds: jax.Array,
    *,
    n_folds: int,
    C: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-4,
    n_classes: int | None = None,
    pca_model: pca.PCAModel | None = None,
) -> SweepResult:
    """Cross-validated logistic regression on the leading ``m`` PCA components, every ``m``
    in ``sizes`` and every fold in one program.

    Args:
        x: ``[n, d]`` data; y: ``[n]`` labels; folds: ``[n]`` fold ids.
        sizes: numbers of components, each in ``[1, min(n, d)]``.
        n_folds: number of folds.
        C, max_iter, tol: as :func:`logistic_regression.fit`.
        n_classes: default ``max(y) + 1``.
        pca_model: a PCA with at least ``max(sizes)`` components (default: fitted on ``x``).

    Returns:
        A :class:`SweepResult` (``scores [len(sizes), n_folds]``).
    """
    _check_lr_args(x, y, C, n_folds)
    n_classes = lr.check_labels(y, n_classes)
    sizes = tuple(check_int(s, "sizes", minimum=1, maximum=min(x.shape)) for s in sizes)
    if not sizes:
        raise ValueError("sizes must hold at least one number of components")
    m = max(sizes)
    if pca_model is None:
        pca_model = pca.fit(x, m)
    elif pca_model.components.shape[0] < m:
        raise ValueError(
            f"pca_model has {pca_model.components.shape[0]} components; sizes need {m}"
        )
    z = pca.transform(pca_model, x)[:, :m]
    masks = (jnp.arange(m)[None, :] < jnp.asarray(sizes)[:, None]).astype(z.dtype)
    train_w, test_w = fold_weights(jnp.asarray(folds), n_folds, z.dtype)
    scores, n_iter, conv = _sweep_jit(
        z, jnp.asarray(y), masks, train_w, test_w, jnp.asarray(C, z.dtype),
        n_classes=n_classes, max_iter=max_iter, tol=float(tol),
    )  # fmt: skip
    return SweepResult(jnp.asarray(sizes), scores, n_iter, conv)


@functools.partial(jax.jit, static_argnames=("n_classes", "max_iter", "tol"))
def _sweep_jit(z, y, masks, train_w, test_w, c, *, n_classes, max_iter, tol):
    def one(mask, wtr, wte):
        model = _lr_fit(z, y, wtr, n_classes=n_classes, C=c, max_iter=max_iter, tol=tol, mask=mask)
        return lr.score(model, z, y, wte), model.n_iter, model.converged

    over_folds = jax.vmap(one, in_axes=(None, 0, 0))
    return jax.vmap(over_folds, in_axes=(0, None, None))(masks, train_w, test_w)
