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
the working memory is ``O(chunk × k × d)`` plus the E-step's ``[n, k]`` responsibilities,
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

Choosing ``k`` by BIC (:func:`select_k_by_bic`) loops over the candidate ``k`` and fits each with
vmapped restarts: every ``k`` changes array shapes, and padding all fits to the largest ``k``
would make every fit pay for the largest one and would need masked variants of every
initialisation (k-means included), so one compiled fit per ``k`` is the cheaper honest choice.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mljax.cluster import kmeans
from mljax.cluster._chunks import fold_chunks, put_rows

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
INITS = ("kmeans", "k-means++", "random", "random_from_data", "rand_const")

# Target elements of the per-chunk [chunk, k, d] intermediates (2 MiB in float32, so they stay
# in cache). Measured ms per EM iteration (loaded machine), 2^21 -> 2^19 elements: full
# 100k×16 K=8 130 -> 90; full 200k×32 K=16 1099 -> 944; diag 200k×32 K=16 257 -> 233.
_CHUNK_ELEMENTS = 1 << 19
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
    """

    params: GMMParams
    log_likelihood: jax.Array
    log_likelihood_trace: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    n_reseeded: jax.Array


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


# ----------------------------------------------------------------------------- helpers


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def _check_covariance_type(covariance_type) -> str:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}; got {covariance_type!r}"
        )
    return covariance_type


def _cov_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    return {"full": (k, d, d), "diag": (k, d), "spherical": (k,), "tied": (d, d)}[covariance_type]


def _infer_covariance_type(params: GMMParams, covariance_type) -> str:
    """The covariance type of ``params`` from the shapes (static), or checks a given one."""
    k, d = params.means.shape
    cov_shape = tuple(params.covariances.shape)
    if covariance_type is not None:
        _check_covariance_type(covariance_type)
        if cov_shape != _cov_shape(covariance_type, k, d):
            raise ValueError(
                f"params.covariances has shape {cov_shape}, which does not match "
                f"covariance_type={covariance_type!r} (expected "
                f"{_cov_shape(covariance_type, k, d)} for k={k}, d={d})"
            )
        return covariance_type
    matches = [t for t in COVARIANCE_TYPES if _cov_shape(t, k, d) == cov_shape]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(
            f"params.covariances has shape {cov_shape}; allowed for k={k}, d={d}: "
            + ", ".join(f"{t} {_cov_shape(t, k, d)}" for t in COVARIANCE_TYPES)
        )
    raise ValueError(
        f"params.covariances shape {cov_shape} is ambiguous between {matches} (k == d); "
        "pass covariance_type explicitly"
    )


def _auto_chunk(n: int, k: int, d: int) -> int:
    return int(max(64, min(n, _CHUNK_ELEMENTS // max(k * d, 1))))


def _chunked(x, w, chunk_size: int):
    """Pads ``x [n, d]``, ``w [n]`` to whole chunks ``[m, c, d]``, ``[m, c]`` (pad weight 0).

    Used only by the public kernels whose output is ``[n, k]`` anyway (``e_step``,
    ``score_samples``, ...); :func:`fit` reads ``x`` in place with :func:`mljax.cluster._chunks.fold_chunks`.
    """
    n, d = x.shape
    c = min(chunk_size, n)
    m = -(-n // c)
    pad = m * c - n
    return jnp.pad(x, ((0, pad), (0, 0))).reshape(m, c, d), jnp.pad(w, (0, pad)).reshape(m, c)


def _eye_like(d, dtype):
    return jnp.eye(d, dtype=dtype)


def compute_precision_cholesky(covariances, covariance_type: str):
    """Cholesky factor ``P`` of the precision (scikit-learn's ``_compute_precision_cholesky``).

    Args:
        covariances: shaped by ``covariance_type`` (see :class:`GMMParams`).
        covariance_type: one of :data:`COVARIANCE_TYPES`.

    Returns:
        ``P`` of the same shape: ``L⁻ᵀ`` for ``Sigma = L Lᵀ`` (full / tied), ``1/sqrt(var)``
        (diag / spherical). Non-finite where ``Sigma`` is not numerically positive definite.
    """
    _check_covariance_type(covariance_type)
    if covariance_type in ("full", "tied"):
        d = covariances.shape[-1]
        chol = jnp.linalg.cholesky(covariances)
        eye = jnp.broadcast_to(_eye_like(d, covariances.dtype), covariances.shape)
        inv_chol = lax.linalg.triangular_solve(chol, eye, left_side=True, lower=True)
        return jnp.swapaxes(inv_chol, -1, -2)
    # A non-positive variance gives NaN (not inf), like a failed Cholesky factor.
    return jnp.where(covariances > 0, lax.rsqrt(jnp.abs(covariances)), jnp.nan)


def _log_det_precision_cholesky(prec_chol, covariance_type: str, d: int):
    """``log det P`` per component: ``[k]`` (a scalar for tied)."""
    if covariance_type in ("full", "tied"):
        return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
    if covariance_type == "diag":
        return jnp.sum(jnp.log(prec_chol), axis=-1)
    return d * jnp.log(prec_chol)


class _Prepared(NamedTuple):
    """Per-iteration constants of the E-step (computed once, used by every chunk)."""

    a: jax.Array  # full: [d, k*d] stacked P_k; tied: [d, d] P; diag/sph: precisions
    b: jax.Array  # full: [k, d] mu_k P_k; tied: [k, d] mu P; diag/sph: means
    const: jax.Array  # [k] log pi_k + log det P_k - d/2 log 2π


def _prepare(params: GMMParams, covariance_type: str) -> _Prepared:
    k, d = params.means.shape
    p = params.precisions_cholesky
    const = (
        jnp.log(params.weights)
        + _log_det_precision_cholesky(p, covariance_type, d)
        - 0.5 * d * math.log(2 * math.pi)
    )
    if covariance_type == "full":
        a = jnp.transpose(p, (1, 0, 2)).reshape(d, k * d)
        b = jnp.einsum("kd,kde->ke", params.means, p)
    elif covariance_type == "tied":
        a = p
        b = params.means @ p
    else:
        a = p * p
        b = params.means
    return _Prepared(a, b, jnp.broadcast_to(const, (k,)))


def _weighted_log_prob(x, prep: _Prepared, covariance_type: str):
    """``log pi_k + log N(x_n | mu_k, Sigma_k)``: ``[c, k]`` for a chunk ``x [c, d]``."""
    k = prep.const.shape[0]
    c, d = x.shape
    if covariance_type == "full":
        # One [c, d] x [d, k*d] matmul carries all the work: y_nk = x_n P_k - mu_k P_k.
        y = (x @ prep.a).reshape(c, k, d) - prep.b[None]
        sq = jnp.sum(y * y, axis=-1)
    elif covariance_type == "tied":
        y = (x @ prep.a)[:, None, :] - prep.b[None]
        sq = jnp.sum(y * y, axis=-1)
    elif covariance_type == "diag":
        # sum_d prec_kd (x_d - mu_kd)² expanded into two matmuls (data and means are centred,
        # which keeps the cancellation small); clamped at 0 against rounding.
        sq = (x * x) @ prep.a.T - 2.0 * x @ (prep.b * prep.a).T
        sq = jnp.maximum(sq + jnp.sum(prep.b * prep.b * prep.a, axis=1)[None], 0.0)
    else:
        sq = jnp.sum(x * x, axis=1)[:, None] - 2.0 * x @ prep.b.T
        sq = jnp.maximum(sq + jnp.sum(prep.b * prep.b, axis=1)[None], 0.0) * prep.a[None]
    return prep.const[None] - 0.5 * sq


def _logsumexp(lp):
    """Row-wise logsumexp of ``[c, k]`` (-inf where every entry is -inf)."""
    mx = jnp.max(lp, axis=1)
    mx_safe = jnp.where(jnp.isfinite(mx), mx, 0.0)
    return mx_safe + jnp.log(jnp.sum(jnp.exp(lp - mx_safe[:, None]), axis=1))


class _EStats(NamedTuple):
    ll_sum: jax.Array  # sum_n w_n log p(x_n)
    nk: jax.Array  # [k] sum_n w_n r_nk
    sx: jax.Array  # [k, d] sum_n w_n r_nk x_n


def _resp_unweighted(xc, prep: _Prepared, covariance_type: str):
    """Responsibilities ``r_nk`` ``[c, k]``, ``log p(x_n)`` and its finiteness."""
    k = prep.const.shape[0]
    lp = _weighted_log_prob(xc, prep, covariance_type)
    lse = _logsumexp(lp)
    finite = jnp.isfinite(lse)
    log_resp = jnp.where(finite[:, None], lp - lse[:, None], -math.log(k))
    return jnp.exp(log_resp), lse, finite


def _resp(xc, wc, prep: _Prepared, covariance_type: str):
    """Weighted responsibilities ``w_n r_nk`` ``[c, k]``, ``log p(x_n)`` and its finiteness."""
    r, lse, finite = _resp_unweighted(xc, prep, covariance_type)
    return r * wc[:, None], lse, finite


def _e_pass(
    x, w, c0, params: GMMParams, covariance_type: str, c: int, *, n_worst: int = 0, keep=False
):
    """One pass over the chunks: log-likelihood, first-order statistics, worst points.

    Args:
        x: ``[n, d]`` data (read in place, chunk by chunk); w: ``[n]`` weights.
        c0: ``[d]`` centre subtracted from every chunk (``params`` means are centred on it).
        params: current parameters.
        covariance_type: static.
        c: rows per chunk (static, ``<= n``).
        n_worst: how many worst-explained points to return (0: none), kept as a running
            top-k in the carry (no per-point output).

        keep: also return the unweighted responsibilities ``[n, k]`` (for the covariance
            pass, instead of recomputing them there).

    Returns:
        ``(stats, worst_points [n_worst, d] or None, resp [n, k] or None)`` with
        ``worst_points`` centred.
    """
    prep = _prepare(params, covariance_type)
    k, d = params.means.shape
    dtype = x.dtype
    per_chunk = min(n_worst, c)

    def body(carry, xc, wc, start):
        st, worst, kept = carry
        r, lse, finite = _resp_unweighted(xc, prep, covariance_type)
        rw = r * wc[:, None]
        if keep:
            kept = put_rows(kept, start, r)
        st = _EStats(
            st.ll_sum + jnp.sum(jnp.where(wc > 0, wc * lse, 0.0)),
            st.nk + jnp.sum(rw, axis=0),
            st.sx + rw.T @ xc,
        )
        if per_chunk:
            score = jnp.where(wc > 0, jnp.where(finite, lse, -jnp.inf), jnp.inf)
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
    kept0 = jnp.zeros((x.shape[0], k), dtype) if keep else None
    stats, worst, kept = fold_chunks(x, w, c0, c, body, (zero, worst0, kept0))
    return stats, (worst[1] if per_chunk else None), kept


def _first_order_pass(x, w, c0, c: int, rw_fn, k: int):
    """``nk [k]`` and ``sx [k, d]`` from responsibilities ``rw_fn(xc, wc, start) -> [c, k]``."""
    d = x.shape[1]
    dtype = x.dtype

    def body(st, xc, wc, start):
        rw = rw_fn(xc, wc, start)
        return _EStats(st.ll_sum, st.nk + jnp.sum(rw, axis=0), st.sx + rw.T @ xc)

    zero = _EStats(jnp.zeros((), dtype), jnp.zeros((k,), dtype), jnp.zeros((k, d), dtype))
    return fold_chunks(x, w, c0, c, body, zero)


def _cov_pass(x, w, c0, c: int, rw_fn, means, covariance_type: str):
    """Second-order statistics around ``means``: ``sum_n w_n r_nk (x_n - mu_k)(...)``.

    The responsibilities of each chunk come from ``rw_fn(xc, wc, start) -> [c, k]`` (in EM:
    sliced from the kept ``[n, k]`` array, or recomputed from the E-step parameters).
    Returns ``[k, d, d]`` (full / tied) or ``[k, d]`` (diag / spherical), unnormalised.
    """
    k, d = means.shape

    def body(acc, xc, wc, start):
        rw = rw_fn(xc, wc, start)  # [c, k]
        if covariance_type in ("full", "tied"):
            # sum_n r_nk (x_n - mu_k)(x_n - mu_k)ᵀ = sum_n r_nk (x_n - mu_k) x_nᵀ - e_k mu_kᵀ
            # with e_k = sum_n r_nk (x_n - mu_k) (zero in exact arithmetic; subtracting the
            # computed one compensates its rounding). One [k*d, c] x [c, d] matmul instead of
            # k batched [d, c] x [c, d] ones; every difference is still taken from mu_k.
            u = rw[:, :, None] * (xc[:, None, :] - means[None])  # [c, k, d]
            e = jnp.sum(u, axis=0)  # [k, d]
            s = (u.reshape(-1, k * d).T @ xc).reshape(k, d, d)
            return acc + s - e[:, :, None] * means[:, None, :]
        diff = xc[:, None, :] - means[None]  # [c, k, d]
        if k <= 32:
            # [k, c] x [c, k*d] matmul, keeping the diagonal blocks: k times the flops of
            # the batched reduction but ran ~1.7x faster on XLA:CPU for k = 16.
            blocks = (rw.T @ (diff * diff).reshape(-1, k * d)).reshape(k, k, d)
            return acc + jnp.diagonal(blocks, axis1=0, axis2=1).T
        return acc + jnp.einsum("ck,ckd->kd", rw, diff * diff)

    shape = (k, d, d) if covariance_type in ("full", "tied") else (k, d)
    return fold_chunks(x, w, c0, c, body, jnp.zeros(shape, x.dtype))


def _finish_m_step(stats: _EStats, acc, covariance_type, reg_covar, min_variance):
    """Parameters from the statistics (scikit-learn's ``_estimate_gaussian_parameters``)."""
    dtype = stats.sx.dtype
    d = stats.sx.shape[1]
    nk = stats.nk + 10 * jnp.finfo(dtype).eps
    means = stats.sx / nk[:, None]
    if covariance_type in ("full", "tied"):
        acc = 0.5 * (acc + jnp.swapaxes(acc, -1, -2))  # the one-sided sum is not symmetric
    if covariance_type == "full":
        cov = acc / nk[:, None, None] + reg_covar * _eye_like(d, dtype)[None]
    elif covariance_type == "tied":
        cov = jnp.sum(acc, axis=0) / jnp.sum(nk) + reg_covar * _eye_like(d, dtype)
    elif covariance_type == "diag":
        cov = acc / nk[:, None] + reg_covar
    else:
        cov = jnp.mean(acc / nk[:, None], axis=1) + reg_covar
    cov = _floor_variance(cov, covariance_type, min_variance)
    weights = nk / jnp.sum(nk)
    return GMMParams(weights, means, cov, compute_precision_cholesky(cov, covariance_type))


def _floor_variance(cov, covariance_type, min_variance):
    if min_variance is None:
        return cov
    if covariance_type in ("full", "tied"):
        diag = jnp.diagonal(cov, axis1=-2, axis2=-1)
        # Raising diagonal entries adds a PSD diagonal matrix: stays positive definite.
        return cov + jnp.vectorize(jnp.diag, signature="(d)->(d,d)")(
            jnp.maximum(diag, min_variance) - diag
        )
    return jnp.maximum(cov, min_variance)


def _center_of(params: GMMParams):
    """A reference point (the mixture mean) subtracted before the E-step matmuls."""
    return lax.stop_gradient(params.weights @ params.means)


def _shift(params: GMMParams, shift):
    return params._replace(means=params.means - shift[None])


def _with_precisions(params: GMMParams, covariance_type: str) -> GMMParams:
    if params.precisions_cholesky is None:
        return params._replace(
            precisions_cholesky=compute_precision_cholesky(params.covariances, covariance_type)
        )
    return params


# ----------------------------------------------------------------------------- validation


def _as_float(x, name):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _check_x(x, name="x"):
    x = _as_float(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d]; got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column; got {x.shape}")
    if _is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{name} contains NaN or inf; allowed: finite values only")
    return x


def _check_weights(sample_weight, n, dtype):
    if sample_weight is None:
        return jnp.ones((n,), dtype)
    w = jnp.asarray(sample_weight).astype(dtype)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape (n,) = ({n},); got {tuple(w.shape)}")
    if _is_concrete(w):
        wn = np.asarray(w)
        if not np.all(np.isfinite(wn)) or np.any(wn < 0):
            raise ValueError("sample_weight must be finite and >= 0 (allowed: w_n >= 0)")
        if not np.any(wn > 0):
            raise ValueError("sample_weight must have at least one positive entry")
    return w


def _check_chunk(chunk_size, n, k, d):
    if chunk_size is None:
        return _auto_chunk(n, k, d)
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an int >= 1; got {chunk_size!r}")
    return int(chunk_size)


def _check_params(params, covariance_type, k, d, dtype, name="init"):
    """Validates given starting parameters (shapes, finiteness, PD) before tracing."""
    if not isinstance(params, GMMParams):
        raise ValueError(
            f"{name} must be one of {INITS} or a GMMParams; got {type(params).__name__}"
        )
    weights = jnp.asarray(params.weights, dtype)
    means = jnp.asarray(params.means, dtype)
    cov = jnp.asarray(params.covariances, dtype)
    expected = {"weights": (k,), "means": (k, d), "covariances": _cov_shape(covariance_type, k, d)}
    for field, arr in (("weights", weights), ("means", means), ("covariances", cov)):
        if tuple(arr.shape) != expected[field]:
            raise ValueError(
                f"{name}.{field} must have shape {expected[field]} for k={k}, d={d}, "
                f"covariance_type={covariance_type!r}; got {tuple(arr.shape)}"
            )
        if _is_concrete(arr) and not np.all(np.isfinite(np.asarray(arr))):
            raise ValueError(f"{name}.{field} contains NaN or inf; allowed: finite values only")
    if _is_concrete(weights):
        wn = np.asarray(weights)
        if np.any(wn < 0) or wn.sum() <= 0:
            raise ValueError(f"{name}.weights must be >= 0 with a positive sum; got {wn}")
    prec = compute_precision_cholesky(cov, covariance_type)
    if _is_concrete(prec) and not np.all(np.isfinite(np.asarray(prec))):
        raise ValueError(f"{name}.covariances must be positive definite")
    return GMMParams(weights / jnp.sum(weights), means, cov, prec)


def _check_scalar(value, name, *, minimum=0.0, allow_none=False):
    if value is None and allow_none:
        return None
    if _is_concrete(value):
        v = np.asarray(value)
        if v.shape != () or not np.isfinite(v) or v < minimum:
            raise ValueError(f"{name} must be a finite number >= {minimum}; got {value!r}")
    return value


# ----------------------------------------------------------------------------- public kernels


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
        ``(log_likelihood, log_resp)``: the weighted mean of ``log p(x_n)`` (scalar) and
        ``log r_nk`` ``[n, k]``.
    """
    x = _check_x(x)
    covariance_type = _infer_covariance_type(params, covariance_type)
    params = _with_precisions(params, covariance_type)
    n, d = x.shape
    k = params.means.shape[0]
    w = _check_weights(sample_weight, n, x.dtype)
    chunk = _check_chunk(chunk_size, n, k, d)
    lp = _log_prob_full(x, params, covariance_type, chunk)
    lse = _logsumexp(lp)
    finite = jnp.isfinite(lse)
    log_resp = jnp.where(finite[:, None], lp - lse[:, None], -math.log(k))
    return jnp.sum(jnp.where(w > 0, w * lse, 0.0)) / jnp.sum(w), log_resp


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
        :class:`GMMParams` with covariances accumulated around the new means.
    """
    x = _check_x(x)
    _check_covariance_type(covariance_type)
    n, d = x.shape
    log_resp = jnp.asarray(log_resp, x.dtype)
    if log_resp.ndim != 2 or log_resp.shape[0] != n:
        raise ValueError(f"log_resp must have shape (n, k) with n={n}; got {log_resp.shape}")
    k = log_resp.shape[1]
    w = _check_weights(sample_weight, n, x.dtype)
    chunk = _check_chunk(chunk_size, n, k, d)
    # Centre on the weighted data mean (exact shift, keeps float32 sums small).
    c0 = lax.stop_gradient(w @ x / jnp.sum(w))
    c = min(chunk, n)

    def rw_fn(xc, wc, start):
        return jnp.exp(lax.dynamic_slice_in_dim(log_resp, start, c, axis=0)) * wc[:, None]

    stats = _first_order_pass(x, w, c0, c, rw_fn, k)
    nk = stats.nk + 10 * jnp.finfo(x.dtype).eps
    acc = _cov_pass(x, w, c0, c, rw_fn, stats.sx / nk[:, None], covariance_type)
    params = _finish_m_step(stats, acc, covariance_type, reg_covar, min_variance)
    return params._replace(means=params.means + c0[None])


def _log_prob_full(x, params, covariance_type, chunk_size):
    x = _check_x(x)
    covariance_type = _infer_covariance_type(params, covariance_type)
    params = _with_precisions(params, covariance_type)
    n, d = x.shape
    k = params.means.shape[0]
    chunk = _check_chunk(chunk_size, n, k, d)
    c0 = _center_of(params)
    xs, _ = _chunked(x - c0[None], jnp.ones((n,), x.dtype), chunk)
    prep = _prepare(_shift(params, c0), covariance_type)
    lp = lax.map(lambda xc: _weighted_log_prob(xc, prep, covariance_type), xs)
    return lp.reshape(-1, k)[:n]


def score_samples(x, params: GMMParams, *, covariance_type=None, chunk_size=None):
    """Per-sample log-likelihood ``log p(x_n)``: ``[n]``."""
    return jax.nn.logsumexp(_log_prob_full(x, params, covariance_type, chunk_size), axis=1)


def score(x, params: GMMParams, *, covariance_type=None, sample_weight=None, chunk_size=None):
    """(Weighted) mean per-sample log-likelihood (scikit-learn's ``score``): scalar."""
    s = score_samples(x, params, covariance_type=covariance_type, chunk_size=chunk_size)
    w = _check_weights(sample_weight, s.shape[0], s.dtype)
    return jnp.sum(w * s) / jnp.sum(w)


def predict_proba(x, params: GMMParams, *, covariance_type=None, chunk_size=None):
    """Responsibilities ``p(z = k | x_n)``: ``[n, k]``."""
    lp = _log_prob_full(x, params, covariance_type, chunk_size)
    return jnp.exp(lp - jax.nn.logsumexp(lp, axis=1, keepdims=True))


def predict(x, params: GMMParams, *, covariance_type=None, chunk_size=None):
    """Most responsible component of each point: ``[n]`` int32."""
    lp = _log_prob_full(x, params, covariance_type, chunk_size)
    return jnp.argmax(lp, axis=1).astype(jnp.int32)


def sample(key, params: GMMParams, n: int, *, covariance_type=None):
    """Draws ``n`` points from the mixture.

    Args:
        key: PRNG key.
        params: :class:`GMMParams`.
        n: number of samples (static).
        covariance_type: inferred from the shapes when ``None``.

    Returns:
        ``(x [n, d], labels [n] int32)``: ``z ~ Cat(pi)``, ``x = mu_z + L_z eps`` with
        ``Sigma_z = L_z L_zᵀ`` and ``eps ~ N(0, I)``.
    """
    covariance_type = _infer_covariance_type(params, covariance_type)
    d = params.means.shape[1]
    kz, ke = jax.random.split(key)
    z = jax.random.categorical(kz, jnp.log(params.weights), shape=(n,)).astype(jnp.int32)
    eps = jax.random.normal(ke, (n, d), params.means.dtype)
    cov = params.covariances
    if covariance_type == "full":
        noise = jnp.einsum("nde,ne->nd", jnp.linalg.cholesky(cov)[z], eps)
    elif covariance_type == "tied":
        noise = eps @ jnp.linalg.cholesky(cov).T
    elif covariance_type == "diag":
        noise = eps * jnp.sqrt(cov)[z]
    else:
        noise = eps * jnp.sqrt(cov)[z][:, None]
    return params.means[z] + noise, z


def n_parameters(params: GMMParams, *, covariance_type=None) -> int:
    """Number of free parameters (static Python int)."""
    covariance_type = _infer_covariance_type(params, covariance_type)
    k, d = params.means.shape
    cov = {"full": k * d * (d + 1) // 2, "diag": k * d, "spherical": k, "tied": d * (d + 1) // 2}
    return cov[covariance_type] + k * d + k - 1


def bic(x, params: GMMParams, *, covariance_type=None, chunk_size=None):
    """Bayesian information criterion ``-2 n score + p log n`` (lower is better)."""
    n = jnp.asarray(x).shape[0]
    s = score(x, params, covariance_type=covariance_type, chunk_size=chunk_size)
    return -2.0 * s * n + n_parameters(params, covariance_type=covariance_type) * math.log(n)


def aic(x, params: GMMParams, *, covariance_type=None, chunk_size=None):
    """Akaike information criterion ``-2 n score + 2 p`` (lower is better)."""
    n = jnp.asarray(x).shape[0]
    s = score(x, params, covariance_type=covariance_type, chunk_size=chunk_size)
    return -2.0 * s * n + 2.0 * n_parameters(params, covariance_type=covariance_type)


# ----------------------------------------------------------------------------- fitting


def _data_variances(x, w, c0, c):
    """Per-feature weighted variance ``[d]`` of ``x`` around its weighted mean ``c0``."""
    d = x.shape[1]

    def body(acc, xc, wc, start):
        return acc + wc @ (xc * xc)

    return fold_chunks(x, w, c0, c, body, jnp.zeros((d,), x.dtype)) / jnp.sum(w)


def _reset_covariance(var, covariance_type, k, reg_covar, min_variance):
    """Covariance given to a re-seeded component: the data's diagonal covariance."""
    dtype = var.dtype
    v = jnp.maximum(var + reg_covar, jnp.finfo(dtype).eps * (1.0 + jnp.mean(var)))
    if covariance_type in ("full", "tied"):
        cov = jnp.diag(v)
        cov = jnp.broadcast_to(cov, (k, *cov.shape)) if covariance_type == "full" else cov
    elif covariance_type == "diag":
        cov = jnp.broadcast_to(v, (k, v.shape[0]))
    else:
        cov = jnp.full((k,), jnp.mean(v), dtype)
    return _floor_variance(cov, covariance_type, min_variance)


def _init_params(key, x, w, c0, c, k, covariance_type, init, hyper):
    """Starting parameters, centred on ``c0`` (see the module docstring for each ``init``)."""
    reg_covar, min_variance, rand_const = hyper
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

        stats = _first_order_pass(x, w, c0, c, rw_fn, k)
        nk = stats.nk + 10 * jnp.finfo(dtype).eps
        acc = _cov_pass(x, w, c0, c, rw_fn, stats.sx / nk[:, None], covariance_type)
        return _finish_m_step(stats, acc, covariance_type, reg_covar, min_variance)
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
        cov = _const_cov(jnp.maximum(reg_covar, floor), covariance_type, k, d, dtype)
        cov = _floor_variance(cov, covariance_type, min_variance)
        weights = jnp.full((k,), 1.0 / k, dtype)
        return GMMParams(weights, means, cov, compute_precision_cholesky(cov, covariance_type))
    # "rand_const": the seed's mogEM.py initialisation.
    kw, km = jax.random.split(key)
    var = _data_variances(x, w, c0, c)
    weights = rand_const + jax.random.uniform(kw, (k,), dtype)
    weights = weights / jnp.sum(weights)
    means = jax.random.normal(km, (k, d), dtype) * (jnp.sqrt(var) / rand_const)[None]
    cov = _reset_covariance(2.0 * var - reg_covar, covariance_type, k, reg_covar, min_variance)
    return GMMParams(weights, means, cov, compute_precision_cholesky(cov, covariance_type))


def _const_cov(value, covariance_type, k, d, dtype):
    if covariance_type == "full":
        return jnp.broadcast_to(value * jnp.eye(d, dtype=dtype)[None], (k, d, d))
    if covariance_type == "tied":
        return value * jnp.eye(d, dtype=dtype)
    if covariance_type == "diag":
        return jnp.full((k, d), value, dtype)
    return jnp.full((k,), value, dtype)


class _EMState(NamedTuple):
    params: GMMParams
    n_iter: jax.Array
    ll_prev: jax.Array
    trace: jax.Array
    converged: jax.Array
    n_reseeded: jax.Array


def _em(params0, x, w, c0, tol, hyper, reset_cov, *, covariance_type, max_iter, c, keep_resp):
    """EM iterations in a ``lax.while_loop``; ``x`` read in place in chunks of ``c`` rows,
    centred on ``c0`` chunk by chunk (``params0`` is centred on ``c0``)."""
    reg_covar, min_variance, _ = hyper
    k = params0.means.shape[0]
    dtype = x.dtype
    wsum = jnp.sum(w)
    eps = jnp.finfo(dtype).eps
    reset_prec = compute_precision_cholesky(reset_cov, covariance_type)

    def cond(s: _EMState):
        return (s.n_iter < max_iter) & ~s.converged

    def body(s: _EMState):
        stats, worst, kept = _e_pass(
            x, w, c0, s.params, covariance_type, c, n_worst=k, keep=keep_resp
        )
        ll = stats.ll_sum / wsum
        nk = stats.nk + 10 * eps
        if keep_resp:

            def rw_fn(xc, wc, start):  # the E-step's responsibilities, kept
                return lax.dynamic_slice_in_dim(kept, start, c, axis=0) * wc[:, None]
        else:
            prep = _prepare(s.params, covariance_type)

            def rw_fn(xc, wc, start):  # the E-step's responsibilities, recomputed
                return _resp(xc, wc, prep, covariance_type)[0]

        acc = _cov_pass(x, w, c0, c, rw_fn, stats.sx / nk[:, None], covariance_type)
        new = _finish_m_step(stats, acc, covariance_type, reg_covar, min_variance)
        # Collapse: weight ~ 0, or a covariance that is not numerically positive definite.
        p = new.precisions_cholesky
        p_ok = jnp.isfinite(p) & (jnp.abs(p) < jnp.finfo(dtype).max)
        if covariance_type == "full":
            ok = jnp.all(p_ok, axis=(1, 2))
        elif covariance_type == "tied":
            ok = jnp.broadcast_to(jnp.all(p_ok), (k,))
        elif covariance_type == "diag":
            ok = jnp.all(p_ok, axis=1)
        else:
            ok = p_ok
        ok = ok & (new.weights >= eps) & jnp.all(jnp.isfinite(new.means), axis=1)
        bad = ~ok
        rank = jnp.clip(jnp.cumsum(bad) - 1, 0, k - 1)
        means = jnp.where(bad[:, None], worst[rank], new.means)
        if covariance_type == "tied":
            any_bad = jnp.any(bad)
            cov = jnp.where(any_bad, reset_cov, new.covariances)
            prec = jnp.where(any_bad, reset_prec, p)
        else:
            sel = bad.reshape((k,) + (1,) * (p.ndim - 1))
            cov = jnp.where(sel, reset_cov, new.covariances)
            prec = jnp.where(sel, reset_prec, p)
        weights = jnp.where(bad, 1.0 / k, jnp.where(jnp.isfinite(new.weights), new.weights, 0))
        weights = weights / jnp.sum(weights)
        params = GMMParams(weights, means, cov, prec)
        converged = jnp.abs(ll - s.ll_prev) < tol
        return _EMState(
            params,
            s.n_iter + 1,
            ll,
            s.trace.at[s.n_iter].set(ll),
            converged,
            s.n_reseeded + jnp.sum(bad).astype(jnp.int32),
        )

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
    n = x.shape[0]
    c = min(chunk_size, n)
    c0 = w @ x / jnp.sum(w)
    hyper = (reg_covar, min_variance, rand_const)
    var = _data_variances(x, w, c0, c)
    reset_cov = _reset_covariance(var, covariance_type, k, reg_covar, min_variance)

    def one(key):
        if init == "params":
            params0 = _shift(init_params, c0)
        else:
            params0 = _init_params(key, x, w, c0, c, k, covariance_type, init, hyper)
        s = _em(
            params0, x, w, c0, tol, hyper, reset_cov,
            covariance_type=covariance_type, max_iter=max_iter, c=c, keep_resp=keep_resp,
        )  # fmt: skip
        stats, _, _ = _e_pass(x, w, c0, s.params, covariance_type, c)
        ll = stats.ll_sum / jnp.sum(w)
        return GMMResult(s.params, ll, s.trace, s.n_iter, s.converged, s.n_reseeded)

    if n_init == 1:
        res = one(key)
    else:
        runs = jax.vmap(one)(jax.random.split(key, n_init))
        best = jnp.argmax(jnp.where(jnp.isnan(runs.log_likelihood), -jnp.inf, runs.log_likelihood))
        res = jax.tree.map(lambda a: a[best], runs)
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
        x: ``[n, d]`` data (float32 by default; float64 under x64).
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
            ``[chunk, k, d]`` intermediates about 2 MiB).

    Returns:
        :class:`GMMResult`.

    Raises:
        ValueError: non-2-D or non-finite ``x``; ``k`` outside ``[1, n]``; bad
            ``sample_weight``; unknown ``covariance_type`` or ``init``; given parameters of the
            wrong shape; bad ``n_init``, ``max_iter``, ``tol``, ``reg_covar``,
            ``min_variance``, ``rand_const`` or ``chunk_size``.
    """
    x = _check_x(x)
    n, d = x.shape
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise ValueError(f"k must be a Python int (a static size); got {k!r}")
    if k < 1 or k > n:
        raise ValueError(f"k must satisfy 1 <= k <= n = {n}; got k = {k}")
    _check_covariance_type(covariance_type)
    for name, val in (("n_init", n_init), ("max_iter", max_iter)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be an int >= 1; got {val!r}")
    _check_scalar(tol, "tol")
    _check_scalar(reg_covar, "reg_covar")
    _check_scalar(min_variance, "min_variance", allow_none=True)
    _check_scalar(rand_const, "rand_const", minimum=np.finfo(np.float32).tiny)
    w = _check_weights(sample_weight, n, x.dtype)
    chunk = _check_chunk(chunk_size, n, k, d)
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS} or a GMMParams; got {init!r}")
        init_params, init_kind = None, init
    else:
        init_params = _check_params(init, covariance_type, k, d, x.dtype)
        init_kind, n_init = "params", 1  # every restart would be identical
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
        k=int(k),
        covariance_type=covariance_type,
        init=init_kind,
        n_init=int(n_init),
        max_iter=int(max_iter),
        chunk_size=chunk,
        # Keeping the [n, k] responsibilities between the E pass and the covariance pass
        # saves recomputing the E-step; above the budget they are recomputed chunk by chunk
        # so memory stays O(chunk) in n.
        keep_resp=x.shape[0] * int(k) * int(n_init) <= KEEP_RESP_ELEMENTS,
    )


def select_k_by_bic(key, x, ks, **fit_kwargs) -> BICSelection:
    """Fits one mixture per candidate ``k`` (restarts vmapped) and picks the lowest BIC.

    Each ``k`` is its own compiled fit (shapes depend on ``k``; see the module docstring for
    why this loops rather than pads).

    Args:
        key: PRNG key (the same key for every ``k``).
        x: ``[n, d]`` data.
        ks: candidate numbers of components.
        **fit_kwargs: passed to :func:`fit` (``covariance_type``, ``n_init``, ...).

    Returns:
        :class:`BICSelection`.
    """
    ks = np.asarray(list(ks), dtype=int)
    if ks.ndim != 1 or ks.size == 0:
        raise ValueError(f"ks must be a non-empty sequence of ints; got {ks!r}")
    cov_type = fit_kwargs.get("covariance_type", "full")
    results, bics = [], []
    for k in ks:
        res = fit(key, x, int(k), **fit_kwargs)
        results.append(res)
        bics.append(bic(x, res.params, covariance_type=cov_type))
    bics = jnp.stack(bics)
    best = int(jnp.argmin(jnp.where(jnp.isnan(bics), jnp.inf, bics)))
    return BICSelection(ks, bics, int(ks[best]), results[best])
