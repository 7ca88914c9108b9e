"""Tasks from the layer vocabulary: a :class:`mljax.nn.layers.LayerStack`, a loss, metrics.

Per-example losses for the names in :data:`mljax.nn.losses.LOSSES` (defined there):

    softmax_cross_entropy   logsumexp(z) - z_y                    (y integer labels)
    mean_squared_error      ½ Σ_j (z_j - t_j)²                    (the Playground's loss with
    squared_error                                                   a tanh output and t = ±1)
    binary_cross_entropy    Σ_j softplus(z_j) - t_j z_j           (z logits)

The training engine averages them over a batch, which is ``mean_squared_error``; a task with
``loss="squared_error"`` (the batch *sum*) is therefore refused.

Metric ``accuracy``: argmax(z) = y for softmax; sign(z) = sign(t) for a ±1 target with one
output (tanh or squared-error regression on ±1 labels); (z > 0) = (t > ½) for binary
cross-entropy.

Dropout masks come from ``mljax.nn.layers.dropout_masks(rng, layers, x.shape)`` and are passed
to both the flax model and the manual engine, so "autodiff" and "manual" see the same masks.
By default the dropout rate is the layer spec's (static) and ``Hyper.dropout_rate`` must stay
0. With ``dropout_from_hyper=True`` every Dropout layer uses the member's traced
``Hyper.dropout_rate`` instead (masks keep ~ Bernoulli(1 - rate), scale 1 / (1 - rate)), in
the flax forward and in the manual engine alike, so a sweep vmaps over dropout rates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mljax.nn import backprop
from mljax.nn.layers import (
    Conv,
    Dropout,
    Layer,
    LayerStack,
    dropout_masks,
    is_active_dropout,
    validate_layers,
)
from mljax.nn.losses import LOSSES
from mljax.train.loop import Task

__all__ = ["accuracy_fn", "layer_task", "per_example_loss_fn"]


def per_example_loss_fn(loss: str):
    """``(outputs [n, ...], y) -> [n]`` for a loss name in :data:`mljax.nn.losses.LOSSES`.

    "squared_error" and "mean_squared_error" have the same per-example loss ½ Σ_j (z_j - t_j)²:
    its batch sum is the first, its batch mean the second.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "softmax_cross_entropy":
        return lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y.astype(jnp.int32))

    def reshape(z, t):
        t = jnp.reshape(t, z.shape).astype(z.dtype)
        return z.reshape(z.shape[0], -1), t.reshape(z.shape[0], -1)

    if loss in ("mean_squared_error", "squared_error"):

        def sq(z, t):
            z, t = reshape(z, t)
            return 0.5 * jnp.sum(jnp.square(z - t), axis=1)

        return sq

    def bce(z, t):
        z, t = reshape(z, t)
        return jnp.sum(jax.nn.softplus(z) - t * z, axis=1)

    return bce


def accuracy_fn(loss: str):
    """Per-example ``correct`` (0/1) for the loss's usual labels."""
    if loss == "softmax_cross_entropy":
        return lambda z, y: {"accuracy": (jnp.argmax(z, axis=-1) == y).astype(jnp.float32)}
    if loss == "binary_cross_entropy":

        def acc_bce(z, t):
            z = z.reshape(z.shape[0], -1)
            t = jnp.reshape(t, z.shape)
            return {"accuracy": jnp.mean(((z > 0) == (t > 0.5)).astype(jnp.float32), axis=1)}

        return acc_bce

    def acc_sign(z, t):
        z = z.reshape(z.shape[0], -1)
        t = jnp.reshape(t, z.shape)
        return {"accuracy": jnp.mean((jnp.sign(z) == jnp.sign(t)).astype(jnp.float32), axis=1)}

    return acc_sign


def _set_biases(params, value: float):
    def f(path, leaf):
        last = path[-1] if path else None
        name = getattr(last, "key", getattr(last, "name", None))
        return jnp.full_like(leaf, value) if name == "bias" else leaf

    return jax.tree_util.tree_map_with_path(f, params)


class _Dropout(NamedTuple):
    """Which dropout rate and masks a step uses (the same for ``apply`` and ``manual_grad``)."""

    layers: tuple[Layer, ...]
    from_hyper: bool  # every Dropout uses the traced Hyper.dropout_rate

    def rate(self, hparams, train: bool):
        return hparams.dropout_rate if (self.from_hyper and train) else None

    def masks(self, rng, x, train: bool, rate):
        # With from_hyper, a traced rate replaces the spec's: is_active_dropout only tests it
        # against None, so the marker 0.0 makes every Dropout layer active.
        marker = 0.0 if self.from_hyper else None
        if train and any(is_active_dropout(lay, marker) for lay in self.layers):
            return dropout_masks(rng, self.layers, x.shape, rate)
        return None


