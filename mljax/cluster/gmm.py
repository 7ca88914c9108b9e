"""Gaussian mixture models fitted by expectation-maximisation, in pure JAX.

Model: ``p(x) = sum_k pi_k N(x | mu_k, Sigma_k)`` with weights ``pi`` on the simplex.

E-step (in log space). With ``P_k`` a Cholesky factor of the precision, ``P_k P_kᵀ =
Sigma_k⁻¹`` (scikit-learn's ``precisions_cholesky_``: ``P_k = L_k⁻ᵀ`` for ``Sigma_k = L_k
L_kᵀ``),

    log N(x | mu_k, Sigma_k) = -d/2 log 2π + sum_i log (P_k)_ii - ½ ||(x - mu_k)ᵀ P_k||²,

so neither an inverse nor the determinant of a raw matrix is formed. The responsibilities are
``r_nk = exp(log pi_k + log N_nk - logsumexp_j(log pi_j + log N_nj))`` and the per-sample
log-likelihood is the logsumexp itself.

M-step (stationary point of the expected complete-data log-likelihood ``Q``; the weights by a
Lagrange multiplier on ``sum_k pi_k = 1``), with sample weights ``w_n``:

    N_k = sum_n w_n r_nk,   pi_k = N_k / sum_j N_j,   mu_k = sum_n w_n r_nk x_n / N_k,
    Sigma_k = sum_n w_n r_nk (x_n - mu_k)(x_n - mu_k)ᵀ / N_k + reg_covar · I,

accumulated around the *new* means (never as E[xxᵀ] - mu muᵀ, which cancels catastrophically in
float32). ``diag`` keeps the diagonal of ``Sigma_k``, ``spherical`` its mean, ``tied`` pools
``sum_k N_k Sigma_k / sum_k N_k``. ``N_k`` carries scikit-learn's ``+ 10 eps`` so an empty
component cannot divide by zero. ``min_variance`` (the seed's ``minVary``) then floors every
diagonal variance.

In :func:`fit` both steps run over fixed-size chunks of the data read in place
(``lax.dynamic_slice``; the last chunk is shifted back to end at row ``n`` and its rows already
seen are masked by a zero weight), so neither a padded nor a centred copy of ``x`` is made and
the working memory is ``O(chunk × k × d)`` plus the E-step's ``n × k`` responsibilities,
which are kept for the covariance pass while ``n × k × n_init <= KEEP_RESP_ELEMENTS`` and above
that recomputed chunk by chunk from the E-step parameters (memory then independent of ``n``);
the worst-explained points are a running top-k. Each chunk is centred on
the data mean as it is read, which keeps the matmul form of the E-step accurate in float32.

Degeneracy: a component whose weight falls below machine epsilon, or whose covariance is not
numerically positive definite (non-finite Cholesky factor), is re-seeded at the worst-explained
point of the current E-step with the data's diagonal covariance and weight ``1/k``; the result
counts the re-seeds, and nothing inside the jitted loop raises or returns NaN.

Initialisations (as scikit-learn's, from responsibilities followed by one M-step):
``"kmeans"`` (hard responsibilities from :func:`mljax.cluster.kmeans.fit`, seeded from the
key), ``"k-means++"`` (means at k-means++ seeds, covariance ``reg_covar · I``),
``"random"`` (uniform random responsibilities), ``"random_from_data"`` (means at ``k``
random points, covariance ``reg_covar · I``), ``"rand_const"`` (the seed's ``mogEM.py``:
``pi ∝ rand_const + U(0, 1)``, ``mu = mean + N(0, 1) · std / rand_const``, variances
``2 · var``), or a :class:`GMMParams` of starting parameters.

Code layout: every operation that depends on the covariance type (shapes, precision Cholesky
factors, the Mahalanobis term, second-order statistics, covariance estimate, variance floor,
re-seed covariance, sampling) is one entry of a single table, ``_COVARIANCES``; the E- and
M-step passes and the EM loop are written once against it. The loop-invariant inputs of a fit
(data, weights, centre, traced hyperparameters) travel as one ``_EMConst``.

Choosing ``k`` by BIC (:func:`select_k_by_bic`) loops over the candidate ``k`` and fits each with
vmapped restarts: every ``k`` changes array shapes, and padding all fits to the largest ``k``
would make every fit pay for the largest one and would need masked variants of every
initialisation (k-means included), so one compiled fit per ``k`` is the cheaper honest choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mljax import validation
from mljax.cluster import kmeans
from mljax.cluster._checks import check_data, check_no_overflow, check_real
from mljax.cluster._chunks import fold_chunks

__all__ = [
    "CHUNK_ELEMENTS",
    "COVARIANCE_TYPES",
    "DIAG_SUM_MIN_KD",
    "FULL_ROWS_MINOR_MAX_CHUNK",
    "INITS",
    "KEEP_RESP_ELEMENTS",
    "MOMENTS_ROWS_MINOR_MIN_D",
    "RESTART_CHUNK_ELEMENTS",
    "ROWS_MINOR_MAX_CHUNK",
    "SMALL_FULL_MAX_KD",
    "BICSelection",
    "GMMParams",
    "GMMResult",
    "aic",
    "auto_chunk_size",
    "bic",
    "check_covariance_type",
    "compute_precision_cholesky",
    "e_step",
    "fit",
    "m_step",
    "n_parameters",
    "predict",
    "predict_proba",
    "sample",
    "score",
    "score_samples",
    "select_k_by_bic",
]

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
INITS = ("kmeans", "k-means++", "random", "random_from_data", "rand_const")

CHUNK_ELEMENTS = 1 << 19
"""Budget of one run's per-chunk ``[chunk, k, d]`` intermediates (2 MiB in float32, so they stay
in cache). Measured ms per EM iteration (loaded machine), 2^21 -> 2^19 elements: full
100k×16 K=8 130 -> 90; full 200k×32 K=16 1099 -> 944; diag 200k×32 K=16 257 -> 233."""

RESTART_CHUNK_ELEMENTS = 1 << 20
"""Measured, ms per EM iteration of vmapped restarts on 2 cores (chunk rows: time):
100k×16, K=8, 8 restarts: 4,096 (the single-run chunk): 246, 2,048: 199, 1,024 (this budget):
200, 512: 227; 100k×2, K=4, 8 restarts: 65,536: 53, 16,384 (this budget): 39, 8,192: 36,
4,096: 38; 200k×32, K=16, 4 restarts: 1,024: 981, 512 (this budget): 972, 256: 984."""

SMALL_FULL_MAX_KD = 32
"""Full-covariance fits of at most this many component-features ``k·d`` take chunks of
:data:`ROWS_MINOR_MAX_CHUNK` rows (both passes then run rows minor) instead of the element
budget's tens of thousands. Ms per EM iteration, 1,024 rows / the budget's chunk (2026-12-06,
quiet): 100k×2, K=4: 2.8 / 5.3 (65,536 rows); 200k×2, K=4: 5.9 / 11.5; 100k×2, K=8: 5.2 / 8.1;
100k×4, K=4: 4.1 / 9.1; 100k×4, K=8: 8.7 / 8.8; 100k×8, K=4: 8.3 / 18.2. From k·d = 64 the
budget's chunk is faster (100k×8, K=8: 18.8 / 13.3; 100k×16, K=4: 24.5 / 17.0), and tied,
diagonal and spherical fits of 100k×2, K=4 were not faster with small chunks."""


ROWS_MINOR_MAX_CHUNK = 1024
"""Chunks of at most this many rows form the second moments of :func:`_moments_matrix` rows
minor whatever ``d`` (tied fits, and full-covariance passes outside EM's components-major
layout; see ``MOMENTS_ROWS_MINOR_MIN_D`` below), and small full-covariance fits take chunks of
this size (``SMALL_FULL_MAX_KD``)."""

FULL_ROWS_MINOR_MAX_CHUNK = 16384
"""Full-covariance EM passes over chunks of at most this many rows run rows minor throughout:
the E-step whitens ``[k·d, d] x [d, c]``, keeps the responsibilities as ``[k, c]``
(:func:`_components_major`) and the covariance pass multiplies ``[k·d, c] x [c, d]``. Ms per EM
iteration at the default chunk, a limit of 1,024 rows (until 2026-12-06) / this one (two runs
each, random_from_data init included; 2026-12-06, quiet): 100k×8, K=8, c=8,192: 13.8-13.9 /
9.9; 100k×4, K=12, c=10,922: 14.0-14.8 / 11.1-11.4 (once 28.3); 200k×8, K=16, c=4,096:
49.5-51.1 / 35.5-37.2; 100k×16, K=4, c=8,192: 15.7-16.1 / 15.0-15.1; 100k×16, K=8, c=4,096:
26.4-26.7 / 24.5-26.9; 8 restarts of 100k×2, K=4, c=16,384: 36.4 / 12.7-13.1; 200k×2, K=4:
72.3-76.1 / 24.4-26.0. Above it the old layouts win: 100k×2, K=4 at c=65,536: 5.9 / 8.1-9.3."""

MOMENTS_ROWS_MINOR_MIN_D = 32
"""Layouts of the full-covariance passes (chosen from the chunk and the data's shape only, so
vmapped restarts stay identical to single runs with the same chunk):

