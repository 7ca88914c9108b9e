"""mljax.train.tasks: loss names shared with mljax.nn.losses, the manual gradient of a task."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mljax.nn import losses
from mljax.nn.layers import Activation, BatchNorm, Conv, Dense, Dropout, Flatten, MaxPool
from mljax.train import loop, sweep, tasks


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


# Softmax cross-entropy stacks whose manual rules repeat jax.grad's arithmetic exactly: the
# output gradient is rounded as autodiff rounds it, and the Dense / Conv / MaxPool / ReLU rules
# then give the same bits (BatchNorm's and Dropout's rules agree to float32 noise only).
BIT_EXACT_STACKS = {
    "mlp": ((Flatten(), Dense(16), Activation("relu"), Dense(8), Activation("relu"), Dense(5)),
            (1, 6, 6, 1)),
    "cnn": ((Conv(4), Activation("relu"), MaxPool(), Flatten(), Dense(5)), (1, 6, 6, 1)),
}  # fmt: skip


def _blocks(n, shape, seed=0):
    """Images whose class is the brightest of five pixel blocks (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape[1:]), dtype=np.float32)
    y = np.argmax(x.reshape(n, -1)[:, :25].reshape(n, 5, 5).sum(-1), -1).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("name", sorted(BIT_EXACT_STACKS))
def test_manual_grad_has_the_bits_of_jax_grad(name):
    """One float32 step: the manual gradient program (compiled alone, as training compiles
    it) returns the bits of jax.grad's gradient (the loss value to rounding: the two programs
    may sum the batch in different orders)."""
    layers, shape = BIT_EXACT_STACKS[name]
    task = tasks.layer_task(layers, shape)
    params, state = task.init(jax.random.key(0))
    x, y = _blocks(40, shape)
    batch, hp = (x, y, jnp.ones(40, bool)), loop.Hyper()
    auto = jax.jit(loop.autodiff_grad_fn(task))(params, batch, None, state, hp)
    manual = jax.jit(task.manual_grad)(params, batch, None, state, hp)
    chex.assert_trees_all_equal(manual[1], auto[1])
    np.testing.assert_allclose(manual[0], auto[0], rtol=3e-7)
    # The plain formula (softmax - onehot) / n is the same maths, other bits: the test can fail.
    _, plain = _plain_output_grad(task, params, x, y)
    assert not np.array_equal(plain, jax.jit(_autodiff_output_grad(task))(params, x, y))


def _plain_output_grad(task, params, x, y):
    z, _ = task.apply(params, {}, x, train=True, rng=None, hparams=loop.Hyper())
    return z, (jax.nn.softmax(z) - jax.nn.one_hot(y, z.shape[-1])) / z.shape[0]


def _autodiff_output_grad(task):
    def dz(params, x, y):
        z, _ = task.apply(params, {}, x, train=True, rng=None, hparams=loop.Hyper())
        mask = jnp.ones(x.shape[0], bool)
        return jax.grad(lambda z: loop.masked_mean_loss(task, z, y, mask))(z)

    return dz


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["vmap", "sequential"])
def test_manual_twin_repeats_the_autodiff_run_exactly(strategy):
    """Twins from one key (same initial parameters and batches), trained two epochs with
    momentum and an L2 penalty: identical parameters and curves, bit for bit."""
    layers, shape = BIT_EXACT_STACKS["cnn"]
    task = tasks.layer_task(layers, shape)
    x, y = _blocks(100, shape)
    data = loop.Data(x[:80], y[:80], x[80:], y[80:])
    members = sweep.grid_members(
        2, {"learning_rate": [0.3]}, base=loop.Hyper(momentum=0.9, l2=1e-3)
    )
    runs = {
        src: sweep.sweep(
            task,
            loop.TrainConfig(epochs=2, batch_size=20, optimizer="momentum", grad_source=src,
                             drop_remainder=True, eval_train=False),
            data, members, key=jax.random.key(3), quiet=True, strategy=strategy,
        )
        for src in ("autodiff", "manual")
    }  # fmt: skip
    chex.assert_trees_all_equal(runs["manual"].params, runs["autodiff"].params)
    np.testing.assert_array_equal(runs["manual"].history["val_loss"],
                                  runs["autodiff"].history["val_loss"])  # fmt: skip