def _init(model, input_shape, param_dtype, bias_init, key):
    variables = model.init(key, jnp.zeros(input_shape, param_dtype))
    params = variables["params"]
    if bias_init is not None:
        params = _set_biases(params, bias_init)
    return params, variables.get("batch_stats", {})


def _apply(model, dropout: _Dropout, params, state, x, *, train, rng, hparams):
    variables = {"params": params, **({"batch_stats": state} if state else {})}
    rate = dropout.rate(hparams, train)
    kwargs = {"train": train, "masks": dropout.masks(rng, x, train, rate), "dropout_rate": rate}
    if train and state:
        out, updates = model.apply(variables, x, mutable=["batch_stats"], **kwargs)
        return out, updates["batch_stats"]
    return model.apply(variables, x, **kwargs), state


def _manual_grad(loss: str, dropout: _Dropout, params, batch, rng, state, hparams):
    x, y, _ = batch  # full batches only (checked before tracing)
    rate = dropout.rate(hparams, True)
    bp = backprop.grads(
        dropout.layers,
        params,
        x,
        y,
        loss=loss,
        train=True,
        masks=dropout.masks(rng, x, True, rate),
        batch_stats=state if state else None,
        dropout_rate=rate,
    )
    return bp.loss, bp.grads, (bp.batch_stats if state else state)


def _check_task_arguments(layers, loss: str, dropout_from_hyper: Any) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "squared_error":
        raise ValueError(
            "loss='squared_error' is the batch sum; the training engine averages over the "
            "batch, so use loss='mean_squared_error' (see mljax.nn.losses)"
        )
    if not isinstance(dropout_from_hyper, bool):
        raise ValueError(f"dropout_from_hyper must be True or False, got {dropout_from_hyper!r}")
    if dropout_from_hyper and not any(isinstance(lay, Dropout) for lay in layers):
        raise ValueError(
            "dropout_from_hyper=True needs at least one Dropout layer in layers "
            "(the traced Hyper.dropout_rate would be ignored)"
        )


def layer_task(
    layers: Sequence,
    input_shape: Sequence[int],
    *,
    loss: str = "softmax_cross_entropy",
    metrics: bool = True,
    bias_init: float | None = None,
    param_dtype=jnp.float32,
    dropout_from_hyper: bool = False,
) -> Task:
    """A :class:`~mljax.train.loop.Task` for a layer stack.

    Args:
        layers: layer specs (:mod:`mljax.nn.layers`; builders in :mod:`mljax.nn.models`).
        input_shape: one example's shape with a batch axis, e.g. ``(1, 784)`` or
            ``(1, 28, 28, 1)`` (used to initialise).
        loss: one of :data:`mljax.nn.losses.LOSSES` except ``"squared_error"`` (a batch sum;
            the engine averages, i.e. ``"mean_squared_error"``).
        metrics: add per-example ``accuracy``.
        bias_init: set every bias to this constant after init (the Playground uses 0.1).
        param_dtype: parameter dtype.
        dropout_from_hyper: every Dropout layer uses ``Hyper.dropout_rate`` (traced, so a
            sweep can vmap over it) instead of its static rate; needs a Dropout layer.

    Returns:
        A task with ``manual_grad`` from :func:`mljax.nn.backprop.grads` (same masks).

    Raises:
        ValueError: bad layers or loss; ``dropout_from_hyper`` without a Dropout layer.
    """
    layers = validate_layers(layers)
    _check_task_arguments(layers, loss, dropout_from_hyper)
    model = LayerStack(layers, param_dtype=param_dtype)
    dropout = _Dropout(layers, dropout_from_hyper)
    input_shape = tuple(int(s) for s in input_shape)
    return Task(
        init=functools.partial(_init, model, input_shape, param_dtype, bias_init),
        apply=functools.partial(_apply, model, dropout),
        per_example_loss=per_example_loss_fn(loss),
        metrics=accuracy_fn(loss) if metrics else None,
        manual_grad=functools.partial(_manual_grad, loss, dropout),
        has_conv=any(isinstance(lay, Conv) for lay in layers),
        uses_dropout_rate=dropout_from_hyper,
        input_shape=input_shape,
        integer_labels=loss == "softmax_cross_entropy",
    )