- E-step: chunks of at most ``FULL_ROWS_MINOR_MAX_CHUNK`` rows (1,024 until 2026-12-06) are
  whitened rows minor,
  ``[k·d, d] x [d, c]``, larger ones as ``[c, d] x [d, k·d]``. Ms per E-pass (old / rows
  minor; 2026-12-05, quiet; R vmapped restarts, whose chunks are small): 100k×16, K=8, R=8,
  c=1,024: 78.9 / 48.2; 200k×32, K=16, R=4, c=512: 333 / 206; 100k×2, K=4, R=8, c=16,384:
  16.5 / 8.9 (large chunk: kept old); one run 100k×16, K=8, c=4,096: 8.5 / 9.6; 200k×32,
  K=16, c=1,024: 64.7 / 70.3.
- Covariance pass (full and tied): with at least ``MOMENTS_ROWS_MINOR_MIN_D`` features or chunks
  of at most ``ROWS_MINOR_MAX_CHUNK`` rows, the weighted differences are formed as ``[k, d,
  c]`` and multiplied ``[k·d, c] x [c, d]``; otherwise as ``[c, k, d]``, the product
  contracting their leading axis (the only form until 2026-12-05, which XLA:CPU ran up to 3x
  slower). EM's full-covariance passes over chunks of at most ``FULL_ROWS_MINOR_MAX_CHUNK``
  rows always take the ``[k, d, c]`` form (their responsibilities are ``[k, c]`` already). Ms per pass, ``[c, k, d]`` / ``[k, d, c]``: 100k×2, K=4, c=65,536: 1.1 / 1.1;
  100k×16, K=8, c=4,096: 12.7 / 17.3; c=1,024: 19.3 / 18.5; 200k×8, K=16, c=4,096: 21.2 /
  31.4; 100k×32, K=4, c=4,096: 15.9 / 11.2; 200k×32, K=16, c=1,024: 125.8 / 63.6; 100k×64,
  K=8, c=1,024: 68.2 / 45.8; 100k×16, K=8, R=8, c=1,024: 91.9 / 38.6; 200k×32, K=16, R=4,
  c=512: 455 / 217. (``[d, c] x [c, k·d]``, the chunk transposed, was fastest at d <= 16 for
  one run but breaks the restarts' identity: its product widens with R.)
"""


DIAG_SUM_MIN_KD = 128
"""From this many component-features ``k·d`` on, the diagonal second moments are one fused
multiply-and-sum over the chunk's rows; below, a matmul (k <= 32) or a batched einsum.
Measured per covariance pass over 200k rows (chunk rows: fused sum / matmul / einsum ms):
d=32, K=16: 1,024: 24.7 / 46.9 / 29.2, 4,096: 19.0 / 40.2 / 19.3; d=32, K=64: 256: 96.9 /
118.4 / 118.2; d=16, K=8: 4,096: 7.4 / 7.7 / 12.1; d=8, K=8: 8,192: 5.5 / 4.1 / 3.2; d=2,
K=4: 65,536: 3.3 / 0.8 / 1.3. Such diagonal fits also take twice the chunk (no [c, k, d] array
is formed); ms per EM iteration at 2**19 / 2**20 / 2**21 elements of [chunk, k·d]: d=32, K=16:
67-68 / 61 / 55-57; d=16, K=8: 16.0 / 14.0 / 17.5; d=64, K=16: 98.3 / 95.7 / 99.0."""
KEEP_RESP_ELEMENTS = 1 << 26
"""Largest ``n × k × n_init`` for which :func:`fit` keeps the E-step's responsibilities (256 MiB in
float32) for the covariance pass instead of recomputing them chunk by chunk."""


class GMMParams(NamedTuple):
    """Parameters of a Gaussian mixture.

    Attributes:
        weights: ``[k]`` mixing weights (sum to 1).
        means: ``[k, d]`` component means.
        covariances: full ``[k, d, d]``, diag ``[k, d]``, spherical ``[k]``, tied ``[d, d]``.
        precisions_cholesky: same shape as ``covariances``; ``P`` with ``P Pᵀ = Sigma⁻¹``
            (upper triangular for full / tied; ``1/sqrt(var)`` for diag / spherical).
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array
    precisions_cholesky: jax.Array | None = None


class GMMResult(NamedTuple):
    """Result of :func:`fit`.

    Attributes:
        params: the fitted :class:`GMMParams`.
        log_likelihood: scalar, (weighted) mean per-sample log-likelihood of ``params``.
        log_likelihood_trace: ``[max_iter]``, the mean log-likelihood at the E-step of each
            iteration (scikit-learn's ``lower_bound_`` sequence), NaN after the stop.
        n_iter: number of EM iterations run.
        converged: whether the change in mean log-likelihood fell below ``tol``.
        n_reseeded: how many times a collapsed component was re-seeded.
        restart_log_likelihood: ``[n_init]`` final mean log-likelihood of every restart, in
            the order of the split keys (NaN for a restart that failed; the kept run is the
            highest finite one, and its entry equals ``log_likelihood``).
        restart_n_iter: ``[n_init]`` EM iterations of every restart.
    """

    params: GMMParams
    log_likelihood: jax.Array
    log_likelihood_trace: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    n_reseeded: jax.Array
    restart_log_likelihood: jax.Array | None = None
    restart_n_iter: jax.Array | None = None


class BICSelection(NamedTuple):
    """Result of :func:`select_k_by_bic`.

    Attributes:
        ks: ``[m]`` candidate numbers of components.
        bic: ``[m]`` BIC of the best fit for each ``k``.
        best_k: the ``k`` with the smallest BIC (Python int).
        best: the :class:`GMMResult` for ``best_k``.
    """

    ks: np.ndarray
    bic: jax.Array
    best_k: int
    best: GMMResult


# ----------------------------------------------------------------------------- covariance types
#
# Everything that depends on the covariance type is one entry of _COVARIANCES (the model is
# scikit-learn's _estimate_gaussian_covariances_{full,tied,diag,spherical} and
# _compute_precision_cholesky); the E- and M-step passes and the EM loop below are written once
# against this table. Full and tied share the Cholesky algebra, diag and spherical the
# elementwise one.


class _CovOps(NamedTuple):
    """The per-covariance-type operations (one entry of :data:`_COVARIANCES`).

    ``k`` components, ``d`` features, ``c`` rows in a chunk; ``cov`` and ``P`` have the type's
    covariance shape (``shape(k, d)``).
    """

    name: str
    shape: Callable  # (k, d) -> shape of the covariances
    n_parameters: Callable  # (k, d) -> free covariance parameters (int)
    precision_cholesky: Callable  # cov -> P with P Pᵀ = cov⁻¹ (NaN where not PD)
    log_det: Callable  # (P, d) -> log det P_k, [k] ([] for tied)
    prepare: Callable  # (means [k, d], P) -> (a, b) for sq_mahalanobis
    sq_mahalanobis: Callable  # (x [c, d], a, b, k) -> ||(x_n - mu_k)ᵀ P_k||² [c, k]
    # The same as [k, c], for the components-major passes (None: the type has none).
    sq_mahalanobis_t: Callable | None
    moments_shape: Callable  # (k, d) -> shape of the second-order statistics
    moments: Callable  # (rw [c, k], x [c, d], means [k, d]) -> this chunk's statistics
    moments_t: Callable | None  # the same from rw as [k, c] (None: the type has none)
    components_major: Callable  # (c) -> whether EM's passes over c-row chunks use the _t forms
    covariances: Callable  # (moments, nk [k], reg_covar) -> cov
    floor: Callable  # (cov, min_variance) -> cov with diagonal variances >= min_variance
    diagonal: Callable  # (v [] or [d], k, d) -> cov with variances v for every component
    component_ok: Callable  # (ok elementwise on P, k) -> [k] every entry of component k ok
    component_mask: Callable  # (bad [k]) -> mask broadcasting against cov
    sample_noise: Callable  # (cov, z [n], eps [n, d]) -> [n, d] noise L_z eps


def _cholesky_precision(cov):
    d = cov.shape[-1]
    chol = jnp.linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(d, dtype=cov.dtype), cov.shape)
    inv_chol = lax.linalg.triangular_solve(chol, eye, left_side=True, lower=True)
    return jnp.swapaxes(inv_chol, -1, -2)


def _rsqrt_precision(var):
    # A non-positive variance gives NaN (not inf), like a failed Cholesky factor.
    return jnp.where(var > 0, lax.rsqrt(jnp.abs(var)), jnp.nan)


def _log_det_triangular(p, d):
    return jnp.sum(jnp.log(jnp.diagonal(p, axis1=-2, axis2=-1)), axis=-1)


def _prepare_full(means, p):
    k, d = means.shape
    return jnp.transpose(p, (1, 0, 2)).reshape(d, k * d), jnp.einsum("kd,kde->ke", means, p)


def _sq_full(x, a, b, k):
    # One matmul carries all the work: y_nk = x_n P_k - mu_k P_k.
    c, d = x.shape
    if c <= FULL_ROWS_MINOR_MAX_CHUNK:
        return _sq_full_t(x, a, b, k).T
    y = (x @ a).reshape(c, k, d) - b[None]
    return jnp.sum(y * y, axis=-1)


