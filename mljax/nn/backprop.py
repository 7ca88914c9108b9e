"""Manual backpropagation: backward rules written from their derivations, no autodiff.

One forward pass stores each layer's input a_i (``acts[i]``) and output a_{i+1}; the backward
pass walks the layers in reverse with g = dLoss/d(output of layer i). Each layer's forward and
backward rule is its :class:`mljax.nn.layers.LayerRule` (``layers.RULES``, one record per layer
type; the formulas are listed in :mod:`mljax.nn.kernels`). At the output z (n = batch size):

    softmax cross-entropy        dz = (softmax(z) - onehot(y)) / n
    squared error ½Σ(z - t)²     dz = z - t        ("squared_error"; "mean_squared_error": / n)
    binary cross-entropy         dz = (sigmoid(z) - t) / n

and the penalties on the kernels (named as in :mod:`mljax.nn.losses`, which defines them):

    l2:  (λ/2) Σ‖W‖²   dW += λ W          reg: λ Σ‖W‖² (no ½)   dW += 2 λ W
    l1:  λ Σ|W|         dW += λ sign(W)

The conv rule's input gradient calls ``lax.conv_general_dilated`` (the forward primitive, with
lhs dilation spelling out the formula) and its kernel gradient is a sum of matmuls over the
strided slices of the padded input (:func:`mljax.nn.kernels.conv_kernel_grad`), never
``jax.grad``, ``jax.vjp`` or ``jax.linear_transpose``. `grads` returns a parameter-gradient tree
with the structure of ``jax.grad``'s on the same flax parameters, the per-layer deltas and the
loss; it is pure, so ``jax.jit`` and ``jax.vmap`` apply at the call site.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mljax.nn import losses as losses_lib
from mljax.nn.layers import (
    BatchNorm,
    Layer,
    Step,
    check_masks,
    dropout_masks,
    is_active_dropout,
    layer_name,
    layer_shapes,
    param_shapes,
    rule_of,
    validate_layers,
)
from mljax.validation import check_scalar

__all__ = ["Backprop", "backward", "forward", "grads", "loss_and_output_grad"]


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


def loss_and_output_grad(name: str, z: jax.Array, y: jax.Array):
    """(loss, dLoss/dz) for a loss in `mljax.nn.losses.LOSSES`; n = z.shape[0]."""
    n = z.shape[0]
    if name == "softmax_cross_entropy":
        # mean of logsumexp(z) - z_y, summed as the engine's batch mean sums it
        lse = jax.nn.logsumexp(z, axis=-1)
        z_y = jnp.take_along_axis(z, y[:, None].astype(jnp.int32), axis=-1)[:, 0]
        loss = jnp.sum(lse - z_y) / n
        # (softmax - onehot) / n, rounded as jax.grad of the engine's batch mean rounds it:
        # softmax = e / s with e = exp(z - max z), and the 1/n factor applied to each term
        # (e · ((1/n) / s), minus 1/n at the label). Same value up to float32 rounding as the plain
        # formula, but the bits match the autodiff gradient, so a manual-rule run repeats
        # its jax.grad twin exactly (tests/train/test_tasks.py checks the bits).
        e = jnp.exp(z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True)))
        inv_n = jnp.asarray(1.0, z.dtype) / jnp.asarray(n, z.dtype)
        soft = e * (inv_n / jnp.sum(e, axis=-1, keepdims=True))
        label = jnp.zeros_like(z).at[jnp.arange(n), y].add(-inv_n)
        return loss, soft + label
    if name in ("squared_error", "mean_squared_error"):
        err = z - y
        scale = 1.0 if name == "squared_error" else 1.0 / n
        return 0.5 * jnp.sum(err * err) * scale, err * scale
    if name == "binary_cross_entropy":
        per = jnp.maximum(z, 0) - y * z + jnp.log1p(jnp.exp(-jnp.abs(z)))
        return jnp.sum(per) / n, (jax.nn.sigmoid(z) - y) / n
    raise ValueError(f"loss must be one of {losses_lib.LOSSES}, got {name!r}")


# ----------------------------------------------------------------------------- the engine


def _layers_of(model_or_layers) -> tuple[Layer, ...]:
    return validate_layers(getattr(model_or_layers, "layers", model_or_layers))


def _steps(layers, train, masks, dropout_rate, batch_stats) -> tuple[Step, ...]:
    return tuple(
        Step(
            train,
            None if masks is None else masks[i],
            dropout_rate,
            None if batch_stats is None else batch_stats.get(layer_name(i)),
        )
        for i in range(len(layers))
    )


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
        ``acts[i + 1]`` its output; ``caches[i]`` holds what layer i's backward rule needs
        besides those (BatchNorm's (x̂, 1/σ)); new_batch_stats is None without ``batch_stats``.
    """
    layers = _layers_of(model_or_layers)
    acts, caches = [x], []
    new_stats = {} if batch_stats is not None else None
    for i, (layer, step) in enumerate(
        zip(layers, _steps(layers, train, masks, dropout_rate, batch_stats), strict=True)
    ):
        y, cache, stats = rule_of(layer).forward(layer, params.get(layer_name(i)), acts[-1], step)
        if new_stats is not None and stats is not None:
            new_stats[layer_name(i)] = stats
        acts.append(y)
        caches.append(cache)
    return acts[-1], acts, caches, new_stats


