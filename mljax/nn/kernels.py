"""Array kernels of the layer vocabulary: forwards, manual backward rules, custom VJPs.

Everything here acts on arrays and static geometry (window, strides, padding); nothing knows
about layer specs, flax or parameter trees. :mod:`mljax.nn.layers` builds one rule per layer
type from these functions and :mod:`mljax.nn.backprop` walks those rules, so the flax model and
the manual engine share one implementation of each formula.

Shapes: x [n, h, w, c] (NHWC), kernel W [kh, kw, c, f] (HWIO), g = dLoss/dy of the output.
Padding follows ``lax``: "VALID" keeps only full windows; "SAME" pads (total // 2) before and
the rest after. The manual rules, written from their derivations:

    dense        y = x W + b:      dW = xᵀ g,  db = Σ_rows g,  dx = g Wᵀ
    conv         y = x ⋆ W:        dW[p, q, c, f] = Σ_{n,i,j} x̃[n, s·i + p, s·j + q, c] g[n, i, j, f]
                                   (x̃ = x zero-padded), dx = full convolution of g (dilated by
                                   the stride) with the flipped kernel, cropped to the input
    max pool                       g routed to each window's first maximum (row-major order,
                                   XLA's select-and-scatter rule); overlapping windows add up
    avg pool                       g / (kh·kw) spread over each window (padding dropped)
    relu / sigmoid / tanh / id     g·[f > 0],  g·f(1 - f),  g·(1 - f²),  g   (f = output)
    dropout (keep mask m)          dx = g·m / (1 - rate)
    batch norm (train)             x̂ = (x - μ)/σ, σ = sqrt(var + eps), m = rows reduced over:
                                   dγ = Σ g x̂,  dβ = Σ g,  dx = (γ/σ)(g - dβ/m - x̂ dγ/m)
    batch norm (eval)              dx = g γ / σ_running,  dγ = Σ g x̂,  dβ = Σ g

Custom VJPs: :func:`conv` and :func:`max_pool` are the forms the flax model differentiates
(``jax.custom_vjp``), because XLA on CPU runs the generic gradients (the kernel-gradient
convolution and select-and-scatter) several times slower. ``conv``'s forward and kernel
gradient are one im2col matmul for narrow patches (kh·kw·c ≤ :data:`IM2COL_MAX_PATCH`),
otherwise XLA's forward and one matmul per window offset (:func:`conv_kernel_grad`); its input
gradient is XLA's transposed convolution. ``max_pool``'s gradient is :func:`max_pool_backward`
(a running argmax over the window offsets). Their values equal ``jax.grad`` of the plain forms
:func:`conv_lax` / :func:`max_pool_lax` (tested). A ``custom_vjp`` has no forward mode:
``jax.jvp`` / ``jax.jacfwd`` through ``conv`` or ``max_pool`` raise; use the ``*_lax`` forms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "ACTIVATIONS",
    "IM2COL_MAX_PATCH",
    "activation",
    "activation_backward",
    "avg_pool",
    "avg_pool_backward",
    "batch_norm",
    "batch_norm_backward",
    "conv",
    "conv_input_grad",
    "conv_kernel_grad",
    "conv_lax",
    "conv_output_hw",
    "dense",
    "dense_backward",
    "dropout",
    "dropout_backward",
    "im2col",
    "max_pool",
    "max_pool_backward",
    "max_pool_lax",
    "window_slices",
]

ACTIVATIONS = ("relu", "sigmoid", "tanh", "identity")

IM2COL_MAX_PATCH = 16
"""Largest patch width kh·kw·c for which :func:`conv` runs as one im2col matmul (forward and
kernel gradient)."""

_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------- dense


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """y = x W + b on the last axis of x [..., d]; W [d, f], b [f] or None."""
    y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y if bias is None else y + bias


def dense_backward(x: jax.Array, kernel: jax.Array, g: jax.Array, need_dx: bool = True):
    """Dense rule: dW = xᵀ g, db = Σ g over rows, dx = g Wᵀ.

    Args:
        x: Layer input [..., d].
        kernel: W [d, f].
        g: dLoss/dy [..., f].
        need_dx: Skip dx (returned as None) for the first layer.

    Returns:
        (dW [d, f], db [f], dx [..., d] or None).
    """
    batch_axes = tuple(range(x.ndim - 1))
    dw = lax.dot_general(x, g, ((batch_axes, batch_axes), ((), ())))
    db = jnp.sum(g, axis=batch_axes)
    dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ()))) if need_dx else None
    return dw, db, dx


# ----------------------------------------------------------------------------- windows


def window_slices(x: jax.Array, kernel_size, strides, padding: str, out_hw, fill=0.0):
    """The kh·kw strided slices of the padded x [n, h, w, c], one per window offset (p, q) in
    row-major order, each [n, oh, ow, c]: ``conv(x, W) = Σ_pq slice_pq @ W[p, q]``.

    Args:
        x: Input [n, h, w, c].
        kernel_size: Window (kh, kw).
        strides: (sh, sw).
        padding: "SAME" or "VALID".
        out_hw: Output size (oh, ow).
        fill: Value of the padded positions (0 for convolutions, -inf for max pooling).
    """
    (kh, kw), (sh, sw), (oh, ow) = kernel_size, strides, out_hw
    pads = lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    xp = lax.pad(
        x, jnp.asarray(fill, x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0))
    )
    n, c = x.shape[0], x.shape[3]
    return [
        lax.slice(
            xp, (0, p, q, 0), (n, p + (oh - 1) * sh + 1, q + (ow - 1) * sw + 1, c), (1, sh, sw, 1)
        )
        for p in range(kh)
        for q in range(kw)
    ]


def _scatter_windows(pieces, window, strides, padded_hw, out_hw):
    """Sum window-offset pieces back into the padded input grid.

    ``pieces[p][q]`` [n, oh, ow, c] is the gradient reaching input position
    (s_h i + p, s_w j + q) from output (i, j). Non-overlapping windows (stride = window) are
    interleaved by one transpose; otherwise each piece is placed by an interior-padded lax.pad.
    """
    (kh, kw), (sh, sw) = window, strides
    (hp, wp), (oh, ow) = padded_hw, out_hw
    if (kh, kw) == (sh, sw):
        stacked = jnp.stack([jnp.stack(row) for row in pieces])  # [kh, kw, n, oh, ow, c]
        n, c = stacked.shape[2], stacked.shape[-1]
        grid = stacked.transpose(2, 3, 0, 4, 1, 5).reshape(n, oh * kh, ow * kw, c)
        return jnp.pad(grid, ((0, 0), (0, hp - oh * kh), (0, wp - ow * kw), (0, 0)))
    total = None
    zero = jnp.zeros((), pieces[0][0].dtype)
    for p in range(kh):
        for q in range(kw):
            placed = lax.pad(
                pieces[p][q],
                zero,
                (
                    (0, 0, 0),
                    (p, hp - p - (oh - 1) * sh - 1, sh - 1),
                    (q, wp - q - (ow - 1) * sw - 1, sw - 1),
                    (0, 0, 0),
                ),
            )
            total = placed if total is None else total + placed
    return total


def _spread(pieces, window, strides, padding, in_shape, out_hw):
    """:func:`_scatter_windows` into the padded grid, cropped back to the input [n, h, w, c]."""
    (lo_h, hi_h), (lo_w, hi_w) = lax.padtype_to_pads(in_shape[1:3], window, strides, padding)
    padded_hw = (in_shape[1] + lo_h + hi_h, in_shape[2] + lo_w + hi_w)
    dxp = _scatter_windows(pieces, window, strides, padded_hw, out_hw)
    return dxp[:, lo_h : lo_h + in_shape[1], lo_w : lo_w + in_shape[2]]


# ----------------------------------------------------------------------------- conv


def conv_lax(x: jax.Array, kernel: jax.Array, strides, padding: str) -> jax.Array:
    """Cross-correlation ``x ⋆ W`` as one ``lax.conv_general_dilated`` (x NHWC, W HWIO).

    The plain formulation: the reference the custom-gradient :func:`conv` is tested against.
    """
    return lax.conv_general_dilated(
        x, kernel, tuple(strides), padding, dimension_numbers=_CONV_DIMS
    )


def im2col(x: jax.Array, kernel_size, strides, padding: str, out_hw) -> jax.Array:
    """Patches of x [n, h, w, c] for a kernel of ``kernel_size``: [n, oh, ow, kh·kw·c].

    The last axis is ordered (p, q, c) (row-major over the window, then channel), so that
    ``patches.reshape(-1, kh·kw·c) @ W.reshape(kh·kw·c, f)`` is the convolution. Built from
    the kh·kw :func:`window_slices` of the zero-padded input (no identity-kernel convolution).
    """
    return jnp.concatenate(window_slices(x, kernel_size, strides, padding, out_hw), axis=-1)


def conv_output_hw(in_hw, kernel_size, strides, padding: str) -> tuple[int, int]:
    """Spatial output size of a convolution (as ``lax.conv_general_dilated``)."""
    pads = lax.padtype_to_pads(in_hw, kernel_size, strides, padding)
    return tuple(
        (size + lo + hi - k) // st + 1
        for size, (lo, hi), k, st in zip(in_hw, pads, kernel_size, strides, strict=True)
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str) -> jax.Array:
    """``x ⋆ W`` (as :func:`conv_lax`) in the formulations that XLA CPU runs fastest.

    With g = dL/dy [n, oh, ow, f] and the kh·kw :func:`window_slices` X_pq of x:

        narrow patches (kh·kw·c ≤ IM2COL_MAX_PATCH, e.g. a first layer on images):
            y  = im2col(x) W                one [n·oh·ow, kh·kw·c] × [kh·kw·c, f] matmul
            dW = im2col(x)ᵀ g               one matmul
        wider patches:
            y  = conv_lax(x, W)             XLA's own convolution
            dW[p, q] = X_pqᵀ g              kh·kw matmuls [c, n·oh·ow] × [n·oh·ow, f]
        dx = conv_lax's own input gradient (a transposed convolution of g with W)

    Measured here (batch 200, 3×3 SAME, jax 0.10.2 CPU, ms): forward of a 1-channel 28×28
    input to 16 filters 5.6 through XLA vs 1.9-2.6 by im2col (to 32 filters about even);
    kernel gradient of a 1-channel input to 32 filters 14.8 (XLA) vs 4.9 (im2col) vs 14.3
    (per-offset matmuls); with 16 channels to 16 filters at 14×14: 6.4 (XLA) vs 4.8 (im2col)
    vs 4.0 (per-offset); 32 channels to 64 filters at 14×14: 77 (XLA) vs 77 (im2col) vs 32
    (per-offset). XLA's own forward stayed fastest for the wider patches (1.9 and 19 ms vs
    6-7 and 45-57 by im2col).

    ``jax.custom_vjp`` supports reverse mode (``grad``/``vjp``) and ``vmap`` only: forward
    mode (``jvp``, ``jacfwd``) through this function raises; use :func:`conv_lax` there.
    """
    return _conv_forward(x, kernel, strides, padding)


def _conv_forward(x, kernel, strides, padding):
    kh, kw, c, f = kernel.shape
    if kh * kw * c > IM2COL_MAX_PATCH:
        return conv_lax(x, kernel, strides, padding)
    out_hw = conv_output_hw(x.shape[1:3], (kh, kw), tuple(strides), padding)
    patches = im2col(x, (kh, kw), strides, padding, out_hw)
    y = jnp.matmul(patches.reshape(-1, kh * kw * c), kernel.reshape(kh * kw * c, f))
    return y.reshape(x.shape[0], *out_hw, f)


def _conv_fwd(x, kernel, strides, padding):
    return _conv_forward(x, kernel, strides, padding), (x, kernel)


def conv_kernel_grad(x: jax.Array, g: jax.Array, kernel_size, strides, padding: str):
    """dW [kh, kw, c, f] of ``y = x ⋆ W`` for the output gradient g [n, oh, ow, f]:

        dW[p, q, c, f] = Σ_{n,i,j} x̃[n, s_h i + p, s_w j + q, c] · g[n, i, j, f]

    (x̃ = x zero-padded), i.e. ``X_pqᵀ g`` for each window offset's slice X_pq: one matmul per
    offset, or one im2col matmul when kh·kw·c ≤ IM2COL_MAX_PATCH (see :func:`conv`). The Conv
    layer's custom VJP and the manual rule both use it."""
    kh, kw = kernel_size
    c, f = x.shape[-1], g.shape[-1]
    geometry = ((kh, kw), tuple(strides), padding, g.shape[1:3])
    gf = g.reshape(-1, f)
    if kh * kw * c <= IM2COL_MAX_PATCH:
        dk = jnp.matmul(im2col(x, *geometry).reshape(-1, kh * kw * c).T, gf)
    else:
        dk = jnp.stack([jnp.matmul(xs.reshape(-1, c).T, gf) for xs in window_slices(x, *geometry)])
    return dk.reshape(kh, kw, c, f)


