"""Manual backpropagation: backward rules written from their derivations, no autodiff.

One forward pass stores each layer's input a_i (``acts[i]``) and output a_{i+1}; the backward
pass walks the layers in reverse with g = dLoss/d(output of layer i) and applies:

    Dense   y = x W + b:         dW = xᵀ g,  db = Σ_rows g,  dx = g Wᵀ
    Conv    y = x ⋆ W + b:       dW[p, q, c, f] = Σ_{n,i,j} x̃[n, s·i + p, s·j + q, c] g[n, i, j, f]
                                 (x̃ = x zero-padded; the valid cross-correlation of the input with
                                 g dilated by the stride), db = Σ g,
                                 dx = full convolution of g (dilated by the stride) with the
                                 spatially flipped kernel, in/out channels swapped, then cropped to
                                 undo the forward padding
    MaxPool                      g routed to the position of the window maximum; on ties to the
                                 first maximum in row-major window order (what jax.grad's
                                 select_and_scatter_add does); overlapping windows add up
    AvgPool                      g / (kh·kw) spread over every window position (padding dropped)
    Flatten                      dx = g reshaped to the input shape
    relu / sigmoid / tanh / id   g·[f > 0],  g·f(1 - f),  g·(1 - f²),  g   (f = layer output)
    Dropout (keep mask m)        dx = g·m / (1 - rate)   (rate: the spec's, or ``dropout_rate``)
    BatchNorm (train)            x̂ = (x - μ)/σ, σ = sqrt(var + eps), m = rows reduced over:
                                 dγ = Σ g x̂,  dβ = Σ g,  dx = (γ/σ)(g - dβ/m - x̂ dγ/m)
    BatchNorm (eval)             dx = g γ / σ_running,  dγ = Σ g x̂,  dβ = Σ g

and, at the output z (n = batch size):

    softmax cross-entropy        dz = (softmax(z) - onehot(y)) / n
    squared error ½Σ(z - t)²     dz = z - t        ("squared_error"; "mean_squared_error": / n)
    binary cross-entropy         dz = (sigmoid(z) - t) / n
    λ₂‖W‖² (no ½), λ₁Σ|W|        dW += 2 λ₂ W + λ₁ sign(W)   (kernels only)

The conv rule's input gradient calls `lax.conv_general_dilated` (the forward primitive, with
lhs dilation spelling out the formula) and its kernel gradient is the sum above as matmuls over
the strided slices of the padded input (`mljax.nn.layers.conv_kernel_grad`), never `jax.grad`,
`jax.vjp` or `jax.linear_transpose`. `grads` returns a parameter-gradient tree with the structure of
``jax.grad``'s on the same flax parameters, the per-layer deltas and the loss; it is pure, so
``jax.jit`` and ``jax.vmap`` apply at the call site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mljax.nn import losses as losses_lib
from mljax.nn.layers import (
    PARAMETER_FREE,
    Activation,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool,
    apply_parameter_free,
    conv,
    conv_kernel_grad,
    dropout_masks,
    is_active_dropout,
    layer_name,
    layer_shapes,
    validate_layers,
)


class Backprop(NamedTuple):
    """Result of `grads`.

    Attributes:
        loss: Scalar data loss + penalties.
        grads: dLoss/dparams, the same tree structure as the parameters (and as ``jax.grad``).
        deltas: Tuple aligned with the layers: ``deltas[i]`` = dLoss/d(output of layer i), i.e.
            dLoss/d(pre-activation) for a Dense/Conv layer followed by an Activation. None for
            layers below the first parametrised one (unless ``input_grad=True``).
        input_grad: dLoss/dx [same shape as x] when requested, else None.
        outputs: The network output z (logits for the cross-entropies).
        batch_stats: Updated running statistics (train mode with BatchNorm), else as given.
    """

    loss: jax.Array
    grads: Any
    deltas: tuple
    input_grad: jax.Array | None
    outputs: jax.Array
    batch_stats: Any


# ----------------------------------------------------------------------------- dense


def dense_forward(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """y = x W + b on the last axis of x [..., d]; W [d, f], b [f]."""
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


# ----------------------------------------------------------------------------- conv


def _conv_geometry(layer: Conv, in_hw: Sequence[int], out_hw: Sequence[int]):
    """Per spatial axis: (pad_lo, pad_hi, r) with r the padded rows the last window never reaches."""
    pads = lax.padtype_to_pads(tuple(in_hw), layer.kernel_size, layer.strides, layer.padding)
    geometry = []
    for n, k, s, (lo, hi), o in zip(
        in_hw, layer.kernel_size, layer.strides, pads, out_hw, strict=True
    ):
        geometry.append((lo, hi, n + lo + hi - k - (o - 1) * s))
    return geometry


def conv_forward(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, layer: Conv):
    """y = x ⋆ W + b: x [n, h, w, c], W [kh, kw, c, f] -> y [n, oh, ow, f] (the forward of
    :func:`mljax.nn.layers.conv`: one im2col matmul for narrow patches, else the lax conv)."""
    y = conv(x, kernel, tuple(layer.strides), layer.padding)
    return y if bias is None else y + bias


def conv_backward_kernel(x: jax.Array, g: jax.Array, layer: Conv) -> jax.Array:
    """dW[p, q, c, f] = Σ_{n,i,j} x̃[n, s_h i + p, s_w j + q, c] · g[n, i, j, f].

    The sum written out as one matmul per window offset (p, q) over the strided slice of the
    padded input (one im2col matmul for narrow patches): :func:`mljax.nn.layers.conv_kernel_grad`,
    which the Conv layer's custom VJP also uses; both are tested against XLA's autodiff of the
    plain lax convolution.
    """
    return conv_kernel_grad(x, g, layer.kernel_size, layer.strides, layer.padding)


def conv_backward_input(g: jax.Array, kernel: jax.Array, layer: Conv, in_hw: Sequence[int]):
    """dx = full convolution of g (dilated by the stride) with the flipped kernel, cropped.

    Full padding is k - 1 on each side; the forward padding (lo, hi) is cropped off and the r
    trailing padded rows no window reached are restored, giving pads (k-1-lo, k-1-hi+r).
    """
    geometry = _conv_geometry(layer, in_hw, g.shape[1:3])
    padding = [
        (k - 1 - lo, k - 1 - hi + r)
        for k, (lo, hi, r) in zip(layer.kernel_size, geometry, strict=True)
    ]
    return lax.conv_general_dilated(
        g,
        kernel[::-1, ::-1],
        (1, 1),
        padding,
        lhs_dilation=layer.strides,
        dimension_numbers=("NHWC", "HWOI", "NHWC"),
    )


# ----------------------------------------------------------------------------- pooling


def _pool_pads(layer, in_hw):
    return lax.padtype_to_pads(tuple(in_hw), layer.window, layer.strides, layer.padding)


def _scatter_windows(pieces, layer, padded_hw, out_hw):
    """Sum window-offset pieces back into the padded input grid.

    ``pieces[p][q]`` [n, oh, ow, c] is the gradient reaching input position
    (s_h i + p, s_w j + q) from output (i, j). Non-overlapping windows (stride = window) are
    interleaved by one transpose; otherwise each piece is placed by an interior-padded lax.pad.
    """
    (kh, kw), (sh, sw) = layer.window, layer.strides
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


def _window_slice(xp, layer, p, q, out_hw):
    (sh, sw), (oh, ow) = layer.strides, out_hw
    return lax.slice(
        xp,
        (0, p, q, 0),
        (xp.shape[0], p + (oh - 1) * sh + 1, q + (ow - 1) * sw + 1, xp.shape[3]),
        (1, sh, sw, 1),
    )


def max_pool_backward(x: jax.Array, y: jax.Array, g: jax.Array, layer: MaxPool) -> jax.Array:
    """Route g to each window's maximum (first maximum in row-major order on ties).

    Args:
        x: Pool input [n, h, w, c].
        y: Pool output [n, oh, ow, c] (only its shape is used: the maxima are re-derived).
        g: dLoss/dy [n, oh, ow, c].
        layer: The MaxPool spec.

    Returns:
        dLoss/dx [n, h, w, c].
    """
    (lo_h, hi_h), (lo_w, hi_w) = _pool_pads(layer, x.shape[1:3])
    xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)), constant_values=-jnp.inf)
    out_hw = y.shape[1:3]
    # The winner is found by a running strict-greater scan over the window offsets instead of
    # comparing with the forward's y: under jit XLA may recompute x in another fusion with
    # different rounding, so equality with y is not reliable, and the scan also fixes ties to
    # the first maximum in row-major order and routes each window's gradient exactly once.
    offsets = [(p, q) for p in range(layer.window[0]) for q in range(layer.window[1])]
    best = _window_slice(xp, layer, 0, 0, out_hw)
    winner = jnp.zeros(y.shape, jnp.int32)
    for k, (p, q) in enumerate(offsets[1:], start=1):
        candidate = _window_slice(xp, layer, p, q, out_hw)
        better = candidate > best
        best = jnp.where(better, candidate, best)
        winner = jnp.where(better, k, winner)
    zero = jnp.zeros((), g.dtype)
    pieces = [
        [jnp.where(winner == p * layer.window[1] + q, g, zero) for q in range(layer.window[1])]
        for p in range(layer.window[0])
    ]
    dxp = _scatter_windows(pieces, layer, xp.shape[1:3], out_hw)
    return dxp[:, lo_h : lo_h + x.shape[1], lo_w : lo_w + x.shape[2]]


def avg_pool_backward(g: jax.Array, layer: AvgPool, in_shape: Sequence[int]) -> jax.Array:
    """Spread g / (kh·kw) over every position of each window; padded positions are dropped."""
    (lo_h, hi_h), (lo_w, hi_w) = _pool_pads(layer, in_shape[1:3])
    padded_hw = (in_shape[1] + lo_h + hi_h, in_shape[2] + lo_w + hi_w)
    share = g / math.prod(layer.window)
    pieces = [[share] * layer.window[1] for _ in range(layer.window[0])]
    dxp = _scatter_windows(pieces, layer, padded_hw, g.shape[1:3])
    return dxp[:, lo_h : lo_h + in_shape[1], lo_w : lo_w + in_shape[2]]


# ----------------------------------------------------------------------------- activations


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
    raise ValueError(f"unknown activation {name!r}")


def dropout_backward(g: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
    """dx = g · keep / (1 - rate)."""
    # Same reciprocal-then-multiply as layers.apply_dropout (identical rounding).
    return jnp.where(keep, g * (1.0 / (1.0 - rate)), jnp.zeros((), g.dtype))


# ----------------------------------------------------------------------------- batch norm


def batch_norm_forward(x, scale, bias, layer: BatchNorm, *, train: bool, stats=None):
    """Batch norm over all axes but the last.

    Returns:
        (y, cache, new_stats): cache = (x̂, 1/σ) for the backward pass; new_stats the updated
        running ``{"mean", "var"}`` in train mode (None if ``stats`` is None), else ``stats``.
    """
    axes = tuple(range(x.ndim - 1))
    if train:
        mean = jnp.mean(x, axis=axes)
        centred = x - mean
        var = jnp.mean(jnp.square(centred), axis=axes)
        new_stats = None
        if stats is not None:
            m = layer.momentum
            new_stats = {
                "mean": m * stats["mean"] + (1 - m) * mean,
                "var": m * stats["var"] + (1 - m) * var,
            }
    else:
        centred = x - stats["mean"]
        var = stats["var"]
        new_stats = stats
    inv = lax.rsqrt(var + layer.epsilon)
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


# ----------------------------------------------------------------------------- losses


def loss_and_output_grad(name: str, z: jax.Array, y: jax.Array):
    """(loss, dLoss/dz) for a loss in `mljax.nn.losses.LOSSES`; n = z.shape[0]."""
    n = z.shape[0]
    if name == "softmax_cross_entropy":
        lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
        logp = z - lse
        onehot = jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)
        loss = -jnp.sum(onehot * logp) / n
        return loss, (jnp.exp(logp) - onehot) / n
    if name in ("squared_error", "mean_squared_error"):
        err = z - y
        scale = 1.0 if name == "squared_error" else 1.0 / n
        return 0.5 * jnp.sum(err * err) * scale, err * scale
    if name == "binary_cross_entropy":
        per = jnp.maximum(z, 0) - y * z + jnp.log1p(jnp.exp(-jnp.abs(z)))
        return jnp.sum(per) / n, (jax.nn.sigmoid(z) - y) / n
    raise ValueError(f"loss must be one of {losses_lib.LOSSES}, got {name!r}")


# ----------------------------------------------------------------------------- engine


def _layers_of(model_or_layers) -> tuple[Layer, ...]:
    layers = getattr(model_or_layers, "layers", model_or_layers)
    return validate_layers(layers)


def _expected_param_shapes(layers, shapes) -> dict[str, dict[str, tuple]]:
    expected = {}
    for i, layer in enumerate(layers):
        c_in = shapes[i][-1]
        if isinstance(layer, Dense):
            leaf = {"kernel": (c_in, layer.features)}
        elif isinstance(layer, Conv):
            leaf = {"kernel": (*layer.kernel_size, c_in, layer.features)}
        elif isinstance(layer, BatchNorm):
            leaf = {"scale": (c_in,), "bias": (c_in,)}
        else:
            continue
        if isinstance(layer, Dense | Conv) and layer.use_bias:
            leaf["bias"] = (layer.features,)
        expected[layer_name(i)] = leaf
    return expected


def _check_params(params, expected, what="params") -> None:
    if not hasattr(params, "keys"):
        raise ValueError(f"{what} must be a dict of layer_i entries, got {type(params).__name__}")
    if "params" in params:
        raise ValueError(f"pass variables['params'] as {what}, not the whole variables dict")
    for name, leaves in expected.items():
        if name not in params:
            raise ValueError(f"{what} has no entry {name!r}; expected keys {sorted(expected)}")
        for key, shape in leaves.items():
            if key not in params[name] or tuple(jnp.shape(params[name][key])) != shape:
                got = jnp.shape(params[name][key]) if key in params[name] else "missing"
                raise ValueError(f"{what}[{name!r}][{key!r}] must have shape {shape}, got {got}")
    extra = set(params) - set(expected)
    if extra:
        raise ValueError(f"{what} has entries {sorted(extra)} that no layer uses")


def _prepare_targets(loss: str, y, out_shape):
    y = jnp.asarray(y)
    if loss == "softmax_cross_entropy":
        if len(out_shape) != 2:
            raise ValueError(f"softmax_cross_entropy needs [n, k] outputs, got {out_shape}")
        if y.shape != out_shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(
                f"y must be [n] = {out_shape[:1]} integer labels, got {y.dtype} {y.shape}"
            )
        return y
    if y.shape == out_shape[:-1] and out_shape[-1] == 1:
        y = y[..., None]  # [n] targets for a single-output network
    if y.shape != tuple(out_shape):
        raise ValueError(f"y must have the output shape {tuple(out_shape)}, got {y.shape}")
    return y


def _check_penalty(value, name):
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and (not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a finite value >= 0, got {value!r}")


def _check_rate(value) -> None:
    """A concrete dropout rate must lie in [0, 1); traced values pass."""
    if value is None or isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value, dtype=np.float64)  # host check: no eager device op
    if arr.ndim != 0 or not np.isfinite(arr) or not 0.0 <= float(arr) < 1.0:
        raise ValueError(f"dropout_rate must be a scalar in [0, 1), got {value!r}")


def _is_literal_zero(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def forward(
    model_or_layers,
    params,
    x: jax.Array,
    *,
    train: bool = False,
    masks: tuple | None = None,
    batch_stats=None,
    dropout_rate=None,
):
    """Pure jnp forward pass storing what the backward pass needs.

    ``dropout_rate`` (optional, may be traced) replaces every Dropout's static rate.

    Returns:
        (outputs, acts, caches, new_batch_stats): ``acts[i]`` is layer i's input and
        ``acts[i + 1]`` its output; ``caches[i]`` holds BatchNorm's (x̂, 1/σ).
    """
    layers = _layers_of(model_or_layers)
    acts = [x]
    caches: list[Any] = [None] * len(layers)
    new_stats = {} if batch_stats is not None else None
    for i, layer in enumerate(layers):
        name = layer_name(i)
        a = acts[-1]
        if isinstance(layer, Dense):
            out = dense_forward(a, params[name]["kernel"], params[name].get("bias"))
        elif isinstance(layer, Conv):
            out = conv_forward(a, params[name]["kernel"], params[name].get("bias"), layer)
        elif isinstance(layer, PARAMETER_FREE):
            out = apply_parameter_free(
                layer,
                a,
                train=train,
                mask=None if masks is None else masks[i],
                dropout_rate=dropout_rate,
            )
        elif isinstance(layer, BatchNorm):
            stats = None if batch_stats is None else batch_stats[name]
            out, caches[i], stats = batch_norm_forward(
                a, params[name]["scale"], params[name]["bias"], layer, train=train, stats=stats
            )
            if new_stats is not None:
                new_stats[name] = stats
        acts.append(out)
    return acts[-1], acts, caches, new_stats


def grads(
    model_or_layers,
    params,
    x: jax.Array,
    y: jax.Array,
    *,
    loss: str = "softmax_cross_entropy",
    l1=0.0,
    l2=0.0,
    train: bool = False,
    masks: tuple | None = None,
    dropout_rng: jax.Array | None = None,
    batch_stats=None,
    input_grad: bool = False,
    dropout_rate=None,
) -> Backprop:
    """Loss and parameter gradients of a layer stack by the manual rules (module docstring).

    Args:
        model_or_layers: A `LayerStack` (anything with ``.layers``) or a sequence of layer specs.
        params: ``variables["params"]`` of the flax model: ``{"layer_i": {...}}``.
        x: Input [n, ...].
        y: Targets: [n] integer labels for "softmax_cross_entropy", else the output's shape
            ([n] is accepted for an [n, 1] output).
        loss: One of `mljax.nn.losses.LOSSES`.
        l1: λ₁ of the L1 penalty λ₁ Σ|W| on the kernels (may be traced).
        l2: λ₂ of the L2 penalty λ₂ Σ‖W‖² on the kernels, no ½ (may be traced).
        train: Training mode: dropout on, BatchNorm on batch statistics.
        masks: Dropout keep-masks from `mljax.nn.layers.dropout_masks` (train mode); pass the
            same tuple to ``LayerStack.apply(..., masks=masks)`` to get identical masks.
        dropout_rng: Alternatively a key: masks = dropout_masks(dropout_rng, layers, x.shape).
        batch_stats: ``variables["batch_stats"]``: required in eval mode with BatchNorm; in
            train mode the updated running statistics are returned.
        input_grad: Also return dLoss/dx (and every delta down to the input).
        dropout_rate: Optional scalar in [0, 1) (may be traced) used by every Dropout layer
            instead of its static rate; masks drawn from ``dropout_rng`` then use it too.

    Returns:
        `Backprop` with loss, grads (same structure as params), deltas, input_grad, outputs
        and batch_stats.

    Raises:
        ValueError: Bad layers, loss name, shapes, params, penalties, dropout rate or missing
            masks / stats.
    """
    layers = _layers_of(model_or_layers)
    if loss not in losses_lib.LOSSES:
        raise ValueError(f"loss must be one of {losses_lib.LOSSES}, got {loss!r}")
    _check_penalty(l1, "l1")
    _check_penalty(l2, "l2")
    _check_rate(dropout_rate)
    x = jnp.asarray(x)
    shapes = layer_shapes(layers, x.shape)
    _check_params(params, _expected_param_shapes(layers, shapes))
    y = _prepare_targets(loss, y, shapes[-1])
    uses_dropout = train and any(is_active_dropout(lay, dropout_rate) for lay in layers)
    if uses_dropout and masks is None:
        if dropout_rng is None:
            raise ValueError("train=True with Dropout needs masks= or dropout_rng=")
        masks = dropout_masks(dropout_rng, layers, x.shape, dropout_rate)
    if uses_dropout and len(masks) != len(layers):
        raise ValueError(f"masks must have one entry per layer ({len(layers)}), got {len(masks)}")
    has_bn = any(isinstance(lay, BatchNorm) for lay in layers)
    if has_bn and not train and batch_stats is None:
        raise ValueError("BatchNorm in eval mode (train=False) needs batch_stats=")

    out, acts, caches, new_stats = forward(
        layers,
        params,
        x,
        train=train,
        masks=masks,
        batch_stats=batch_stats,
        dropout_rate=dropout_rate,
    )
    loss_value, g = loss_and_output_grad(loss, out, y)

    param_idx = [i for i, lay in enumerate(layers) if isinstance(lay, Dense | Conv | BatchNorm)]
    stop = 0 if input_grad or not param_idx else param_idx[0]
    deltas: list[Any] = [None] * len(layers)
    layer_grads: dict[str, dict[str, jax.Array]] = {}
    for i in range(len(layers) - 1, stop - 1, -1):
        layer, name = layers[i], layer_name(i)
        deltas[i] = g
        need_dx = i > stop or input_grad  # nothing below `stop` needs dx
        a_in, a_out = acts[i], acts[i + 1]
        if isinstance(layer, Dense):
            dw, db, g = dense_backward(a_in, params[name]["kernel"], g, need_dx)
            layer_grads[name] = {"kernel": dw, **({"bias": db} if layer.use_bias else {})}
        elif isinstance(layer, Conv):
            dw = conv_backward_kernel(a_in, g, layer)
            db = jnp.sum(g, axis=(0, 1, 2))
            layer_grads[name] = {"kernel": dw, **({"bias": db} if layer.use_bias else {})}
            if need_dx:
                g = conv_backward_input(g, params[name]["kernel"], layer, a_in.shape[1:3])
        elif isinstance(layer, MaxPool):
            g = max_pool_backward(a_in, a_out, g, layer)
        elif isinstance(layer, AvgPool):
            g = avg_pool_backward(g, layer, a_in.shape)
        elif isinstance(layer, Flatten):
            g = g.reshape(a_in.shape)
        elif isinstance(layer, Activation):
            g = activation_backward(layer.name, a_out, g)
        elif isinstance(layer, Dropout):
            if train and is_active_dropout(layer, dropout_rate):
                rate = layer.rate if dropout_rate is None else dropout_rate
                g = dropout_backward(g, masks[i], rate)
        elif isinstance(layer, BatchNorm):
            dscale, dbias, g = batch_norm_backward(g, params[name]["scale"], caches[i], train=train)
            layer_grads[name] = {"scale": dscale, "bias": dbias}

    penalty = jnp.zeros((), loss_value.dtype)
    # A literal 0 penalty adds nothing: skip its work (a traced λ always takes the full path).
    use_l1, use_l2 = not _is_literal_zero(l1), not _is_literal_zero(l2)
    for i in param_idx:
        if isinstance(layers[i], Dense | Conv) and (use_l1 or use_l2):
            name = layer_name(i)
            w = params[name]["kernel"]
            dw = layer_grads[name]["kernel"]
            if use_l2:
                penalty = penalty + l2 * jnp.sum(w * w)
                dw = dw + 2 * l2 * w
            if use_l1:
                penalty = penalty + l1 * jnp.sum(jnp.abs(w))
                dw = dw + l1 * jnp.sign(w)
            layer_grads[name]["kernel"] = dw

    grad_tree = {name: {k: layer_grads[name][k] for k in params[name]} for name in params}
    if type(params) is not dict:
        grad_tree = type(params)(grad_tree)
    return Backprop(
        loss=loss_value + penalty,
        grads=grad_tree,
        deltas=tuple(deltas),
        input_grad=g if input_grad else None,
        outputs=out,
        batch_stats=new_stats if has_bn and new_stats is not None else batch_stats,
    )
