"""Argument checks shared by every public entry point.

One module so that a rule (what a positive int is, when an array can be inspected, what a
sample weight may hold) is written once. Every check raises ``ValueError`` (``TypeError``
where the *type* is wrong and no value of it could do) with a message that names the
argument, says what was given and what is allowed.

Checks run on the host, before tracing. Values that are JAX tracers (inside ``jit`` /
``vmap`` / ``grad``) cannot be inspected: value checks skip them, and the caller's docstring
says what happens then (usually a NaN or a documented clamp).
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_allocation",
    "check_chunk_size",
    "check_finite",
    "check_int",
    "check_matrix",
    "check_positive_int",
    "check_sample_weight",
    "check_scalar",
    "is_concrete",
    "physical_memory",
]


def is_concrete(value: Any) -> bool:
    """True when ``value`` can be read on the host (it is not a JAX tracer)."""
    return not isinstance(value, jax.core.Tracer)


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """A Python or NumPy integer (never a bool or a float) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int; got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}; got {value}")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """An integer >= 1 (bools and floats are refused)."""
    return check_int(value, name, minimum=1)


def check_chunk_size(chunk_size: Any, auto: int) -> int:
    """``chunk_size`` as an int >= 1, or ``auto`` when it is None."""
    if chunk_size is None:
        return int(auto)
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int | np.integer)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or an int >= 1; got {chunk_size!r}")
    return int(chunk_size)


def check_finite(value: Any, name: str) -> None:
    """Raises if a concrete array holds NaN or inf (tracers pass)."""
    if is_concrete(value) and not bool(np.all(np.isfinite(np.asarray(value)))):
        raise ValueError(f"{name} contains NaN or inf; allowed: finite values only")


def check_matrix(x: Any, name: str = "x", *, finite: bool = True) -> jax.Array:
    """A data matrix ``[n, d]`` with ``n, d >= 1`` and finite entries (when concrete and
    ``finite``; a caller that passes ``finite=False`` checks them itself), as a JAX array;
    integer or bool input is cast to the default float type."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d]; got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least one row and one column; got shape {tuple(x.shape)}"
        )
    if finite:
        check_finite(x, name)
    return x


def check_scalar(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
    allow_none: bool = False,
) -> Any:
    """A finite real scalar in the given range; returned unchanged. Tracers pass.

    Args:
        value: the argument (Python number, NumPy or JAX scalar).
        name: its name, for the message.
        minimum, maximum: bounds (None: unbounded).
        strict_minimum, strict_maximum: exclude the bound itself.
        allow_none: accept None (returned as None).
    """
    if value is None and allow_none:
        return None
    if not is_concrete(value):
        return value
    lo = "(" if strict_minimum else "["
    hi = ")" if strict_maximum else "]"
    allowed = f"in {lo}{'-inf' if minimum is None else minimum}, {'inf' if maximum is None else maximum}{hi}"
    if isinstance(value, bool | str) or value is None:
        raise ValueError(f"{name} must be a finite number {allowed}; got {value!r}")
    try:
        arr = np.asarray(value)
    except Exception as err:  # e.g. objects numpy cannot convert
        raise ValueError(f"{name} must be a finite number {allowed}; got {value!r}") from err
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be a finite real scalar {allowed}; got {value!r}")
    v = float(arr)
    bad = not math.isfinite(v)
    if minimum is not None:
        bad |= v <= minimum if strict_minimum else v < minimum
    if maximum is not None:
        bad |= v >= maximum if strict_maximum else v > maximum
    if bad:
        raise ValueError(f"{name} must be a finite number {allowed}; got {value!r}")
    return value


def check_sample_weight(sample_weight: Any, n: int, dtype: Any) -> jax.Array:
    """Per-row weights ``[n]``: ones when None; else finite, >= 0, not all zero."""
    if sample_weight is None:
        return jnp.ones((n,), dtype)
    w = jnp.asarray(sample_weight).astype(dtype)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape (n,) = ({n},); got {tuple(w.shape)}")
    if is_concrete(w):
        wn = np.asarray(w)
        if not np.all(np.isfinite(wn)) or np.any(wn < 0):
            raise ValueError("sample_weight must be finite and >= 0 (allowed: w_n >= 0)")
        if not np.any(wn > 0):
            raise ValueError("sample_weight must have at least one positive entry")
    return w


def physical_memory() -> int:
    """Bytes of physical memory on this machine (1 TiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_allocation(n_elements: int, itemsize: int, what: str) -> None:
    """Refuses, before any work, an array larger than this machine's memory."""
    nbytes = int(n_elements) * int(itemsize)
    limit = physical_memory()
    if nbytes > limit:
        raise ValueError(
            f"{what} would need {nbytes:,} bytes, more than this machine's memory ({limit:,} bytes)"
        )