def _conv_bwd(strides, padding, res, g):
    x, kernel = res
    _, vjp_x = jax.vjp(lambda a: conv_lax(a, kernel, strides, padding), x)
    (dx,) = vjp_x(g)  # dropped by dead-code elimination where x needs no gradient
    dk = conv_kernel_grad(x, g, kernel.shape[:2], strides, padding)
    return dx, dk.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_input_grad(g: jax.Array, kernel: jax.Array, strides, padding: str, in_hw) -> jax.Array:
    """dx of ``y = x ⋆ W``: full convolution of g (dilated by the stride) with the flipped
    kernel, in/out channels swapped, cropped to undo the forward padding.

    Full padding is k - 1 on each side; the forward padding (lo, hi) is cropped off and the r
    trailing padded rows no window reached are restored, giving pads (k-1-lo, k-1-hi+r).
    Written with ``lax.conv_general_dilated`` (lhs dilation spells out the formula), never
    ``jax.vjp``.

    Args:
        g: dLoss/dy [n, oh, ow, f].
        kernel: W [kh, kw, c, f].
        strides: (sh, sw).
        padding: "SAME" or "VALID".
        in_hw: The input's (h, w).

    Returns:
        dLoss/dx [n, h, w, c].
    """
    kernel_size, out_hw = kernel.shape[:2], g.shape[1:3]
    pads = lax.padtype_to_pads(tuple(in_hw), kernel_size, tuple(strides), padding)
    padding_t = []
    for n, k, s, (lo, hi), o in zip(in_hw, kernel_size, strides, pads, out_hw, strict=True):
        r = n + lo + hi - k - (o - 1) * s  # padded rows the last window never reaches
        padding_t.append((k - 1 - lo, k - 1 - hi + r))
    return lax.conv_general_dilated(
        g,
        kernel[::-1, ::-1],
        (1, 1),
        padding_t,
        lhs_dilation=tuple(strides),
        dimension_numbers=("NHWC", "HWOI", "NHWC"),
    )