def _sq_full_t(x, a, b, k):
    # Rows minor, [k*d, d] x [d, c] (see FULL_ROWS_MINOR_MAX_CHUNK); the result is [k, c].
    c, d = x.shape
    y = (a.T @ x.T).reshape(k, d, c) - b[:, :, None]
    return jnp.sum(y * y, axis=1)


def _sq_tied(x, a, b, k):
    y = (x @ a)[:, None, :] - b[None]
    return jnp.sum(y * y, axis=-1)


def _sq_diag(x, a, b, k):
    # sum_d prec_kd (x_d - mu_kd)² expanded into two matmuls (data and means are centred, which
    # keeps the cancellation small); clamped at 0 against rounding. a = P², b = means.
    # Rows minor ([k, d] x [d, c], then transposed): E-pass at 200k×32, K=16, chunk 2,048
    # 34.7 -> 22.2 ms against [c, d] x [d, k] (2026-12-05; EM iteration 66 -> 48 ms).
    return _sq_diag_t(x, a, b, k).T


def _sq_diag_t(x, a, b, k):
    # _sq_diag as [k, c].
    sq = a @ (x * x).T - 2.0 * (b * a) @ x.T
    return jnp.maximum(sq + jnp.sum(b * b * a, axis=1)[:, None], 0.0)


def _sq_spherical(x, a, b, k):
    sq = jnp.sum(x * x, axis=1)[:, None] - 2.0 * x @ b.T
    return jnp.maximum(sq + jnp.sum(b * b, axis=1)[None], 0.0) * a[None]


def _moments_matrix(rw, xc, means):
    # sum_n r_nk (x_n - mu_k)(x_n - mu_k)ᵀ = sum_n r_nk (x_n - mu_k) x_nᵀ - e_k mu_kᵀ with
    # e_k = sum_n r_nk (x_n - mu_k) (zero in exact arithmetic; subtracting the computed one
    # compensates its rounding). One matmul of the weighted differences with the chunk
    # instead of k batched [d, c] x [c, d] ones; every difference is still taken from mu_k.
    k, d = means.shape
    if d >= MOMENTS_ROWS_MINOR_MIN_D or xc.shape[0] <= ROWS_MINOR_MAX_CHUNK:
        return _moments_matrix_t(rw.T, xc, means)
    # Differences as [c, k, d]; the product contracts their leading axis.
    u = rw[:, :, None] * (xc[:, None, :] - means[None])
    e = jnp.sum(u, axis=0)  # [k, d]
    s = (u.reshape(-1, k * d).T @ xc).reshape(k, d, d)
    return s - e[:, :, None] * means[:, None, :]


def _moments_matrix_t(rw_t, xc, means):
    # _moments_matrix from rw_t = rwᵀ [k, c], with the differences as [k, d, c] (rows minor): a
    # plain [k*d, c] x [c, d] product (see MOMENTS_ROWS_MINOR_MIN_D).
    k, d = means.shape
    u = rw_t[:, None, :] * (xc.T[None] - means[:, :, None])
    e = jnp.sum(u, axis=2)  # [k, d]
    s = (u.reshape(k * d, -1) @ xc).reshape(k, d, d)
    return s - e[:, :, None] * means[:, None, :]


def _moments_diagonal(rw, xc, means):
    k, d = means.shape
    diff = xc[:, None, :] - means[None]  # [c, k, d]
    if k * d >= DIAG_SUM_MIN_KD:
        # Fused by XLA into one loop over the rows: [c, k, d] is never materialised.
        return jnp.sum(rw[:, :, None] * (diff * diff), axis=0)
    if k <= 32:
        # [k, c] x [c, k*d] matmul, keeping the diagonal blocks: k times the flops of the
        # batched reduction but ran ~1.7x faster on XLA:CPU for k = 16.
        blocks = (rw.T @ (diff * diff).reshape(-1, k * d)).reshape(k, k, d)
        return jnp.diagonal(blocks, axis1=0, axis2=1).T
    return jnp.einsum("ck,ckd->kd", rw, diff * diff)


def _symmetrise(acc):
    return 0.5 * (acc + jnp.swapaxes(acc, -1, -2))  # the one-sided sum is not symmetric


def _floor_matrix(cov, min_variance):
    diag = jnp.diagonal(cov, axis1=-2, axis2=-1)
    # Raising diagonal entries adds a PSD diagonal matrix: stays positive definite.
    return cov + jnp.vectorize(jnp.diag, signature="(d)->(d,d)")(
        jnp.maximum(diag, min_variance) - diag
    )


def _floor_vector(cov, min_variance):
    return jnp.maximum(cov, min_variance)


def _diag_matrix(v, d):
    return jnp.diag(jnp.broadcast_to(v, (d,)))


def _tied_noise(cov, z, eps):
    return eps @ jnp.linalg.cholesky(cov).T


_COVARIANCES: dict[str, _CovOps] = {
    "full": _CovOps(
        name="full",
        shape=lambda k, d: (k, d, d),
        n_parameters=lambda k, d: k * d * (d + 1) // 2,
        precision_cholesky=_cholesky_precision,
        log_det=_log_det_triangular,
        prepare=_prepare_full,
        sq_mahalanobis=_sq_full,
        sq_mahalanobis_t=_sq_full_t,
        moments_shape=lambda k, d: (k, d, d),
        moments=_moments_matrix,
        moments_t=_moments_matrix_t,
        components_major=lambda c: c <= FULL_ROWS_MINOR_MAX_CHUNK,
        covariances=lambda acc, nk, reg: (
            _symmetrise(acc) / nk[:, None, None]
            + reg * jnp.eye(acc.shape[-1], dtype=acc.dtype)[None]
        ),
        floor=_floor_matrix,
        diagonal=lambda v, k, d: jnp.broadcast_to(_diag_matrix(v, d), (k, d, d)),
        component_ok=lambda ok, k: jnp.all(ok, axis=(1, 2)),
        component_mask=lambda bad: bad[:, None, None],
        sample_noise=lambda cov, z, eps: jnp.einsum("nde,ne->nd", jnp.linalg.cholesky(cov)[z], eps),
    ),
    "tied": _CovOps(
        name="tied",
        shape=lambda k, d: (d, d),
        n_parameters=lambda k, d: d * (d + 1) // 2,
        precision_cholesky=_cholesky_precision,
        log_det=_log_det_triangular,
        prepare=lambda means, p: (p, means @ p),
        sq_mahalanobis=_sq_tied,
        sq_mahalanobis_t=None,
        moments_shape=lambda k, d: (k, d, d),
        moments=_moments_matrix,
        moments_t=None,
        components_major=lambda c: False,
        # Pooled: sum_k N_k Sigma_k / sum_k N_k.
        covariances=lambda acc, nk, reg: (
            jnp.sum(_symmetrise(acc), axis=0) / jnp.sum(nk)
            + reg * jnp.eye(acc.shape[-1], dtype=acc.dtype)
        ),
        floor=_floor_matrix,
        diagonal=lambda v, k, d: _diag_matrix(v, d),
        # One shared matrix: every component fails with it, and a re-seed replaces it.
        component_ok=lambda ok, k: jnp.broadcast_to(jnp.all(ok), (k,)),
        component_mask=lambda bad: jnp.any(bad),
        sample_noise=_tied_noise,
    ),
    "diag": _CovOps(
        name="diag",
        shape=lambda k, d: (k, d),
        n_parameters=lambda k, d: k * d,
        precision_cholesky=_rsqrt_precision,
        log_det=lambda p, d: jnp.sum(jnp.log(p), axis=-1),
        prepare=lambda means, p: (p * p, means),
        sq_mahalanobis=_sq_diag,
        sq_mahalanobis_t=_sq_diag_t,
        moments_shape=lambda k, d: (k, d),
        moments=_moments_diagonal,
        # The responsibilities turned back to [c, k]: the fused sum over [k, d, c] instead
        # measured slower (diag 200k×32, K=16: 80-86 against 45-47 ms per EM iteration).
        moments_t=lambda rw_t, xc, means: _moments_diagonal(rw_t.T, xc, means),
        components_major=lambda c: True,
        covariances=lambda acc, nk, reg: acc / nk[:, None] + reg,
        floor=_floor_vector,
        diagonal=lambda v, k, d: jnp.broadcast_to(v, (k, d)),
        component_ok=lambda ok, k: jnp.all(ok, axis=1),
        component_mask=lambda bad: bad[:, None],
        sample_noise=lambda cov, z, eps: eps * jnp.sqrt(cov)[z],
    ),
    "spherical": _CovOps(
        name="spherical",
        shape=lambda k, d: (k,),
        n_parameters=lambda k, d: k,
        precision_cholesky=_rsqrt_precision,
        log_det=lambda p, d: d * jnp.log(p),
        prepare=lambda means, p: (p * p, means),
        sq_mahalanobis=_sq_spherical,
        sq_mahalanobis_t=None,
        moments_shape=lambda k, d: (k, d),
        moments=_moments_diagonal,
        moments_t=None,
        components_major=lambda c: False,
        covariances=lambda acc, nk, reg: jnp.mean(acc / nk[:, None], axis=1) + reg,
        floor=_floor_vector,
        diagonal=lambda v, k, d: jnp.full((k,), jnp.mean(v), jnp.result_type(v)),
        component_ok=lambda ok, k: ok,
        component_mask=lambda bad: bad,
        sample_noise=lambda cov, z, eps: eps * jnp.sqrt(cov)[z][:, None],
    ),
}


