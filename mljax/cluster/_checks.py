"""Argument checks shared by k-means and GMM (on top of :mod:`mljax.validation`).

Like :mod:`mljax.validation`, every check runs on the host before tracing and skips values
that are JAX tracers (the callers' docstrings say what happens then).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mljax import validation


def check_real(value: Any, name: str) -> Any:
    """Refuses complex, string, object and None arrays (the imaginary part would otherwise be
    dropped with only a warning); returns ``value`` unchanged."""
    if value is None:
        raise ValueError(f"{name} must be a real array; got None")
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(value).dtype
        except Exception as err:  # ragged lists, objects numpy cannot convert
            raise ValueError(f"{name} must be a real numeric array; got {value!r:.80}") from err
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(f"{name} must be real; got complex dtype {dtype} (allowed: real floats)")
    if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        raise ValueError(f"{name} must be a real numeric array; got dtype {dtype}")
    return value


def check_data(x: Any, name: str = "x", *, min_float32: bool = False, finite: bool = True):
    """:func:`mljax.validation.check_matrix` after :func:`check_real`; with ``min_float32``,
    float16 / bfloat16 data are cast to float32. ``finite=False`` leaves the NaN / inf check to
    a later :func:`check_no_overflow`, which makes it in its own pass over ``x``."""
    x = validation.check_matrix(check_real(x, name), name, finite=finite)
    if min_float32 and jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)
    return x


@jax.jit
def _spread_screen(x):
    """``max_n ||x_n - x_0||²`` in one fused pass over ``x`` (at least float32), ``inf`` when
    ``x`` holds NaN or inf."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    s = jnp.sum(jnp.square(x - x[0][None, :]), axis=1)
    return jnp.max(jnp.where(jnp.isnan(s), jnp.inf, s))


def check_no_overflow(x, w, what: str, name: str = "x") -> None:
    """Refuses data that hold NaN or inf, or whose weighted squared distances would overflow
    ``x.dtype``.

    Every squared distance, sum of squares or (co)variance that k-means and EM form is at most
    ``B = 4 · sum_n w_n · max_n ||x_n - mean||²`` (a point and a centre both lie within
    ``max_n ||x_n - mean||`` of the mean), which must stay below the largest finite value of
    ``x.dtype``. The answers are scale-equivariant, so rescaled data give the same clustering.
    Tracers pass unchecked.

    A screen reads ``x`` once, compiled: the weighted mean lies in the convex hull of the
    points, so ``||x_n - mean|| <= 2 max_m ||x_m - x_0||`` and ``B <= 16 · sum(w) · r`` with
    ``r = max_m ||x_m - x_0||²``. When that bound (doubled, for rounding) is finite and below
    the dtype's largest value, the data pass. Otherwise the exact checks run on the host in
    float64 (NaN / inf first, then ``B`` itself), so the screen never changes which data are
    refused (the sample-weight sum is checked first, as before), only how fast most data
    are accepted (at 60k × 784 float32: 8 ms instead of 160).
    """
    if not validation.is_concrete(w):
        validation.check_finite(x, name)  # the overflow bound needs the weights
        return
    if not validation.is_concrete(x):
        return
    wn = np.asarray(w, np.float64)
    big = float(jnp.finfo(x.dtype).max)
    wsum = float(wn.sum())
    if wsum > big:
        raise ValueError(
            f"sample_weight sums to {wsum:.3g}, which overflows {x.dtype} (max {big:.3g}); "
            "allowed: weights whose sum is finite in the data's dtype (rescale them)"
        )
    r = float(_spread_screen(x))
    if math.isfinite(r) and 32.0 * wsum * r < big:
        return
    validation.check_finite(x, name)
    xn = np.asarray(x, np.float64)
    mean = wn @ xn / wsum
    r2 = float(np.max(np.sum((xn - mean) ** 2, axis=1)))
    bound = 4.0 * wsum * r2
    if not bound < big:
        raise ValueError(
            f"x overflows {x.dtype} in {what} (with sample_weight): weighted squared "
            f"distances reach about "
            f"{bound:.3g} > {big:.3g}; allowed: 4 · sum(sample_weight) · max ||x_n - mean||² "
            f"below {big:.3g} (rescale the data or weights; the result is scale-equivariant)"
        )
