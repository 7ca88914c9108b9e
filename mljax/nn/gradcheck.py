"""Gradient checking: central differences in float64 and leaf-by-leaf relative errors.

For a scalar f(θ) and a parameter entry θ_j the central difference is

    ĝ_j = (f(θ + h e_j) - f(θ - h e_j)) / (2h),   error O(h² f''') + O(ε_mach |f| / h),

so in float64 with h = 1e-6 both terms are ~1e-10 relative or below. Two gradients a, b of one
parameter leaf are compared by

    rel(a, b) = max_j |a_j - b_j| / max(max_j (|a_j| + |b_j|), tiny)

(the leaf's largest discrepancy over its scale: entries that are zero up to rounding, e.g. a
bias feeding a batch norm, do not blow up). ``elementwise=True`` gives the per-entry
max_j |a_j - b_j| / max(|a_j| + |b_j|, tiny) of the CS231n checker behind seed 001's
"W1 max relative error: 6.257855e-09" (use tiny=1e-8 there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = [
    "GradCheckRow",
    "GradCheckTable",
    "check_gradients",
    "compare_trees",
    "leaf_name",
    "numerical_grad",
    "relative_error",
]


class GradCheckRow(NamedTuple):
    """One parameter leaf: its name, shape, entries compared, max abs and relative error."""

    name: str
    shape: tuple[int, ...]
    n_checked: int
    max_abs_err: float
    max_rel_err: float


class GradCheckTable(NamedTuple):
    """Rows of a gradient comparison, printable like seed 001's checker output."""

    rows: tuple[GradCheckRow, ...]
    title: str = ""

    @property
    def max_rel_err(self) -> float:
        """Largest relative error over all leaves (0 for an empty table)."""
        return max((row.max_rel_err for row in self.rows), default=0.0)

    def passed(self, tol: float) -> bool:
        """Whether every leaf's relative error is <= tol (NaN fails)."""
        return all(row.max_rel_err <= tol for row in self.rows)

    def to_dict(self) -> dict[str, float]:
        """``{leaf name: max relative error}`` (JSON-ready)."""
        return {row.name: row.max_rel_err for row in self.rows}

    def lines(self) -> list[str]:
        """Seed-001 style: ``<name> max relative error: 6.257855e-09`` per leaf."""
        return [f"{row.name} max relative error: {row.max_rel_err:e}" for row in self.rows]

    def markdown(self) -> str:
        """A markdown table with one row per leaf."""
        out = [f"**{self.title}**", ""] if self.title else []
        out += [
            "| leaf | shape | checked | max abs err | max rel err |",
            "|---|---|---|---|---|",
        ]
        for r in self.rows:
            shape = "×".join(map(str, r.shape)) or "scalar"
            out.append(
                f"| {r.name} | {shape} | {r.n_checked} | {r.max_abs_err:.3e} | "
                f"{r.max_rel_err:.3e} |"
            )
        return "\n".join(out)

    def __str__(self) -> str:
        return "\n".join(([self.title] if self.title else []) + self.lines())


def leaf_name(path) -> str:
    """ "layer_0/kernel" for a pytree key path."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def relative_error(a, b, *, tiny: float = 1e-30, elementwise: bool = False) -> float:
    """max|a - b| / max(|a| + |b|, tiny) (module docstring), as a Python float.

    Args:
        a: Array.
        b: Array of the same shape.
        tiny: Floor of the denominator (exact zeros compare as 0 error).
        elementwise: Per-entry ratio (CS231n) instead of the leaf-scale ratio.

    Raises:
        ValueError: If the shapes differ or tiny <= 0.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"relative_error needs equal shapes, got {a.shape} and {b.shape}")
    if not tiny > 0:
        raise ValueError(f"tiny must be > 0, got {tiny!r}")
    if a.size == 0:
        return 0.0
    diff, scale = np.abs(a - b), np.abs(a) + np.abs(b)
    if elementwise:
        return float(np.max(diff / np.maximum(scale, tiny)))
    return float(np.max(diff) / max(float(np.max(scale)), tiny))


