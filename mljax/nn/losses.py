"""Losses and weight penalties: the one place that defines each name.

With network outputs z [n, k] (logits unless stated) and n the batch size:

    softmax_cross_entropy(z, y)  = (1/n) Σ_i [logsumexp(z_i) - z_{i, y_i}],   y [n] integer labels
    squared_error(z, t)          = ½ Σ_{i,j} (z_ij - t_ij)²          a SUM over the batch
    mean_squared_error(z, t)     = (1/n) · ½ Σ_{i,j} (z_ij - t_ij)²  the batch MEAN of the above
    binary_cross_entropy(z, t)   = (1/n) Σ_{i,j} [softplus(z_ij) - t_ij z_ij]  (z are logits)

Penalties, over the kernels W only (biases and batch-norm scales are not penalised):

    l2_penalty(params, λ)        = (λ/2) Σ_W ‖W‖²   gradient λW    ("l2" everywhere: the
                                   training engine's ``Hyper.l2``, ``backprop.grads(l2=)``,
                                   the Playground, optax's weight decay)
    reg_penalty(params, λ)       = λ Σ_W ‖W‖²       gradient 2λW   ("reg": seed 001's
                                   regularisation, no ½; ``backprop.grads(reg=)``)
    l1_penalty(params, λ)        = λ Σ_W Σ|W|       gradient λ sign(W)

So ``l2_penalty(params, 2λ) == reg_penalty(params, λ)``.

Seed conventions: seed 001 uses mean cross-entropy + reg λ(‖W1‖² + ‖W2‖²). Seed 002 trains on
``squared_error`` (½ Σ err² summed over the samples: its gradient is the sum of per-sample
gradients) and reports ``mean_squared_error`` (the same / n). The training engine
(:mod:`mljax.train.loop`) averages per-example losses over a batch, so a task's squared-error
loss is always ``mean_squared_error``. The binary cross-entropy uses
softplus(z) - t·z = max(z, 0) - t·z + log1p(exp(-|z|)), which never overflows.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "binary_cross_entropy",
    "get",
    "kernel_leaves",
    "l1_penalty",
    "l2_penalty",
    "mean_squared_error",
    "reg_penalty",
    "softmax_cross_entropy",
    "squared_error",
]

LOSSES = ("softmax_cross_entropy", "squared_error", "mean_squared_error", "binary_cross_entropy")
"""Every loss name; :func:`get` maps each to its function (the one tuple the package uses)."""
REDUCTIONS = ("sum", "mean")


def _reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_same_shape(z, t, what: str):
    if tuple(z.shape) != tuple(t.shape):
        raise ValueError(
            f"{what}: targets must have the output's shape {tuple(z.shape)}, got {tuple(t.shape)}"
        )


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels.

    Args:
        logits: [n, k] scores.
        labels: [n] integer class labels in [0, k).

    Returns:
        Scalar (1/n) Σ_i [logsumexp(z_i) - z_{i, y_i}].
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [n, k], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must be [n] = {logits.shape[:1]} integers, got shape {tuple(labels.shape)}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jnp.mean(lse - picked)


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """½ Σ (z - t)², summed over everything, batch included (seed 002's training loss).

    Args:
        outputs: [n, ...] network outputs z.
        targets: Targets t of the same shape.

    Returns:
        Scalar loss.
    """
    outputs, targets = jnp.asarray(outputs), jnp.asarray(targets)
    _check_same_shape(outputs, targets, "squared_error")
    return 0.5 * jnp.sum(jnp.square(outputs - targets))


def mean_squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """(1/n) · ½ Σ (z - t)²: :func:`squared_error` divided by the batch size n.

    Args:
        outputs: [n, ...] network outputs z.
        targets: Targets t of the same shape.

    Returns:
        Scalar loss (seed 002's reported loss; the training engine's squared error).
    """
    outputs = jnp.asarray(outputs)
    return squared_error(outputs, targets) / outputs.shape[0]


def binary_cross_entropy(
    logits: jax.Array, targets: jax.Array, *, reduction: str = "mean"
) -> jax.Array:
    """Binary cross-entropy from logits, summed over outputs, mean (or sum) over the batch.

    Args:
        logits: [n, ...] logits z (the probability is sigmoid(z)).
        targets: Targets t in [0, 1], same shape.
        reduction: "mean" divides the total by n; "sum" does not.

    Returns:
        Scalar Σ [softplus(z) - t z] (/ n), computed without overflow.
    """
    _reduction(reduction)
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    _check_same_shape(logits, targets, "binary_cross_entropy")
    per = jnp.maximum(logits, 0) - targets * logits + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    total = jnp.sum(per)
    return total if reduction == "sum" else total / logits.shape[0]


def get(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The loss function for a name in `LOSSES` (signature ``(outputs, targets) -> scalar``)."""
    table = {
        "softmax_cross_entropy": softmax_cross_entropy,
        "squared_error": squared_error,
        "mean_squared_error": mean_squared_error,
        "binary_cross_entropy": binary_cross_entropy,
    }
    if name not in table:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    return table[name]


def kernel_leaves(params) -> list[jax.Array]:
    """The weight matrices / conv kernels of a flax parameter tree (leaves named "kernel").

    Biases and batch-norm scales are not penalised (seed 001 penalises W1, W2 only).
    """
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        last = path[-1] if path else None
        key = getattr(last, "key", getattr(last, "name", None))
        if key == "kernel":
            leaves.append(leaf)
    return leaves


def _sum_scalars(terms: list[jax.Array]) -> jax.Array:
    total = terms[0] if terms else jnp.zeros(())
    for term in terms[1:]:
        total = total + term
    return total


def l2_penalty(params, lam) -> jax.Array:
    """(λ/2) Σ_W ‖W‖² over the kernels: its gradient is λW (module docstring)."""
    return 0.5 * lam * _sum_scalars([jnp.sum(jnp.square(w)) for w in kernel_leaves(params)])


def reg_penalty(params, lam) -> jax.Array:
    """λ Σ_W ‖W‖² over the kernels, with NO factor ½ (seed 001): its gradient is 2λW."""
    return lam * _sum_scalars([jnp.sum(jnp.square(w)) for w in kernel_leaves(params)])


def l1_penalty(params, lam) -> jax.Array:
    """λ Σ_W Σ|W| over the kernels: its gradient is λ sign(W) (0 at W = 0)."""
    return lam * _sum_scalars([jnp.sum(jnp.abs(w)) for w in kernel_leaves(params)])