def check_covariance_type(covariance_type) -> str:
    """``covariance_type`` if it is one of :data:`COVARIANCE_TYPES`, else ``ValueError``."""
    if not isinstance(covariance_type, str) or covariance_type not in _COVARIANCES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}; got {covariance_type!r}"
        )
    return covariance_type


def _ops_of(params: GMMParams, covariance_type) -> _CovOps:
    """The table entry for ``params`` (static): checks a given type against the shapes, or
    infers it from them."""
    k, d = params.means.shape
    cov_shape = tuple(params.covariances.shape)
    if covariance_type is not None:
        ops = _COVARIANCES[check_covariance_type(covariance_type)]
        if cov_shape != ops.shape(k, d):
            raise ValueError(
                f"params.covariances has shape {cov_shape}, which does not match "
                f"covariance_type={covariance_type!r} (expected {ops.shape(k, d)} for "
                f"k={k}, d={d})"
            )
        return ops
    matches = [ops for ops in _COVARIANCES.values() if ops.shape(k, d) == cov_shape]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(
            f"params.covariances has shape {cov_shape}; allowed for k={k}, d={d}: "
            + ", ".join(f"{ops.name} {ops.shape(k, d)}" for ops in _COVARIANCES.values())
        )
    raise ValueError(
        f"params.covariances shape {cov_shape} is ambiguous between "
        f"{[ops.name for ops in matches]} (k == d); pass covariance_type explicitly"
    )


def compute_precision_cholesky(covariances, covariance_type: str):
    """Cholesky factor ``P`` of the precision (scikit-learn's ``_compute_precision_cholesky``).

    Args:
        covariances: shaped by ``covariance_type`` (see :class:`GMMParams`).
        covariance_type: one of :data:`COVARIANCE_TYPES`.

    Returns:
        ``P`` of the same shape: ``L⁻ᵀ`` for ``Sigma = L Lᵀ`` (full / tied), ``1/sqrt(var)``
        (diag / spherical). Non-finite where ``Sigma`` is not numerically positive definite.
    """
    return _COVARIANCES[check_covariance_type(covariance_type)].precision_cholesky(covariances)


def _floor_variance(cov, ops: _CovOps, min_variance):
    return cov if min_variance is None else ops.floor(cov, min_variance)


def _params_from_cov(weights, means, cov, ops: _CovOps) -> GMMParams:
    return GMMParams(weights, means, cov, ops.precision_cholesky(cov))


def auto_chunk_size(
    n: int, k: int, d: int, restarts: int = 1, covariance_type: str = "full"
) -> int:
    """Default rows per chunk of :func:`fit` and the chunked kernels (``chunk_size=None``), for
    ``n`` points of ``d`` features, ``k`` components and ``restarts`` vmapped restarts:
    ``[chunk, k·d]`` within :data:`CHUNK_ELEMENTS` for one run (twice that
    for diagonal covariances from :data:`DIAG_SUM_MIN_KD` on, whose passes form no
    ``[chunk, k, d]`` array; :data:`ROWS_MINOR_MAX_CHUNK` rows for full covariances of at most
    :data:`SMALL_FULL_MAX_KD` component-features); vmapped restarts share each chunk and their
    ``[chunk, restarts·k·d]`` block is held to :data:`RESTART_CHUNK_ELEMENTS`."""
    if restarts > 1:
        budget = RESTART_CHUNK_ELEMENTS // max(restarts * k * d, 1)
    elif covariance_type == "diag" and k * d >= DIAG_SUM_MIN_KD:
        budget = 2 * CHUNK_ELEMENTS // max(k * d, 1)
    elif covariance_type == "full" and k * d <= SMALL_FULL_MAX_KD:
        budget = ROWS_MINOR_MAX_CHUNK
    else:
        budget = CHUNK_ELEMENTS // max(k * d, 1)
    return int(max(64, min(n, budget)))