def _named_leaves(tree) -> list[tuple[str, Any]]:
    return [(leaf_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _rename(name: str, names: Mapping[str, str] | None) -> str:
    return names.get(name, name) if names else name


def _paired_leaves(a, b, what: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, a_leaf, b_leaf)`` as float64 numpy, after checking structure and shapes."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(
            f"{what} differ in structure: {jax.tree.structure(a)} vs {jax.tree.structure(b)}"
        )
    pairs = []
    for (name, la), (_, lb) in zip(_named_leaves(a), _named_leaves(b), strict=True):
        la, lb = np.asarray(la, np.float64), np.asarray(lb, np.float64)
        if la.shape != lb.shape:
            raise ValueError(f"{what}, leaf {name}: shapes differ, {la.shape} vs {lb.shape}")
        pairs.append((name, la, lb))
    return pairs


def compare_trees(
    a,
    b,
    *,
    names: Mapping[str, str] | None = None,
    title: str = "",
    tiny: float = 1e-30,
    elementwise: bool = False,
    tree_floor: float = 0.0,
) -> GradCheckTable:
    """Compare two gradient trees (e.g. manual vs jax.grad) leaf by leaf.

    ``tree_floor`` > 0 raises each leaf's denominator to at least tree_floor × the largest
    |a| + |b| over the whole tree: a leaf whose gradient is zero up to rounding (a bias right
    before a batch norm) then reports its rounding noise relative to the tree's scale instead
    of ~1. The default 0 is the plain per-leaf formula.

    Args:
        a: Gradient tree.
        b: Gradient tree of the same structure and shapes.
        names: Optional display names, e.g. ``{"layer_0/kernel": "W1"}``.
        title: Table title.
        tiny: Denominator floor of `relative_error`.
        elementwise: Per-entry relative error (seed 001's checker).

    Raises:
        ValueError: If the structures or shapes differ.
    """
    pairs = _paired_leaves(a, b, "gradient trees")
    if not tree_floor >= 0:
        raise ValueError(f"tree_floor must be >= 0, got {tree_floor!r}")
    scale = max(
        (float(np.max(np.abs(la) + np.abs(lb), initial=0.0)) for _, la, lb in pairs), default=0.0
    )
    floor = max(tiny, tree_floor * scale)
    rows = [
        GradCheckRow(
            _rename(name, names),
            la.shape,
            la.size,
            float(np.max(np.abs(la - lb), initial=0.0)),
            relative_error(la, lb, tiny=floor, elementwise=elementwise),
        )
        for name, la, lb in pairs
    ]
    return GradCheckTable(tuple(rows), title)


def _require_x64(params) -> None:
    if not jax.config.jax_enable_x64:
        raise ValueError(
            "finite differences need float64: enable it with "
            'jax.config.update("jax_enable_x64", True) (or jax.enable_x64()) first'
        )
    for name, leaf in _named_leaves(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"parameter {name} must be floating point, got {jnp.result_type(leaf)}"
            )


def _selected_indices(params, max_per_leaf: int | None, key) -> np.ndarray:
    """Flat indices (into the raveled parameter vector) of the entries to check."""
    if key is None:
        seed = [0]
    else:
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        seed = np.asarray(data, np.uint32).ravel().tolist()
    rng = np.random.default_rng(seed)
    offset, chosen = 0, []
    for _, leaf in _named_leaves(params):
        size = int(np.size(leaf))
        if max_per_leaf is None or size <= max_per_leaf:
            picks = np.arange(size)
        else:
            picks = np.sort(rng.choice(size, max_per_leaf, replace=False))
        chosen.append(offset + picks)
        offset += size
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def numerical_grad(
    f: Callable[[Any], jax.Array],
    params,
    *,
    eps: float = 1e-6,
    max_per_leaf: int | None = None,
    key: jax.Array | None = None,
    chunk: int = 256,
):
    """Central-difference gradient of a scalar function of a parameter tree, in float64.

    Args:
        f: Scalar function of ``params`` (jax-traceable: perturbations are vmapped).
        params: Parameter tree; cast to float64.
        eps: Step h.
        max_per_leaf: Check at most this many entries per leaf (random, seeded by ``key``);
            the others are NaN in the result. None: every entry.
        key: PRNG key choosing the entries when ``max_per_leaf`` is set.
        chunk: Perturbations evaluated per vmapped batch.

    Returns:
        Tree like ``params`` (float64) with the numerical partial derivatives.

    Raises:
        ValueError: Without float64 enabled, or for eps <= 0 / bad max_per_leaf.
    """
    _require_x64(params)
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite float > 0, got {eps!r}")
    if max_per_leaf is not None and (not isinstance(max_per_leaf, int) or max_per_leaf < 1):
        raise ValueError(f"max_per_leaf must be None or an int >= 1, got {max_per_leaf!r}")
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    flat, unravel = ravel_pytree(params)
    idx = _selected_indices(params, max_per_leaf, key)

    def partial(j):
        step = jnp.zeros_like(flat).at[j].set(eps)
        return (f(unravel(flat + step)) - f(unravel(flat - step))) / (2 * eps)

    values = jax.jit(lambda js: jax.lax.map(partial, js, batch_size=chunk))(jnp.asarray(idx))
    full = jnp.full(flat.shape, jnp.nan, jnp.float64).at[jnp.asarray(idx)].set(values)
    return unravel(full)


def check_gradients(
    f: Callable[[Any], jax.Array],
    params,
    analytic,
    *,
    eps: float = 1e-6,
    max_per_leaf: int | None = None,
    key: jax.Array | None = None,
    names: Mapping[str, str] | None = None,
    title: str = "",
    tiny: float = 1e-30,
    elementwise: bool = False,
) -> GradCheckTable:
    """Compare an analytic gradient tree with central differences of f, leaf by leaf.

    Only the entries that were differenced take part (all of them unless ``max_per_leaf``).

    Args:
        f: Scalar loss as a function of ``params``.
        params: Where to differentiate.
        analytic: The gradient to check (same structure as ``params``).
        eps, max_per_leaf, key: As `numerical_grad`.
        names, title, tiny, elementwise: As `compare_trees`.

    Returns:
        `GradCheckTable` of analytic vs numerical relative errors.
    """
    numeric = numerical_grad(f, params, eps=eps, max_per_leaf=max_per_leaf, key=key)
    rows = []
    for name, ana, num in _paired_leaves(analytic, numeric, "analytic gradient and parameters"):
        checked = ~np.isnan(num)
        a, b = ana[checked], num[checked]
        rows.append(
            GradCheckRow(
                _rename(name, names),
                num.shape,
                int(checked.sum()),
                float(np.max(np.abs(a - b), initial=0.0)),
                relative_error(a, b, tiny=tiny, elementwise=elementwise),
            )
        )
    return GradCheckTable(tuple(rows), title)
