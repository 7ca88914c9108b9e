"""mljax.train.tasks: loss names shared with mljax.nn.losses, the manual gradient of a task."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mljax.nn import losses
from mljax.nn.layers import Activation, BatchNorm, Dense, Dropout
from mljax.train import loop, tasks


def test_task_losses_are_the_nn_loss_names():
    for name in set(losses.LOSSES) - {"squared_error"}:
        tasks.layer_task((Dense(2),), (1, 3), loss=name)
    with pytest.raises(ValueError, match="mean_squared_error"):
        tasks.layer_task((Dense(2),), (1, 3), loss="squared_error")
    with pytest.raises(ValueError, match="loss must be one of"):
        tasks.layer_task((Dense(2),), (1, 3), loss="hinge")


def test_squared_error_per_example_sums_and_means_to_the_nn_losses():
    z = jax.random.normal(jax.random.key(0), (6, 3))
    t = jax.random.normal(jax.random.key(1), (6, 3))
    for name in ("squared_error", "mean_squared_error"):
        per = tasks.per_example_loss_fn(name)(z, t)
        chex.assert_shape(per, (6,))
        np.testing.assert_allclose(per.sum(), losses.squared_error(z, t), rtol=1e-6)
        np.testing.assert_allclose(per.mean(), losses.mean_squared_error(z, t), rtol=1e-6)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mean_squared_error"])
@pytest.mark.slow
def test_manual_grad_is_jax_grad_of_the_task_loss(x64, loss):
    """manual_grad (dropout masks, batch statistics) = jax.grad of the mean per-example loss
    through task.apply with the same rng; the updated statistics agree too."""
    layers = (Dense(5), BatchNorm(), Activation("tanh"), Dropout(0.3), Dense(2))
    task = tasks.layer_task(layers, (1, 3), loss=loss, param_dtype=jnp.float64)
    params, state = task.init(jax.random.key(0))
    rng_np = np.random.default_rng(1)
    x = jnp.asarray(rng_np.normal(size=(8, 3)))
    y = (
        jnp.asarray(rng_np.integers(0, 2, 8), jnp.int32)
        if loss == "softmax_cross_entropy"
        else jnp.asarray(rng_np.normal(size=(8, 2)))
    )
    rng, hp = jax.random.key(2), loop.Hyper()

    def task_loss(p):
        out, new_state = task.apply(p, state, x, train=True, rng=rng, hparams=hp)
        return jnp.mean(task.per_example_loss(out, y)), new_state

    (ref_loss, ref_state), ref = jax.value_and_grad(task_loss, has_aux=True)(params)
    value, grads, new_state = jax.jit(task.manual_grad)(params, (x, y, None), rng, state, hp)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-12)
    chex.assert_trees_all_close(grads, ref, rtol=1e-10, atol=1e-14)
    chex.assert_trees_all_close(new_state, ref_state, rtol=1e-12)