def _chunked(x, chunk_size: int):
    """Pads ``x [n, d]`` to whole chunks ``[m, c, d]``.

    Used only by the public kernels whose output is ``[n, k]`` anyway (``e_step``,
    ``score_samples``, ...); :func:`fit` reads ``x`` in place with
    :func:`mljax.cluster._chunks.fold_chunks`.
    """
    n, d = x.shape
    c = min(chunk_size, n)
    m = -(-n // c)
    return jnp.pad(x, ((0, m * c - n), (0, 0))).reshape(m, c, d)


# ----------------------------------------------------------------------------- E- and M-step


class _Prepared(NamedTuple):
    """Per-iteration constants of the E-step (computed once, used by every chunk)."""

    a: jax.Array  # full: [d, k*d] stacked P_k; tied: [d, d] P; diag/sph: precisions
    b: jax.Array  # full: [k, d] mu_k P_k; tied: [k, d] mu P; diag/sph: means
    const: jax.Array  # [k] log pi_k + log det P_k - d/2 log 2π


def _prepare(params: GMMParams, ops: _CovOps) -> _Prepared:
    k, d = params.means.shape
    p = params.precisions_cholesky
    const = jnp.log(params.weights) + ops.log_det(p, d) - 0.5 * d * math.log(2 * math.pi)
    a, b = ops.prepare(params.means, p)
    return _Prepared(a, b, jnp.broadcast_to(const, (k,)))


def _components_major(ops: _CovOps, c: int) -> bool:
    """Whether :func:`fit`'s passes over chunks of ``c`` rows hold the responsibilities as
    ``[k, c]`` (and keep them as ``[k, n]``) instead of ``[c, k]``: where the Mahalanobis term
    is computed rows minor (full covariance with ``c <= FULL_ROWS_MINOR_MAX_CHUNK``, whose second
    moments are rows minor too; diagonal covariance at any chunk), so that the E-step needs no
    transpose. Ms per EM iteration, ``[c, k]`` / ``[k, c]`` (2026-12-06, quiet, two runs each):
    full, 8 vmapped restarts, 100k×16, K=8, c=1,024: 131-141 / 98-105; full 100k×2, K=4,
    c=1,024: 3.25-3.82 / 2.72-2.79; full 200k×32, K=16, c=1,024: 184-189 / 167-186; diag
    (random_from_data init included) 100k×2, K=4: 6.2-8.0 / 6.0-7.1; 100k×16, K=8: 13.6-15.3 /
    12.3-12.9; 200k×32, K=16: 49.6-49.8 / 46.5-47.2; 100k×64, K=8: 22.3-23.9 / 21.0-23.2."""
    return ops.components_major(c)


def _weighted_log_prob(x, prep: _Prepared, ops: _CovOps, *, t: bool = False):
    """``log pi_k + log N(x_n | mu_k, Sigma_k)``: ``[c, k]`` for a chunk ``x [c, d]`` (``[k,
    c]`` with ``t``, see :func:`_components_major`)."""
    k = prep.const.shape[0]
    if t:
        return prep.const[:, None] - 0.5 * ops.sq_mahalanobis_t(x, prep.a, prep.b, k)
    return prep.const[None] - 0.5 * ops.sq_mahalanobis(x, prep.a, prep.b, k)


def _logsumexp(lp, axis: int = 1):
    """Logsumexp of ``[c, k]`` over ``axis`` (-inf where every entry is -inf)."""
    mx = jnp.max(lp, axis=axis, keepdims=True)
    mx_safe = jnp.where(jnp.isfinite(mx), mx, 0.0)
    return jnp.squeeze(mx_safe, axis) + jnp.log(jnp.sum(jnp.exp(lp - mx_safe), axis=axis))


def _log_resp(lp, axis: int = 1):
    """``log r_nk`` from joint log-probabilities with the components on ``axis`` (``[c, k]``
    or, with ``axis=0``, ``[k, c]``), uniform where ``log p(x_n)`` is not finite; and
    ``log p(x_n)`` ``[c]``."""
    k = lp.shape[axis]
    lse = _logsumexp(lp, axis)
    lse_b = jnp.expand_dims(lse, axis)
    return jnp.where(jnp.isfinite(lse_b), lp - lse_b, -math.log(k)), lse


def _row_axis(t: bool) -> int:
    """The rows' axis of responsibilities: 1 of ``[k, c]`` with ``t``, 0 of ``[c, k]``."""
    return 1 if t else 0


def _along_rows(v, t: bool):
    """``v [c]`` shaped to multiply responsibilities (``[1, c]`` with ``t``, ``[c, 1]``)."""
    return jnp.expand_dims(v, 1 - _row_axis(t))


def _resp(xc, prep: _Prepared, ops: _CovOps, t: bool):
    """A chunk's responsibilities, ``[c, k]`` (``[k, c]`` with ``t``, see
    :func:`_components_major`), and ``log p(x_n)`` ``[c]``."""
    log_r, lse = _log_resp(_weighted_log_prob(xc, prep, ops, t=t), axis=1 - _row_axis(t))
    return jnp.exp(log_r), lse


def _weighted_sum(w, values):
    """``sum_n w_n v_n`` with zero-weight terms dropped (``0 · -inf`` would be NaN)."""
    return jnp.sum(jnp.where(w > 0, w * values, 0.0))


class _EStats(NamedTuple):
    ll_sum: jax.Array  # sum_n w_n log p(x_n)
    nk: jax.Array  # [k] sum_n w_n r_nk
    sx: jax.Array  # [k, d] sum_n w_n r_nk x_n


def _e_pass(x, w, c0, params: GMMParams, ops: _CovOps, c: int, *, n_worst: int = 0, keep=False):
    """One pass over the chunks: log-likelihood, first-order statistics, worst points.

    Args:
        x: ``[n, d]`` data (read in place, chunk by chunk); w: ``[n]`` weights.
        c0: ``[d]`` centre subtracted from every chunk (``params`` means are centred on it).
        params: current parameters.
        ops: the covariance type's operations (static).
        c: rows per chunk (static, ``<= n``).
        n_worst: how many worst-explained points to return (0: none), kept as a running
            top-k in the carry (no per-point output).
        keep: also return the unweighted responsibilities ``[n, k]`` (for the covariance
            pass, instead of recomputing them there); ``[k, n]`` where
            :func:`_components_major`.

    Returns:
        ``(stats, worst_points [n_worst, d] or None, resp or None)`` with ``worst_points``
        centred.
    """
    prep = _prepare(params, ops)
    k, d = params.means.shape
    dtype = x.dtype
    per_chunk = min(n_worst, c)
    t = _components_major(ops, c)

    def body(carry, xc, wc, start):
        st, worst, kept = carry
        r, lse = _resp(xc, prep, ops, t)
        rw = r * _along_rows(wc, t)
        if keep:
            kept = lax.dynamic_update_slice_in_dim(kept, r, start, axis=_row_axis(t))
        nk, sx = jnp.sum(rw, axis=_row_axis(t)), (rw if t else rw.T) @ xc
        st = _EStats(st.ll_sum + _weighted_sum(wc, lse), st.nk + nk, st.sx + sx)
        if per_chunk:
            score = jnp.where(wc > 0, jnp.where(jnp.isfinite(lse), lse, -jnp.inf), jnp.inf)
            vals, idx = lax.top_k(-score, per_chunk)
            all_vals = jnp.concatenate([worst[0], vals])
            all_pts = jnp.concatenate([worst[1], xc[idx]])
            top, pos = lax.top_k(all_vals, n_worst)
            worst = (top, all_pts[pos])
        return st, worst, kept

    zero = _EStats(jnp.zeros((), dtype), jnp.zeros((k,), dtype), jnp.zeros((k, d), dtype))
    worst0 = (
        (jnp.full((n_worst,), -jnp.inf, dtype), jnp.zeros((n_worst, d), dtype))
        if per_chunk
        else None
    )
    kept0 = jnp.zeros((k, x.shape[0]) if t else (x.shape[0], k), dtype) if keep else None
    stats, worst, kept = fold_chunks(x, w, c0, c, body, (zero, worst0, kept0))
    return stats, (worst[1] if per_chunk else None), kept


def _m_step_passes(x, w, c0, c: int, rw_fn, k: int, ops: _CovOps, reg_covar, min_variance):
    """An M-step from responsibilities ``rw_fn(xc, wc, start) -> w_n r_nk [c, k]``: one pass
    for ``N_k`` and ``sum_n w_n r_nk x_n``, one for the second-order statistics."""
    stats = _first_order_pass(x, w, c0, c, rw_fn, k)
    nk = stats.nk + 10 * jnp.finfo(x.dtype).eps
    acc = _cov_pass(x, w, c0, c, rw_fn, stats.sx / nk[:, None], ops)
    return _finish_m_step(stats, acc, ops, reg_covar, min_variance)


def _first_order_pass(x, w, c0, c: int, rw_fn, k: int):
    """``nk [k]`` and ``sx [k, d]`` from responsibilities ``rw_fn(xc, wc, start) -> [c, k]``."""
    d = x.shape[1]
    dtype = x.dtype

    def body(st, xc, wc, start):
        rw = rw_fn(xc, wc, start)
        return _EStats(st.ll_sum, st.nk + jnp.sum(rw, axis=0), st.sx + rw.T @ xc)

    zero = _EStats(jnp.zeros((), dtype), jnp.zeros((k,), dtype), jnp.zeros((k, d), dtype))
    return fold_chunks(x, w, c0, c, body, zero)


def _cov_pass(x, w, c0, c: int, rw_fn, means, ops: _CovOps, *, t: bool = False):
    """Second-order statistics around ``means`` (``sum_n w_n r_nk (x_n - mu_k)(...)``, in the
    shape ``ops.moments_shape``), unnormalised.

    The responsibilities of each chunk come from ``rw_fn(xc, wc, start) -> [c, k]`` (``[k,
    c]`` with ``t``; in EM: sliced from the kept responsibilities, or recomputed from the
    E-step parameters).
    """
    k, d = means.shape
    moments = ops.moments_t if t else ops.moments

    def body(acc, xc, wc, start):
        return acc + moments(rw_fn(xc, wc, start), xc, means)

    return fold_chunks(x, w, c0, c, body, jnp.zeros(ops.moments_shape(k, d), x.dtype))


def _finish_m_step(stats: _EStats, acc, ops: _CovOps, reg_covar, min_variance):
    """Parameters from the statistics (scikit-learn's ``_estimate_gaussian_parameters``)."""
    nk = stats.nk + 10 * jnp.finfo(stats.sx.dtype).eps
    means = stats.sx / nk[:, None]
    cov = _floor_variance(ops.covariances(acc, nk, reg_covar), ops, min_variance)
    return _params_from_cov(nk / jnp.sum(nk), means, cov, ops)


def _center_of(params: GMMParams):
    """A reference point (the mixture mean) subtracted before the E-step matmuls."""
    return lax.stop_gradient(params.weights @ params.means)


def _shift(params: GMMParams, shift):
    return params._replace(means=params.means - shift[None])


def _with_precisions(params: GMMParams, ops: _CovOps) -> GMMParams:
    if params.precisions_cholesky is None:
        return params._replace(precisions_cholesky=ops.precision_cholesky(params.covariances))
    return params


# ----------------------------------------------------------------------------- validation


def _check_k(k, n: int) -> int:
    k = validation.check_int(k, "k")
    if k < 1 or k > n:
        raise ValueError(f"k must satisfy 1 <= k <= n = {n}; got k = {k}")
    return k


def _check_params(params, ops: _CovOps, k, d, dtype, name="init"):
    """Validates given starting parameters (shapes, finiteness, PD) before tracing."""
    if not isinstance(params, GMMParams):
        raise ValueError(
            f"{name} must be one of {INITS} or a GMMParams; got {type(params).__name__}"
        )
    weights = jnp.asarray(params.weights, dtype)
    means = jnp.asarray(params.means, dtype)
    cov = jnp.asarray(params.covariances, dtype)
    expected = {"weights": (k,), "means": (k, d), "covariances": ops.shape(k, d)}
    for field, arr in (("weights", weights), ("means", means), ("covariances", cov)):
        if tuple(arr.shape) != expected[field]:
            raise ValueError(
                f"{name}.{field} must have shape {expected[field]} for k={k}, d={d}, "
                f"covariance_type={ops.name!r}; got {tuple(arr.shape)}"
            )
        validation.check_finite(arr, f"{name}.{field}")
    if validation.is_concrete(weights):
        wn = np.asarray(weights)
        if np.any(wn < 0) or wn.sum() <= 0:
            raise ValueError(f"{name}.weights must be >= 0 with a positive sum; got {wn}")
    prec = ops.precision_cholesky(cov)
    if validation.is_concrete(prec) and not np.all(np.isfinite(np.asarray(prec))):
        raise ValueError(f"{name}.covariances must be positive definite")
    return GMMParams(weights / jnp.sum(weights), means, cov, prec)


def _check_kernel_params(params, covariance_type, d=None, dtype=None, name="params"):
    """Validates the parameters given to a public kernel before tracing: shapes (``means``
    ``[k, d]`` with ``d`` that of the data, ``weights`` ``[k]``, covariances of the type's
    shape), and for concrete values: finite, weights ``>= 0`` with a positive sum, covariances
    positive definite. Returns ``(params with precisions, cast to dtype, ops)``; float16 /
    bfloat16 parameters are computed in float32 (LAPACK has no half-precision Cholesky)."""
    if not isinstance(params, GMMParams):
        if isinstance(params, tuple) and len(params) in (3, 4):
            params = GMMParams(*params)
        else:
            raise ValueError(f"{name} must be a GMMParams; got {type(params).__name__}")
    for field in ("weights", "means", "covariances"):
        check_real(getattr(params, field), f"{name}.{field}")
    if params.precisions_cholesky is not None:
        check_real(params.precisions_cholesky, f"{name}.precisions_cholesky")
    means = jnp.asarray(params.means)
    if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
        raise ValueError(
            f"{name}.means must be 2-D [k, d] with k, d >= 1; got shape {tuple(means.shape)}"
        )
    k, dm = means.shape
    if d is not None and dm != d:
        raise ValueError(
            f"{name}.means has d = {dm} features but x has d = {d}; allowed: the same d"
        )
    weights = jnp.asarray(params.weights)
    if weights.shape != (k,):
        raise ValueError(
            f"{name}.weights must have shape (k,) = ({k},); got {tuple(weights.shape)}"
        )
    ops = _ops_of(params, covariance_type)
    if dtype is None:
        dtype = jnp.result_type(means.dtype, float)
    if jnp.finfo(dtype).bits < 32:
        dtype = jnp.float32
    cast = {
        field: None
        if getattr(params, field) is None
        else jnp.asarray(getattr(params, field), dtype)
        for field in GMMParams._fields
    }
    params = _with_precisions(GMMParams(**cast), ops)
    for field in ("weights", "means", "covariances"):
        validation.check_finite(getattr(params, field), f"{name}.{field}")
    if validation.is_concrete(params.weights):
        wn = np.asarray(params.weights)
        if np.any(wn < 0) or not wn.sum() > 0:
            raise ValueError(f"{name}.weights must be >= 0 with a positive sum; got {wn}")
    prec = params.precisions_cholesky
    if validation.is_concrete(prec) and not np.all(np.isfinite(np.asarray(prec))):
        raise ValueError(
            f"{name}.covariances must be positive definite (a finite precision Cholesky "
            "factor); got a matrix that is not"
        )
    return params, ops


def _kernel_args(x, params: GMMParams, covariance_type, chunk_size):
    """The checks shared by the public kernels: ``(x, params with precisions, ops, chunk)``.
    float16 / bfloat16 data are computed in float32."""
    x = check_data(x, "x", min_float32=True)
    n, d = x.shape
    params, ops = _check_kernel_params(params, covariance_type, d, x.dtype)
    chunk = validation.check_chunk_size(chunk_size, auto_chunk_size(n, params.means.shape[0], d))
    return x, params, ops, chunk


# ----------------------------------------------------------------------------- public kernels


def _log_prob_full(x, params: GMMParams, ops: _CovOps, chunk: int):
    """``[n, k]`` joint log-probabilities (checked arguments)."""
    n = x.shape[0]
    k = params.means.shape[0]
    c0 = _center_of(params)
    prep = _prepare(_shift(params, c0), ops)
    lp = lax.map(lambda xc: _weighted_log_prob(xc, prep, ops), _chunked(x - c0[None], chunk))
    return lp.reshape(-1, k)[:n]


def e_step(x, params: GMMParams, *, covariance_type=None, sample_weight=None, chunk_size=None):
    """E-step: mean log-likelihood and log-responsibilities.

    Args:
        x: ``[n, d]`` data.
        params: :class:`GMMParams` (``precisions_cholesky`` computed if ``None``).
        covariance_type: inferred from the shapes when ``None`` (must be given if ``k == d``
            and the covariances are 2-D).
        sample_weight: optional ``[n]`` weights for the mean.
        chunk_size: rows per chunk (static; default keeps ``[chunk, k, d]`` about 2 MiB).

    Returns:
        ``(log_likelihood, log_resp)``: the weighted mean of ``log p(x_n)`` (scalar; points of
        weight 0 are left out even where ``log p(x_n) = -inf``) and ``log r_nk`` ``[n, k]``.

    Raises:
        ValueError: bad ``x``; ``params.means`` not ``[k, d]`` with the data's ``d``;
            ``params.weights`` not ``[k]``, negative or summing to 0; NaN / inf parameters;
            covariances that are not positive definite. The same checks guard
            :func:`score_samples`, :func:`score`, :func:`predict_proba` and :func:`predict`.
            Under ``jit`` (traced parameters) the value checks are skipped and such
            parameters give NaN log-likelihoods. float16 / bfloat16 inputs are computed in
            float32.
    """
    x, params, ops, chunk = _kernel_args(x, params, covariance_type, chunk_size)
    w = validation.check_sample_weight(sample_weight, x.shape[0], x.dtype)
    log_resp, lse = _log_resp(_log_prob_full(x, params, ops, chunk))
    return _weighted_sum(w, lse) / jnp.sum(w), log_resp


def m_step(
    x,
    log_resp,
    *,
    covariance_type="full",
    reg_covar=1e-6,
    min_variance=None,
    sample_weight=None,
    chunk_size=None,
) -> GMMParams:
    """M-step: the parameters maximising the expected complete-data log-likelihood.

    Args:
        x: ``[n, d]`` data.
        log_resp: ``[n, k]`` log-responsibilities (e.g. from :func:`e_step`).
        covariance_type: one of :data:`COVARIANCE_TYPES`.
        reg_covar: added to the diagonal of every covariance.
        min_variance: optional floor on the diagonal variances (the seed's ``minVary``).
        sample_weight: optional ``[n]`` non-negative weights.
        chunk_size: rows per chunk (static).

    Returns:
        :class:`GMMParams` with covariances accumulated around the new means (float32 for
        float16 / bfloat16 data).

    Raises:
        ValueError: bad ``x`` (not ``[n, d]``, complex, non-finite); ``log_resp`` not
            ``[n, k]`` with ``k >= 1``, or holding NaN or ``+inf`` (``-inf``, a zero
            responsibility, is allowed); ``reg_covar`` or ``min_variance`` not a finite
            scalar ``>= 0``; bad ``sample_weight``. Under ``jit`` the value checks are
            skipped: NaN log-responsibilities then give NaN parameters.
    """
    x = check_data(x, "x", min_float32=True)
    ops = _COVARIANCES[check_covariance_type(covariance_type)]
    n, d = x.shape
    log_resp = jnp.asarray(check_real(log_resp, "log_resp"), x.dtype)
    if log_resp.ndim != 2 or log_resp.shape[0] != n or log_resp.shape[1] < 1:
        raise ValueError(
            f"log_resp must have shape (n, k) with n = {n} and k >= 1 components; "
            f"got {tuple(log_resp.shape)}"
        )
    if validation.is_concrete(log_resp):
        lr = np.asarray(log_resp)
        if np.any(np.isnan(lr) | (lr == np.inf)):
            raise ValueError(
                "log_resp contains NaN or +inf; allowed: finite values or -inf (log 0)"
            )
    validation.check_scalar(reg_covar, "reg_covar", minimum=0.0)
    validation.check_scalar(min_variance, "min_variance", minimum=0.0, allow_none=True)
    k = log_resp.shape[1]
    if sample_weight is not None:
        check_real(sample_weight, "sample_weight")
    w = validation.check_sample_weight(sample_weight, n, x.dtype)
    c = min(validation.check_chunk_size(chunk_size, auto_chunk_size(n, k, d)), n)
    # Centre on the weighted data mean (exact shift, keeps float32 sums small).
    c0 = lax.stop_gradient(w @ x / jnp.sum(w))

    def rw_fn(xc, wc, start):
        return jnp.exp(lax.dynamic_slice_in_dim(log_resp, start, c, axis=0)) * wc[:, None]

    params = _m_step_passes(x, w, c0, c, rw_fn, k, ops, reg_covar, min_variance)
    return params._replace(means=params.means + c0[None])


def score_samples(x, params: GMMParams, *, covariance_type=None, chunk_size=None):
    """Per-sample log-likelihood ``log p(x_n)``: ``[n]``."""
    x, params, ops, chunk = _kernel_args(x, params, covariance_type, chunk_size)
    return jax.nn.logsumexp(_log_prob_full(x, params, ops, chunk), axis=1)


def score(x, params: GMMParams, *, covariance_type=None, sample_weight=None, chunk_size=None):
    """(Weighted) mean per-sample log-likelihood (scikit-learn's ``score``): scalar.

    Points of weight 0 are left out, also where ``log p(x_n) = -inf`` (as in :func:`e_step`).
    """
    s = score_samples(x, params, covariance_type=covariance_type, chunk_size=chunk_size)
    w = validation.check_sample_weight(sample_weight, s.shape[0], s.dtype)
    return _weighted_sum(w, s) / jnp.sum(w)


def predict_proba(x, params: GMMParams, *, covariance_type=None, chunk_size=None):
    """Responsibilities ``p(z = k | x_n)``: ``[n, k]``."""
    x, params, ops, chunk = _kernel_args(x, params, covariance_type, chunk_size)
    lp = _log_prob_full(x, params, ops, chunk)
    return jnp.exp(lp - jax.nn.logsumexp(lp, axis=1, keepdims=True))


def predict(x, params: GMMParams, *, covariance_type=None, chunk_size=None):
    """Most responsible component of each point: ``[n]`` int32."""
    x, params, ops, chunk = _kernel_args(x, params, covariance_type, chunk_size)
    return jnp.argmax(_log_prob_full(x, params, ops, chunk), axis=1).astype(jnp.int32)


def sample(key, params: GMMParams, n: int, *, covariance_type=None):
    """Draws ``n`` points from the mixture.

    Args:
        key: PRNG key.
        params: :class:`GMMParams`.
        n: number of samples (static).
        covariance_type: inferred from the shapes when ``None``.

    Returns:
        ``(x [n, d], labels [n] int32)``: ``z ~ Cat(pi)``, ``x = mu_z + L_z eps`` with
        ``Sigma_z = L_z L_zᵀ`` and ``eps ~ N(0, I)`` (float32 for float16 / bfloat16
        parameters).

    Raises:
        ValueError: ``n`` not an int ``>= 0`` (bools and floats are refused); ``n`` so large
            that the draws would need more than this machine's memory; parameters as in
            :func:`e_step` (shapes, finite, weights ``>= 0`` with a positive sum, positive
            definite covariances). Under ``jit`` (traced parameters) the value checks are
            skipped and a non-positive-definite covariance gives NaN samples.
    """
    n = validation.check_int(n, "n", minimum=0)
    params, ops = _check_kernel_params(params, covariance_type)
    d = params.means.shape[1]
    # eps [n, d], the output [n, d], the labels and the gathered means/noise factors.
    validation.check_allocation(
        n * (3 * d + 2), jnp.dtype(params.means.dtype).itemsize, f"sample with n = {n:,}"
    )
    kz, ke = jax.random.split(key)
    z = jax.random.categorical(kz, jnp.log(params.weights), shape=(n,)).astype(jnp.int32)
    eps = jax.random.normal(ke, (n, d), params.means.dtype)
    return params.means[z] + ops.sample_noise(params.covariances, z, eps), z


def n_parameters(params: GMMParams, *, covariance_type=None) -> int:
    """Number of free parameters (static Python int)."""
    k, d = params.means.shape
    return _ops_of(params, covariance_type).n_parameters(k, d) + k * d + k - 1


def _total_log_likelihood(x, params, covariance_type, sample_weight, chunk_size):
    """``(sum_n w_n log p(x_n), log sum_n w_n)``; ``n`` and ``log n`` when unweighted."""
    n = jnp.asarray(x).shape[0]
    s = score(
        x, params, covariance_type=covariance_type, sample_weight=sample_weight,
        chunk_size=chunk_size,
    )  # fmt: skip
    if sample_weight is None:
        return s * n, math.log(n)
    wsum = jnp.sum(jnp.asarray(sample_weight, s.dtype))
    return s * wsum, jnp.log(wsum)


def bic(x, params: GMMParams, *, covariance_type=None, sample_weight=None, chunk_size=None):
    """Bayesian information criterion ``-2 sum_n w_n log p(x_n) + p log sum_n w_n`` (lower is
    better; ``w_n = 1`` by default, so ``-2 n score + p log n``). Integer weights give the BIC
    of the data with each point repeated ``w_n`` times."""
    total, log_n = _total_log_likelihood(x, params, covariance_type, sample_weight, chunk_size)
    return -2.0 * total + n_parameters(params, covariance_type=covariance_type) * log_n


def aic(x, params: GMMParams, *, covariance_type=None, sample_weight=None, chunk_size=None):
    """Akaike information criterion ``-2 sum_n w_n log p(x_n) + 2 p`` (lower is better)."""
    total, _ = _total_log_likelihood(x, params, covariance_type, sample_weight, chunk_size)
    return -2.0 * total + 2.0 * n_parameters(params, covariance_type=covariance_type)


# ----------------------------------------------------------------------------- fitting


class _EMConst(NamedTuple):
    """Loop-invariant inputs of one fit (ott-jax's ``KMeansConst``): the data, read in place
    chunk by chunk and centred on ``center`` as each chunk is read, and the traced
    hyperparameters. Sizes and the covariance type are static arguments instead."""

    x: jax.Array  # [n, d]
    w: jax.Array  # [n] sample weights
    wsum: jax.Array  # [] sum_n w_n
    center: jax.Array  # [d] weighted data mean; parameters inside the fit are centred on it
    tol: jax.Array  # [] stop when the mean log-likelihood changes by less
    reg_covar: jax.Array  # [] added to every covariance diagonal
    min_variance: jax.Array | None  # [] floor on the diagonal variances
    rand_const: jax.Array  # [] the "rand_const" initialisation's constant
    reset_cov: jax.Array  # covariance given to a re-seeded component
    reset_prec: jax.Array  # its precision Cholesky factor


def _data_variances(x, w, c0, c):
    """Per-feature weighted variance ``[d]`` of ``x`` around its weighted mean ``c0``."""
    d = x.shape[1]

    def body(acc, xc, wc, start):
        return acc + wc @ (xc * xc)

    return fold_chunks(x, w, c0, c, body, jnp.zeros((d,), x.dtype)) / jnp.sum(w)


def _reset_covariance(var, ops: _CovOps, k, reg_covar, min_variance):
    """Covariance given to a re-seeded component: the data's diagonal covariance."""
    v = jnp.maximum(var + reg_covar, jnp.finfo(var.dtype).eps * (1.0 + jnp.mean(var)))
    return _floor_variance(ops.diagonal(v, k, var.shape[0]), ops, min_variance)


def _init_params(key, const: _EMConst, *, k: int, ops: _CovOps, init: str, c: int):
    """Starting parameters, centred on ``const.center`` (see the module docstring for each
    ``init``)."""
    x, w, c0 = const.x, const.w, const.center
    n, d = x.shape
    dtype = x.dtype
    if init in ("kmeans", "random"):
        if init == "kmeans":
            labels = kmeans.fit(key, x, k, n_init=1, sample_weight=w).labels  # [n] int32

            def rw_fn(xc, wc, start):
                lab = lax.dynamic_slice_in_dim(labels, start, c)
                return jax.nn.one_hot(lab, k, dtype=dtype) * wc[:, None]
        else:
            # [n, k] uniform draws (an initialisation-only array; the same stream as before
            # the chunked passes, so a given key gives the same start).
            u = jax.random.uniform(key, (n, k), dtype)

            def rw_fn(xc, wc, start):
                uc = lax.dynamic_slice_in_dim(u, start, c, axis=0)
                return uc / jnp.sum(uc, axis=1, keepdims=True) * wc[:, None]

        return _m_step_passes(x, w, c0, c, rw_fn, k, ops, const.reg_covar, const.min_variance)
    if init in ("k-means++", "random_from_data"):
        if init == "k-means++":
            means = kmeans.kmeans_plusplus(key, x, k, sample_weight=w) - c0[None]
        else:
            idx = jax.random.choice(key, n, (k,), replace=False, p=w / jnp.sum(w))
            means = x[idx] - c0[None]
        # One point per component (scikit-learn's one-hot responsibilities): the covariance is
        # the regulariser alone (kept positive if reg_covar = 0).
        var = _data_variances(x, w, c0, c)
        floor = jnp.finfo(dtype).eps * (1.0 + jnp.mean(var))
        cov = ops.diagonal(jnp.maximum(const.reg_covar, floor), k, d)
        cov = _floor_variance(cov, ops, const.min_variance)
        return _params_from_cov(jnp.full((k,), 1.0 / k, dtype), means, cov, ops)
    # "rand_const": the seed's mogEM.py initialisation.
    kw, km = jax.random.split(key)
    var = _data_variances(x, w, c0, c)
    weights = const.rand_const + jax.random.uniform(kw, (k,), dtype)
    weights = weights / jnp.sum(weights)
    means = jax.random.normal(km, (k, d), dtype) * (jnp.sqrt(var) / const.rand_const)[None]
    cov = _reset_covariance(
        2.0 * var - const.reg_covar, ops, k, const.reg_covar, const.min_variance
    )
    return _params_from_cov(weights, means, cov, ops)


class _EMState(NamedTuple):
    params: GMMParams
    n_iter: jax.Array
    ll_prev: jax.Array
    trace: jax.Array
    converged: jax.Array
    n_reseeded: jax.Array


def _em_iteration(const: _EMConst, s: _EMState, *, ops: _CovOps, c: int, keep_resp: bool):
    """One EM iteration (the ``lax.while_loop`` body): E-step pass, M-step passes, re-seeding of
    collapsed components, convergence test."""
    x, w, c0 = const.x, const.w, const.center
    k = s.params.means.shape[0]
    eps = jnp.finfo(x.dtype).eps
    stats, worst, kept = _e_pass(x, w, c0, s.params, ops, c, n_worst=k, keep=keep_resp)
    ll = stats.ll_sum / const.wsum
    nk = stats.nk + 10 * eps
    t = _components_major(ops, c)  # responsibilities [k, c] / kept [k, n]
    if keep_resp:

        def rw_fn(xc, wc, start):  # the E-step's responsibilities, kept
            r = lax.dynamic_slice_in_dim(kept, start, c, axis=_row_axis(t))
            return r * _along_rows(wc, t)
    else:
        prep = _prepare(s.params, ops)

        def rw_fn(xc, wc, start):  # the E-step's responsibilities, recomputed
            return _resp(xc, prep, ops, t)[0] * _along_rows(wc, t)

    acc = _cov_pass(x, w, c0, c, rw_fn, stats.sx / nk[:, None], ops, t=t)
    new = _finish_m_step(stats, acc, ops, const.reg_covar, const.min_variance)
    # Collapse: weight ~ 0, or a covariance that is not numerically positive definite.
    p = new.precisions_cholesky
    ok = ops.component_ok(jnp.isfinite(p) & (jnp.abs(p) < jnp.finfo(x.dtype).max), k)
    ok = ok & (new.weights >= eps) & jnp.all(jnp.isfinite(new.means), axis=1)
    bad = ~ok
    rank = jnp.clip(jnp.cumsum(bad) - 1, 0, k - 1)
    means = jnp.where(bad[:, None], worst[rank], new.means)
    mask = ops.component_mask(bad)
    cov = jnp.where(mask, const.reset_cov, new.covariances)
    prec = jnp.where(mask, const.reset_prec, p)
    weights = jnp.where(bad, 1.0 / k, jnp.where(jnp.isfinite(new.weights), new.weights, 0))
    weights = weights / jnp.sum(weights)
    return _EMState(
        GMMParams(weights, means, cov, prec),
        s.n_iter + 1,
        ll,
        s.trace.at[s.n_iter].set(ll),
        jnp.abs(ll - s.ll_prev) < const.tol,
        s.n_reseeded + jnp.sum(bad).astype(jnp.int32),
    )


def _em(params0: GMMParams, const: _EMConst, *, ops: _CovOps, max_iter, c, keep_resp):
    """EM iterations from ``params0`` (centred on ``const.center``) in a ``lax.while_loop``."""
    dtype = const.x.dtype

    def cond(s: _EMState):
        return (s.n_iter < max_iter) & ~s.converged

    def body(s: _EMState):
        return _em_iteration(const, s, ops=ops, c=c, keep_resp=keep_resp)

    s0 = _EMState(
        params0,
        jnp.zeros((), jnp.int32),
        jnp.asarray(-jnp.inf, dtype),
        jnp.full((max_iter,), jnp.nan, dtype),
        jnp.zeros((), bool),
        jnp.zeros((), jnp.int32),
    )
    return lax.while_loop(cond, body, s0)


def _fit_impl(
    key, x, w, tol, reg_covar, min_variance, rand_const, init_params, *,
    k, covariance_type, init, n_init, max_iter, chunk_size, keep_resp,
):  # fmt: skip
    ops = _COVARIANCES[covariance_type]
    n = x.shape[0]
    c = min(chunk_size, n)
    wsum = jnp.sum(w)
    c0 = w @ x / wsum
    var = _data_variances(x, w, c0, c)
    reset_cov = _reset_covariance(var, ops, k, reg_covar, min_variance)
    const = _EMConst(
        x, w, wsum, c0, tol, reg_covar, min_variance, rand_const, reset_cov,
        ops.precision_cholesky(reset_cov),
    )  # fmt: skip

    def one(key):
        if init == "params":
            params0 = _shift(init_params, c0)
        else:
            params0 = _init_params(key, const, k=k, ops=ops, init=init, c=c)
        s = _em(params0, const, ops=ops, max_iter=max_iter, c=c, keep_resp=keep_resp)
        stats, _, _ = _e_pass(x, w, c0, s.params, ops, c)
        ll = stats.ll_sum / wsum
        return GMMResult(s.params, ll, s.trace, s.n_iter, s.converged, s.n_reseeded)

    if n_init == 1:
        res = one(key)
        res = res._replace(
            restart_log_likelihood=res.log_likelihood[None], restart_n_iter=res.n_iter[None]
        )
    else:
        runs = jax.vmap(one)(jax.random.split(key, n_init))
        best = jnp.argmax(jnp.where(jnp.isnan(runs.log_likelihood), -jnp.inf, runs.log_likelihood))
        res = jax.tree.map(lambda a: a[best], runs)
        res = res._replace(restart_log_likelihood=runs.log_likelihood, restart_n_iter=runs.n_iter)
    return res._replace(params=_shift(res.params, -c0))


_fit_jit = jax.jit(
    _fit_impl,
    static_argnames=(
        "k", "covariance_type", "init", "n_init", "max_iter", "chunk_size", "keep_resp",
    ),
)  # fmt: skip


def fit(
    key,
    x,
    k: int,
    *,
    covariance_type: str = "full",
    init="kmeans",
    n_init: int = 1,
    max_iter: int = 100,
    tol=1e-3,
    reg_covar=1e-6,
    min_variance=None,
    rand_const=10.0,
    sample_weight=None,
    chunk_size: int | None = None,
) -> GMMResult:
    """Fits a Gaussian mixture by EM, with vmapped restarts.

    Args:
        key: PRNG key (initialisation; split over restarts).
        x: ``[n, d]`` real data (float32 by default; float64 under x64). float16 and bfloat16
            data are computed in float32 (LAPACK has no half-precision Cholesky), and the
            result is float32.
        k: number of components, ``1 <= k <= n`` (static).
        covariance_type: one of :data:`COVARIANCE_TYPES` (static).
        init: one of :data:`INITS`, or a :class:`GMMParams` of starting parameters.
        n_init: restarts, vmapped over split keys; the highest final log-likelihood is kept.
        max_iter: maximum EM iterations (static; the trace has this length).
        tol: stop when the mean log-likelihood changes by less than ``tol`` (traced).
        reg_covar: added to each covariance diagonal (traced).
        min_variance: optional floor on the diagonal variances (traced).
        rand_const: the ``"rand_const"`` initialisation's constant (traced).
        sample_weight: optional ``[n]`` non-negative weights (scikit-learn lacks this).
        chunk_size: rows per chunk of the E- and M-step passes (static; default keeps the
            ``[chunk, k, d]`` intermediates about 2 MiB, and those of all ``n_init`` vmapped
            restarts together about 4 MiB).

    Returns:
        :class:`GMMResult`.

    Raises:
        ValueError: non-2-D or non-finite ``x``; ``k`` outside ``[1, n]``; bad
            ``sample_weight``; unknown ``covariance_type`` or ``init``; given parameters of the
            wrong shape; bad ``n_init``, ``max_iter``, ``tol``, ``reg_covar``,
            ``min_variance``, ``rand_const`` or ``chunk_size``; complex ``x`` or weights;
            data (with weights) whose squared distances would overflow the dtype
            (``4 · sum(w) · max ||x_n - mean||²`` above its largest finite value, e.g.
            float32 data scaled by 1e30 or weights of 3e38): rescale them.

    Under ``jit`` (traced ``x`` or weights) the value checks are skipped: non-finite or
    overflowing data then give NaN parameters.
    """
    x = check_data(x, "x", min_float32=True, finite=False)  # NaN / inf: check_no_overflow
    n, d = x.shape
    k = _check_k(k, n)
    ops = _COVARIANCES[check_covariance_type(covariance_type)]
    n_init = validation.check_positive_int(n_init, "n_init")
    max_iter = validation.check_positive_int(max_iter, "max_iter")
    validation.check_scalar(tol, "tol", minimum=0.0)
    validation.check_scalar(reg_covar, "reg_covar", minimum=0.0)
    validation.check_scalar(min_variance, "min_variance", minimum=0.0, allow_none=True)
    validation.check_scalar(rand_const, "rand_const", minimum=0.0, strict_minimum=True)
    if sample_weight is not None:
        check_real(sample_weight, "sample_weight")
    w = validation.check_sample_weight(sample_weight, n, x.dtype)
    check_no_overflow(x, w, "gmm")
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS} or a GMMParams; got {init!r}")
        init_params, init_kind = None, init
    else:
        init_params = _check_params(init, ops, k, d, x.dtype)
        init_kind, n_init = "params", 1  # every restart would be identical
    chunk = validation.check_chunk_size(
        chunk_size, auto_chunk_size(n, k, d, n_init, covariance_type)
    )
    dtype = x.dtype
    return _fit_jit(
        key,
        x,
        w,
        jnp.asarray(tol, dtype),
        jnp.asarray(reg_covar, dtype),
        None if min_variance is None else jnp.asarray(min_variance, dtype),
        jnp.asarray(rand_const, dtype),
        init_params,
        k=k,
        covariance_type=covariance_type,
        init=init_kind,
        n_init=n_init,
        max_iter=max_iter,
        chunk_size=chunk,
        # Keeping the [n, k] responsibilities between the E pass and the covariance pass
        # saves recomputing the E-step; above the budget they are recomputed chunk by chunk
        # so memory stays O(chunk) in n.
        keep_resp=n * k * n_init <= KEEP_RESP_ELEMENTS,
    )


