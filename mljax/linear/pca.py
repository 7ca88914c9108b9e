"""Principal component analysis in pure JAX, in scikit-learn's conventions.

With ``x_c = x - mean`` (``[n, d]``) and its thin SVD ``x_c = U S Vᵀ``, the principal axes
are the rows of ``Vᵀ`` (``components``), ``explained_variance = S² / (n - 1)`` (the eigenvalues
of the covariance with ``ddof = 1``), ``explained_variance_ratio = explained_variance /
total variance`` and ``transform(x) = (x - mean) Vᵀᵀ`` (divided by ``√explained_variance`` when
whitening). Signs follow scikit-learn's ``svd_flip(u_based_decision=False)``: in each
component the entry of largest magnitude is positive, so our components compare one to one
with ``sklearn.decomposition.PCA``'s.

Methods:

* ``"covariance_eigh"``: ``eigh`` of the ``d × d`` covariance ``x_cᵀ x_c / (n - 1)``; one pass
  over the data and an ``O(d³)`` eigendecomposition: the fast exact method for ``n ≫ d``.
* ``"svd"``: thin SVD of ``x_c`` (exact; for ``n < d`` or where the covariance's squared
  condition number matters).
* ``"randomized"``: Halko et al.'s randomized range finder (``n_components + n_oversamples``
  Gaussian directions, ``n_iter`` QR-normalised power iterations), then an exact SVD of the
  small projected matrix; approximate, for large ``d`` and few components.
* ``"auto"``: ``covariance_eigh`` when ``n >= d``; otherwise ``randomized`` when
  ``min(n, d) > 500`` and an integer ``n_components < 0.8 · min(n, d)``, else ``svd``.

``fit`` is pure and jit-able for a fixed integer ``n_components`` (and method) and vmaps over
data sets of equal shape; a fractional ``n_components`` needs the spectrum on the host, so it
works on concrete arrays only.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mljax.validation import check_finite, check_int, is_concrete

__all__ = ["METHODS", "PCAModel", "fit", "inverse_transform", "transform"]

METHODS = ("auto", "covariance_eigh", "svd", "randomized")


class PCAModel(NamedTuple):
    """A fitted PCA.

    Attributes:
        mean: ``[d]`` per-feature mean of the training data.
        components: ``[k, d]`` principal axes (orthonormal rows), by decreasing variance.
        explained_variance: ``[k]`` variance along each axis (``ddof = 1``).
        explained_variance_ratio: ``[k]`` its fraction of the total variance.
        singular_values: ``[k]`` singular values of the centred data.
        scale: ``[k]`` what ``transform`` divides by: ``√explained_variance`` when fitted with
            ``whiten=True``, ones otherwise.
    """

    mean: jax.Array
    components: jax.Array
    explained_variance: jax.Array
    explained_variance_ratio: jax.Array
    singular_values: jax.Array
    scale: jax.Array


def _svd_flip_rows(vt: jax.Array) -> jax.Array:
    """scikit-learn's ``svd_flip(u_based_decision=False)``: largest-|.| entry of each row > 0."""
    idx = jnp.argmax(jnp.abs(vt), axis=1)
    signs = jnp.sign(jnp.take_along_axis(vt, idx[:, None], axis=1))
    return vt * jnp.where(signs == 0, 1.0, signs).astype(vt.dtype)