def backward(
    model_or_layers,
    params,
    acts: Sequence[jax.Array],
    caches: Sequence[Any],
    g: jax.Array,
    *,
    train: bool = False,
    masks: tuple | None = None,
    dropout_rate=None,
    input_grad: bool = False,
):
    """Walk the layers in reverse from g = dLoss/d(output), applying each layer's rule.

    Args:
        model_or_layers: The layer specs (or a `LayerStack`).
        params: ``variables["params"]``.
        acts, caches: From :func:`forward`.
        g: dLoss/d(network output).
        train, masks, dropout_rate: As given to :func:`forward`.
        input_grad: Continue down to the input (else stop at the first parametrised layer).

    Returns:
        (layer_grads, deltas, dx): ``{"layer_i": {leaf: gradient}}`` without penalties, the
        tuple of deltas (None below the stopping layer) and dLoss/dx (None unless
        ``input_grad``).
    """
    layers = _layers_of(model_or_layers)
    steps = _steps(layers, train, masks, dropout_rate, None)
    first = next((i for i in range(len(layers)) if layer_name(i) in params), 0)
    stop = 0 if input_grad else first
    deltas: list[Any] = [None] * len(layers)
    layer_grads = {}
    for i in range(len(layers) - 1, stop - 1, -1):
        deltas[i] = g
        name, layer = layer_name(i), layers[i]
        leaves, g = rule_of(layer).backward(
            layer,
            params.get(name),
            acts[i],
            acts[i + 1],
            caches[i],
            g,
            steps[i],
            i > stop or input_grad,
        )
        if leaves:
            layer_grads[name] = leaves
    return layer_grads, tuple(deltas), g if input_grad else None


def _is_literal_zero(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def _add_penalties(layer_grads, params, *, l1, l2, reg):
    """Kernel penalties (:mod:`mljax.nn.losses`): their value and the gradients with them added.

    A literal 0 adds nothing and costs nothing; a traced λ always takes the full path.
    """
    # (λ, penalty(W) / λ, dpenalty/dW) for reg λ‖W‖², l2 (λ/2)‖W‖² and l1 λΣ|W|, in that order.
    terms = [
        (lam, value, grad)
        for lam, value, grad in (
            (reg, lambda w: jnp.sum(w * w), lambda w: 2 * reg * w),
            (l2, lambda w: 0.5 * jnp.sum(w * w), lambda w: l2 * w),
            (l1, lambda w: jnp.sum(jnp.abs(w)), lambda w: l1 * jnp.sign(w)),
        )
        if not _is_literal_zero(lam)
    ]
    penalty = 0.0
    for name, leaves in layer_grads.items():
        if "kernel" not in leaves or not terms:
            continue
        w, dw = params[name]["kernel"], leaves["kernel"]
        for lam, value, grad in terms:
            penalty, dw = penalty + lam * value(w), dw + grad(w)
        layer_grads[name] = {**leaves, "kernel": dw}
    return penalty, layer_grads


def grads(
    model_or_layers,
    params,
    x: jax.Array,
    y: jax.Array,
    *,
    loss: str = "softmax_cross_entropy",
    l1=0.0,
    l2=0.0,
    reg=0.0,
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
        l1: λ of the penalty λ Σ|W| on the kernels (may be traced).
        l2: λ of the penalty (λ/2) Σ‖W‖² on the kernels, gradient λW (may be traced).
        reg: λ of the penalty λ Σ‖W‖² on the kernels, no ½, gradient 2λW (seed 001).
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
    layers, x = _layers_of(model_or_layers), jnp.asarray(x)
    y = _check_arguments(layers, params, x, y, loss, train, batch_stats, dropout_rate, l1, l2, reg)
    masks = _masks_for(layers, x, train, masks, dropout_rng, dropout_rate)
    mode = {"train": train, "masks": masks, "dropout_rate": dropout_rate}
    out, acts, caches, new_stats = forward(layers, params, x, batch_stats=batch_stats, **mode)
    value, g = loss_and_output_grad(loss, out, y)
    layer_grads, deltas, dx = backward(
        layers, params, acts, caches, g, input_grad=input_grad, **mode
    )
    penalty, layer_grads = _add_penalties(layer_grads, params, l1=l1, l2=l2, reg=reg)
    grad_tree = {name: {k: layer_grads[name][k] for k in params[name]} for name in params}
    return Backprop(
        loss=value + penalty,
        grads=grad_tree if type(params) is dict else type(params)(grad_tree),
        deltas=deltas,
        input_grad=dx,
        outputs=out,
        batch_stats=new_stats or batch_stats,
    )


# ----------------------------------------------------------------------------- argument checks


def _check_arguments(layers, params, x, y, loss, train, batch_stats, dropout_rate, *penalties):
    """Every check of `grads` that can run before tracing; returns the prepared targets."""
    if loss not in losses_lib.LOSSES:
        raise ValueError(f"loss must be one of {losses_lib.LOSSES}, got {loss!r}")
    for name, value in zip(("l1", "l2", "reg"), penalties, strict=True):
        check_scalar(value, name, minimum=0.0)
    check_scalar(
        dropout_rate, "dropout_rate", minimum=0.0, maximum=1.0, strict_maximum=True, allow_none=True
    )
    shapes = layer_shapes(layers, x.shape)
    _check_params(params, param_shapes(layers, x.shape))
    if not train and batch_stats is None and any(isinstance(lay, BatchNorm) for lay in layers):
        raise ValueError("BatchNorm in eval mode (train=False) needs batch_stats=")
    return _prepare_targets(loss, y, shapes[-1])


def _masks_for(layers, x, train, masks, dropout_rng, dropout_rate):
    """The dropout masks to use: as given, drawn from ``dropout_rng``, or None outside training."""
    if not (train and any(is_active_dropout(lay, dropout_rate) for lay in layers)):
        return masks
    if masks is None:
        if dropout_rng is None:
            raise ValueError("train=True with Dropout needs masks= or dropout_rng=")
        masks = dropout_masks(dropout_rng, layers, x.shape, dropout_rate)
    check_masks(masks, layers)
    return masks


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