# ----------------------------------------------------------------------------- pooling


def _pool_padding(shape, window, strides, padding: str) -> tuple:
    """lax.reduce_window padding (with zero padding on batch and channel axes)."""
    pads = lax.padtype_to_pads(shape[1:3], window, strides, padding)
    return ((0, 0), *pads, (0, 0))


def max_pool_lax(x: jax.Array, window, strides, padding: str) -> jax.Array:
    """Max pooling as one ``lax.reduce_window`` (differentiated by XLA's select-and-scatter).

    The plain formulation: the reference the custom-gradient :func:`max_pool` is tested against.
    """
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1, *window, 1),
        (1, *strides, 1),
        _pool_padding(x.shape, window, strides, padding),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: tuple, strides: tuple, padding: str) -> jax.Array:
    """Max pooling of an NHWC array (padded positions are -inf, never selected).

    Forward: ``lax.reduce_window``. Backward (a ``jax.custom_vjp``): :func:`max_pool_backward`,
    the gradient routed to each window's maximum by strided slices and selects (first maximum
    in row-major window order on ties, the same rule as XLA's select-and-scatter). XLA on CPU
    runs select-and-scatter several times slower than this slice/select form.

    ``jax.custom_vjp`` supports reverse mode (``grad``/``vjp``) and ``vmap`` only: forward
    mode (``jvp``, ``jacfwd``) through this function raises; use :func:`max_pool_lax` there.
    """
    return max_pool_lax(x, window, strides, padding)