def _spectrum_eigh(xc: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """All ``d`` variances (descending), axes ``[d, d]`` and the total variance."""
    n = xc.shape[0]
    cov = jnp.matmul(xc.T, xc, precision=jax.lax.Precision.HIGHEST) / (n - 1)
    evals, evecs = jnp.linalg.eigh(cov)
    evals = jnp.maximum(evals[::-1], 0.0)  # rounding can make tiny eigenvalues negative
    return evals, evecs[:, ::-1].T, jnp.sum(evals)


def _spectrum_svd(xc: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """All ``min(n, d)`` variances, axes ``[min(n, d), d]`` and the total variance."""
    n = xc.shape[0]
    _, s, vt = jnp.linalg.svd(xc, full_matrices=False)
    ev = s**2 / (n - 1)
    return ev, vt, jnp.sum(ev)


def _randomized(
    key: jax.Array, xc: jax.Array, k: int, n_oversamples: int, n_iter: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-``k`` variances and axes by a randomized range finder (Halko et al. 2011, alg. 4.4)."""
    n, d = xc.shape
    p = min(k + n_oversamples, min(n, d))
    hi = jax.lax.Precision.HIGHEST
    omega = jax.random.normal(key, (d, p), xc.dtype)
    q, _ = jnp.linalg.qr(jnp.matmul(xc, omega, precision=hi))

    def power(_, q):
        z, _ = jnp.linalg.qr(jnp.matmul(xc.T, q, precision=hi))
        q, _ = jnp.linalg.qr(jnp.matmul(xc, z, precision=hi))
        return q

    q = jax.lax.fori_loop(0, n_iter, power, q)
    b = jnp.matmul(q.T, xc, precision=hi)  # [p, d]
    _, s, vt = jnp.linalg.svd(b, full_matrices=False)
    ev = s[:k] ** 2 / (n - 1)
    # Total variance from the data itself (the top-k spectrum does not give it).
    total = jnp.sum(jnp.var(xc, axis=0, ddof=1))
    return ev, vt[:k], total


@functools.partial(jax.jit, static_argnames=("k", "method", "whiten", "n_oversamples", "n_iter"))
def _fit(x, key, *, k, method, whiten, n_oversamples, n_iter):
    n = x.shape[0]
    mean = jnp.mean(x, axis=0)
    xc = x - mean[None]
    if method == "covariance_eigh":
        ev, vt, total = _spectrum_eigh(xc)
    elif method == "svd":
        ev, vt, total = _spectrum_svd(xc)
    else:
        ev, vt, total = _randomized(key, xc, k, n_oversamples, n_iter)
    ev, vt = ev[:k], _svd_flip_rows(vt[:k])
    ratio = ev / total
    sv = jnp.sqrt(ev * (n - 1))
    scale = jnp.sqrt(ev) if whiten else jnp.ones_like(ev)
    return PCAModel(mean, vt, ev, ratio, sv, scale)


@functools.partial(jax.jit, static_argnames=("method",))
def _full_ratio(x, *, method):
    xc = x - jnp.mean(x, axis=0, keepdims=True)
    ev, _, total = _spectrum_eigh(xc) if method == "covariance_eigh" else _spectrum_svd(xc)
    return ev / total


def _resolve_method(method: Any, n: int, d: int, n_components: Any) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if method != "auto":
        return method
    if n >= d:
        return "covariance_eigh"
    if (
        min(n, d) > 500
        and isinstance(n_components, int | np.integer)
        and n_components < 0.8 * min(n, d)
    ):
        return "randomized"
    return "svd"


def _n_components_from_fraction(x, fraction: float, method: str) -> int:
    if not is_concrete(x):
        raise ValueError(
            "n_components as a fraction needs the spectrum on the host: call fit outside "
            "jit/vmap, or pass an int"
        )
    ratio = np.asarray(_full_ratio(x, method=method), dtype=np.float64)
    # scikit-learn's rule: the fewest components whose cumulated ratio exceeds the fraction.
    k = int(np.searchsorted(np.cumsum(ratio), fraction, side="right")) + 1
    return min(k, ratio.shape[0])


def fit(
    x: jax.Array,
    n_components: int | float,
    *,
    whiten: bool = False,
    method: str = "auto",
    key: jax.Array | None = None,
    n_oversamples: int = 10,
    n_iter: int = 4,
) -> PCAModel:
    """Fits PCA to ``x``.

    Args:
        x: ``[n, d]`` data, ``n >= 2``, finite.
        n_components: an int in ``[1, min(n, d)]`` (``min(n - 1, d)`` is the most with
            nonzero variance), or a float in ``(0, 1)``: the fewest components whose
            explained-variance ratios sum to more than it (scikit-learn's rule; host only;
            needs the whole spectrum, so ``"randomized"`` is replaced by the exact ``"svd"``).
        whiten: ``transform`` divides each coordinate by ``√explained_variance``.
        method: ``"auto"``, ``"covariance_eigh"``, ``"svd"`` or ``"randomized"`` (module
            docstring).
        key: PRNG key of the randomized method (default ``jax.random.key(0)``).
        n_oversamples: extra random directions of the randomized method.
        n_iter: power iterations of the randomized method.

    Returns:
        A :class:`PCAModel` with ``k`` components.

    Raises:
        ValueError: ``x`` not 2-D, with fewer than 2 rows or NaN/inf; ``n_components`` out
            of range; unknown ``method``; bad ``n_oversamples`` / ``n_iter``.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if len(x.shape) != 2:
        raise ValueError(f"x must be a 2-D array [n, d]; got shape {tuple(x.shape)}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"x must have at least 2 rows (samples); got {n}")
    check_finite(x, "x")
    x = jnp.asarray(x) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.asarray(x, float)
    check_int(n_oversamples, "n_oversamples", minimum=0)
    check_int(n_iter, "n_iter", minimum=0)
    if not isinstance(whiten, bool | np.bool_):
        raise ValueError(f"whiten must be a bool; got {whiten!r}")
    if isinstance(n_components, float | np.floating) and not isinstance(n_components, bool):
        if not 0.0 < float(n_components) < 1.0:
            raise ValueError(f"n_components as a fraction must lie in (0, 1); got {n_components!r}")
        method = _resolve_method(method, n, d, n_components)
        exact = method if method != "randomized" else "svd"
        k = _n_components_from_fraction(x, float(n_components), exact)
        method = exact
    else:
        try:
            k = check_int(n_components, "n_components", minimum=1, maximum=min(n, d))
        except ValueError as err:
            raise ValueError(
                f"n_components must be an int in [1, min(n, d)] = [1, {min(n, d)}] or a float "
                f"in (0, 1); got {n_components!r}"
            ) from err
        method = _resolve_method(method, n, d, k)
    if key is None:
        key = jax.random.key(0)
    return _fit(
        x, key, k=k, method=method, whiten=bool(whiten), n_oversamples=int(n_oversamples),
        n_iter=int(n_iter),
    )  # fmt: skip


def transform(model: PCAModel, x: jax.Array) -> jax.Array:
    """Coordinates ``[..., k]`` of ``x [..., d]`` on the principal axes (whitened if fitted so)."""
    z = jnp.matmul(
        x - _lead(model.mean, x.ndim), model.components.T, precision=jax.lax.Precision.HIGHEST
    )
    return z / _lead(model.scale, z.ndim)


def inverse_transform(model: PCAModel, z: jax.Array) -> jax.Array:
    """Back to data space: ``[..., k] → [..., d]`` (exact for data in the components' span)."""
    x = jnp.matmul(
        z * _lead(model.scale, z.ndim), model.components, precision=jax.lax.Precision.HIGHEST
    )
    return x + _lead(model.mean, x.ndim)


def _lead(v: jax.Array, ndim: int) -> jax.Array:
    """``v [m]`` with leading unit axes to broadcast against ``[..., m]`` (no rank promotion)."""
    return jnp.reshape(v, (1,) * (ndim - 1) + v.shape)