def select_k_by_bic(key, x, ks, **fit_kwargs) -> BICSelection:
    """Fits one mixture per candidate ``k`` (restarts vmapped) and picks the lowest BIC.

    Each ``k`` is its own compiled fit (shapes depend on ``k``; see the module docstring for
    why this loops rather than pads).

    Args:
        key: PRNG key (the same key for every ``k``).
        x: ``[n, d]`` data.
        ks: candidate numbers of components.
        **fit_kwargs: passed to :func:`fit` (``covariance_type``, ``n_init``, ...);
            ``sample_weight`` and ``chunk_size`` also weight and chunk the BIC.

    Returns:
        :class:`BICSelection`.
    """
    ks = np.asarray(list(ks), dtype=int)
    if ks.ndim != 1 or ks.size == 0:
        raise ValueError(f"ks must be a non-empty sequence of ints; got {ks!r}")
    bic_kwargs = {
        "covariance_type": fit_kwargs.get("covariance_type", "full"),
        "sample_weight": fit_kwargs.get("sample_weight"),
        "chunk_size": fit_kwargs.get("chunk_size"),
    }
    results, bics = [], []
    for k in ks:
        res = fit(key, x, int(k), **fit_kwargs)
        results.append(res)
        bics.append(bic(x, res.params, **bic_kwargs))
    bics = jnp.stack(bics)
    best = int(jnp.argmin(jnp.where(jnp.isnan(bics), jnp.inf, bics)))
    return BICSelection(ks, bics, int(ks[best]), results[best])