def _max_pool_fwd(x, window, strides, padding):
    return max_pool_lax(x, window, strides, padding), x


def _max_pool_bwd(window, strides, padding, x, g):
    return (max_pool_backward(x, g, window, strides, padding),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_backward(x: jax.Array, g: jax.Array, window, strides, padding: str) -> jax.Array:
    """Route g to each window's maximum (first maximum in row-major order on ties).

    Args:
        x: Pool input [n, h, w, c].
        g: dLoss/dy [n, oh, ow, c].
        window, strides, padding: The pooling geometry.

    Returns:
        dLoss/dx [n, h, w, c].
    """
    out_hw = g.shape[1:3]
    slices = window_slices(x, window, strides, padding, out_hw, fill=-jnp.inf)
    # The winner is found by a running strict-greater scan over the window offsets instead of
    # comparing with the forward's y: under jit XLA may recompute x in another fusion with
    # different rounding, so equality with y is not reliable, and the scan also fixes ties to
    # the first maximum in row-major order and routes each window's gradient exactly once.
    best = slices[0]
    winner = jnp.zeros(g.shape, jnp.int32)
    for k, candidate in enumerate(slices[1:], start=1):
        better = candidate > best
        best = jnp.where(better, candidate, best)
        winner = jnp.where(better, k, winner)
    zero = jnp.zeros((), g.dtype)
    pieces = [
        [jnp.where(winner == p * window[1] + q, g, zero) for q in range(window[1])]
        for p in range(window[0])
    ]
    return _spread(pieces, window, strides, padding, x.shape, out_hw)


def avg_pool(x: jax.Array, window, strides, padding: str) -> jax.Array:
    """Average pooling of an NHWC array: window sum / (kh·kw), padded zeros counted."""
    total = lax.reduce_window(
        x,
        0.0,
        lax.add,
        (1, *window, 1),
        (1, *strides, 1),
        _pool_padding(x.shape, window, strides, padding),
    )
    return total / math.prod(window)


def avg_pool_backward(g: jax.Array, window, strides, padding: str, in_shape) -> jax.Array:
    """Spread g / (kh·kw) over every position of each window; padded positions are dropped."""
    share = g / math.prod(window)
    pieces = [[share] * window[1] for _ in range(window[0])]
    return _spread(pieces, window, strides, padding, in_shape, g.shape[1:3])


# ----------------------------------------------------------------------------- elementwise


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The elementwise function for a name in :data:`ACTIVATIONS`."""
    return {
        "relu": jax.nn.relu,
        "sigmoid": jax.nn.sigmoid,
        "tanh": jnp.tanh,
        "identity": lambda x: x,
    }[name]


def activation_backward(name: str, f: jax.Array, g: jax.Array) -> jax.Array:
    """dx from the layer output f: relu g·[f>0], sigmoid g·f(1-f), tanh g·(1-f²), identity g."""
    if name == "relu":
        return jnp.where(f > 0, g, jnp.zeros((), g.dtype))
    if name == "sigmoid":
        return g * f * (1 - f)
    if name == "tanh":
        return g * (1 - f * f)
    if name == "identity":
        return g
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def dropout(x: jax.Array, keep: jax.Array, rate) -> jax.Array:
    """Inverted dropout with a given keep-mask: x · keep / (1 - rate)."""
    # One scalar reciprocal, then a multiply: with a traced rate, x / (1 - rate) was rounded
    # differently vmapped and alone (XLA rewrote one of them), breaking sweep == single run.
    return jnp.where(keep, x * (1.0 / (1.0 - rate)), jnp.zeros((), x.dtype))


def dropout_backward(g: jax.Array, keep: jax.Array, rate) -> jax.Array:
    """dx = g · keep / (1 - rate) (the forward's reciprocal-then-multiply, same rounding)."""
    return dropout(g, keep, rate)


# ----------------------------------------------------------------------------- batch norm


def batch_norm(x, scale, bias, *, momentum, epsilon, train: bool, stats=None):
    """Batch norm over all axes but the last.

    Args:
        x: Input [..., f].
        scale, bias: γ [f], β [f].
        momentum: m in r ← m·r + (1 - m)·batch statistic.
        epsilon: Added to the variance.
        train: Normalise by the batch statistics (else by ``stats``).
        stats: Running ``{"mean", "var"}`` ([f] each); required when not ``train``.

    Returns:
        (y, cache, new_stats): cache = (x̂, 1/σ) for :func:`batch_norm_backward`; new_stats the
        updated running statistics in train mode (None if ``stats`` is None), else ``stats``.
    """
    axes = tuple(range(x.ndim - 1))
    if train:
        mean = jnp.mean(x, axis=axes)
        centred = x - mean
        var = jnp.mean(jnp.square(centred), axis=axes)
        new_stats = None
        if stats is not None:
            new_stats = {
                "mean": momentum * stats["mean"] + (1 - momentum) * mean,
                "var": momentum * stats["var"] + (1 - momentum) * var,
            }
    else:
        centred = x - stats["mean"]
        var = stats["var"]
        new_stats = stats
    inv = lax.rsqrt(var + epsilon)
    xhat = centred * inv
    return xhat * scale + bias, (xhat, inv), new_stats


def batch_norm_backward(g, scale, cache, *, train: bool):
    """BatchNorm rule; returns (dγ, dβ, dx)."""
    xhat, inv = cache
    axes = tuple(range(g.ndim - 1))
    dbias = jnp.sum(g, axis=axes)
    dscale = jnp.sum(g * xhat, axis=axes)
    if train:
        m = math.prod(g.shape[:-1])
        dx = (scale * inv) * (g - dbias / m - xhat * (dscale / m))
    else:
        dx = g * (scale * inv)
    return dscale, dbias, dx
