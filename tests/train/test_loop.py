"""Training engine: optimiser steps against optax/jax.grad, schedules, strategies, early
stopping, divergence, batch-norm state, dropout keys, bad input."""

from __future__ import annotations

import dataclasses
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mljax.nn.layers import Activation, BatchNorm, Conv, Dense, Dropout, Flatten
from mljax.train import loop, tasks

X = jax.random.normal(jax.random.key(1), (40, 3))
Y = (X[:, 0] - X[:, 1] > 0).astype(jnp.int32)
DATA = loop.Data(X[:32], Y[:32], X[32:], Y[32:])
LINEAR = tasks.layer_task((Dense(2),), (1, 3))


def _tree_close(a, b, **kw):
    chex.assert_trees_all_close(a, b, **kw)


OPTAX_REFERENCE = {
    "sgd": lambda lr, m: optax.sgd(lr),
    "momentum": lambda lr, m: optax.sgd(lr, momentum=m),
    "nesterov": lambda lr, m: optax.sgd(lr, momentum=m, nesterov=True),
    "adam": lambda lr, m: optax.adam(lr, b1=m),
}


@pytest.mark.parametrize("optimizer", list(OPTAX_REFERENCE))
@pytest.mark.slow
def test_full_batch_steps_match_plain_optax_with_penalties(optimizer):
    """3 full-batch steps with L1 + L2 equal optax on jax.grad of loss + penalty."""
    lr, m, l1, l2 = 0.1, 0.8, 0.01, 0.02
    cfg = loop.TrainConfig(epochs=3, batch_size=32, optimizer=optimizer, eval_train=False)
    hp = loop.Hyper(learning_rate=lr, momentum=m, l1=l1, l2=l2)
    res = loop.train(LINEAR, cfg, DATA, hp, key=jax.random.key(3))

    params, _ = LINEAR.init(loop.split_keys(jax.random.key(3))[0])

    def objective(p):
        z = X[:32] @ p["layer_0"]["kernel"] + p["layer_0"]["bias"]
        data = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, Y[:32]))
        w = p["layer_0"]["kernel"]
        return data + l1 * jnp.sum(jnp.abs(w)) + 0.5 * l2 * jnp.sum(w * w)

    tx = OPTAX_REFERENCE[optimizer](lr, m)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jax.grad(objective)(params), state, params)
        params = optax.apply_updates(params, updates)
    _tree_close(res.params, params, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_decoupled_weight_decay_matches_optax_adamw():
    cfg = loop.TrainConfig(epochs=2, batch_size=32, optimizer="adam", eval_train=False)
    hp = loop.Hyper(learning_rate=0.05, momentum=0.9, weight_decay=0.1)
    res = loop.train(LINEAR, cfg, DATA, hp, key=jax.random.key(3))
    params, _ = LINEAR.init(loop.split_keys(jax.random.key(3))[0])
    tx = optax.adamw(0.05, b1=0.9, weight_decay=0.1, mask=loop.default_decay_mask)
    state = tx.init(params)

    def objective(p):
        z = X[:32] @ p["layer_0"]["kernel"] + p["layer_0"]["bias"]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, Y[:32]))

    for _ in range(2):
        updates, state = tx.update(jax.grad(objective)(params), state, params)
        params = optax.apply_updates(params, updates)
    _tree_close(res.params, params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "schedule, reference",
    [
        pytest.param("constant", lambda s: np.ones_like(s), marks=pytest.mark.slow),
        pytest.param("exponential", lambda s: 0.5 ** (s / 4), marks=pytest.mark.slow),
        ("step", lambda s: 0.5 ** np.floor(s / 8)),
        ("cosine", lambda s: 0.5 * (1 + np.cos(np.pi * np.minimum(s, 16) / 16))),
    ],
)
@pytest.mark.slow
def test_schedules_scale_the_base_rate(schedule, reference):
    cfg = loop.TrainConfig(
        epochs=4,
        batch_size=8,
        schedule=schedule,
        decay_rate=0.5,
        step_epochs=2,
        eval_train=False,
    )
    res = loop.train(LINEAR, cfg, DATA, loop.Hyper(learning_rate=0.2), key=jax.random.key(0))
    steps = np.arange(1, 5) * 4  # 4 steps per epoch, lr recorded after the epoch
    np.testing.assert_allclose(res.history["lr"], 0.2 * reference(steps), rtol=1e-5, atol=1e-7)


MLP = tasks.layer_task((Dense(8), BatchNorm(), Activation("relu"), Dropout(0.3), Dense(2)), (1, 3))
MLP_CFG = loop.TrainConfig(epochs=2, batch_size=8, optimizer="momentum", patience=10)


@pytest.mark.slow
def test_scan_and_python_strategies_agree():
    hp = loop.Hyper(learning_rate=0.1, l2=1e-3)
    a = loop.train(MLP, MLP_CFG, DATA, hp, key=jax.random.key(5))
    b = loop.train(
        MLP, dataclasses.replace(MLP_CFG, strategy="python"), DATA, hp, key=jax.random.key(5)
    )
    assert (a.strategy, b.strategy) == ("scan", "python")
    _tree_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    _tree_close(a.model_state, b.model_state, rtol=1e-5, atol=1e-6)
    _tree_close(a.history, b.history, rtol=1e-5, atol=1e-6)
    # Same root key, same dropout masks and data order: reproducible; other key differs.
    c = loop.train(MLP, MLP_CFG, DATA, hp, key=jax.random.key(5))
    d = loop.train(MLP, MLP_CFG, DATA, hp, key=jax.random.key(6))
    _tree_close(a.params, c.params, rtol=0, atol=0)
    assert not np.allclose(a.params["layer_0"]["kernel"], d.params["layer_0"]["kernel"])


def test_auto_strategy_picks_python_for_convolutions():
    conv = tasks.layer_task((Conv(2, (3, 3)), Flatten(), Dense(2)), (1, 5, 5, 1))
    assert loop.pick_strategy(conv, loop.TrainConfig()) == "python"
    assert loop.pick_strategy(MLP, loop.TrainConfig()) == "scan"
    assert loop.pick_strategy(conv, loop.TrainConfig(strategy="scan")) == "scan"


@pytest.mark.slow
def test_batch_norm_statistics_are_carried():
    """One full-batch step: running mean = 0.9·0 + 0.1·batch mean of the Dense output."""
    task = tasks.layer_task((Dense(4), BatchNorm(momentum=0.9), Dense(2)), (1, 3))
    cfg = loop.TrainConfig(epochs=1, batch_size=32, eval_train=False)
    res = loop.train(task, cfg, DATA, loop.Hyper(learning_rate=0.1), key=jax.random.key(2))
    p0, s0 = task.init(loop.split_keys(jax.random.key(2))[0])
    h = X[:32] @ p0["layer_0"]["kernel"] + p0["layer_0"]["bias"]
    np.testing.assert_allclose(res.model_state["layer_1"]["mean"], 0.1 * h.mean(0), rtol=1e-5)
    np.testing.assert_allclose(
        res.model_state["layer_1"]["var"], 0.9 * s0["layer_1"]["var"] + 0.1 * h.var(0), rtol=1e-4
    )


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epoch_and_params():
    """Validation labels flipped: val loss rises while training, so epoch 0 is best."""
    data = loop.Data(X[:32], Y[:32], X[:32], 1 - Y[:32])
    cfg = loop.TrainConfig(epochs=20, batch_size=8, patience=3, eval_train=False)
    res = loop.train(LINEAR, cfg, data, loop.Hyper(learning_rate=0.5), key=jax.random.key(0))
    val = np.asarray(res.history["val_loss"])
    assert int(res.best_epoch) == int(np.nanargmin(val)) == 0
    assert int(res.epochs_run) == 4  # best at 0, then 3 epochs without improvement
    assert np.all(np.isnan(val[4:])) and np.all(np.isfinite(val[:4]))
    one = loop.train(
        LINEAR,
        dataclasses.replace(cfg, epochs=1, patience=None),
        data,
        loop.Hyper(learning_rate=0.5),
        key=jax.random.key(0),
    )
    _tree_close(res.best_params, one.params, rtol=0, atol=0)


@pytest.mark.slow
def test_divergence_freezes_and_flags():
    task = tasks.layer_task(
        (Dense(8), Activation("relu"), Dense(1)), (1, 3), loss="mean_squared_error"
    )
    data = loop.Data(X[:32] * 10, jnp.ones(32) * 100.0)
    cfg = loop.TrainConfig(epochs=5, batch_size=8, monitor="train_loss")
    res = loop.train(task, cfg, data, loop.Hyper(learning_rate=100.0), key=jax.random.key(0))
    assert bool(res.diverged) and int(res.diverged_step) >= 0
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(res.params))
    assert int(res.epochs_run) < 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"schedule": "linear"}, "schedule must be one of"),
        ({"grad_source": "numeric"}, "grad_source must be one of"),
        ({"epochs": 0}, "epochs must be an int >= 1"),
        ({"batch_size": 2.0}, "batch_size must be an int"),
        ({"decay_rate": 0.0}, "decay_rate must be a finite number"),
        ({"patience": 0}, "patience"),
        ({"strategy": "pmap"}, "strategy must be one of"),
    ],
)
def test_bad_config_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loop.TrainConfig(**kwargs)


@pytest.mark.parametrize(
    "hp, match",
    [
        (loop.Hyper(learning_rate=0.0), r"learning_rate must be a finite number in \(0"),
        (loop.Hyper(learning_rate=-1.0), r"learning_rate must be a finite number in \(0"),
        (loop.Hyper(momentum=1.5), "momentum"),
        (loop.Hyper(l2=-0.1), "l2"),
        (loop.Hyper(learning_rate=float("nan")), "learning_rate"),
    ],
)
def test_bad_hyperparameters_are_value_errors(hp, match):
    with pytest.raises(ValueError, match=match):
        loop.train(LINEAR, loop.TrainConfig(batch_size=8), DATA, hp)


def test_bad_sizes_and_monitor_are_value_errors():
    with pytest.raises(ValueError, match="batch_size 64 is larger than the training set"):
        loop.train(LINEAR, loop.TrainConfig(batch_size=64), DATA)
    with pytest.raises(ValueError, match="monitor must be one of"):
        loop.train(LINEAR, loop.TrainConfig(batch_size=8, monitor="val_auc"), DATA)
    with pytest.raises(ValueError, match="full batches"):
        loop.train(LINEAR, loop.TrainConfig(batch_size=5, grad_source="manual"), DATA)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        loop.make_optimizer("lbfgs")
    with pytest.raises(ValueError, match="loss must be one of"):
        tasks.layer_task((Dense(2),), (1, 3), loss="hinge")


@pytest.mark.slow
def test_per_example_losses_match_nn_batch_losses():
    from mljax.nn import losses

    z = jax.random.normal(jax.random.key(0), (6, 3))
    y = jnp.array([0, 2, 1, 1, 0, 2])
    t = jax.random.normal(jax.random.key(1), (6, 3))
    pe = tasks.per_example_loss_fn
    np.testing.assert_allclose(
        pe("softmax_cross_entropy")(z, y).mean(), losses.softmax_cross_entropy(z, y), rtol=1e-6
    )
    np.testing.assert_allclose(
        pe("mean_squared_error")(z, t).mean(), losses.mean_squared_error(z, t), rtol=1e-6
    )
    tb = (t > 0).astype(jnp.float32)
    np.testing.assert_allclose(
        pe("binary_cross_entropy")(z, tb).mean(), losses.binary_cross_entropy(z, tb), rtol=1e-6
    )


@pytest.mark.parametrize(
    "layers, loss",
    [
        ((Dense(6), Activation("tanh"), Dropout(0.25), Dense(2)), "softmax_cross_entropy"),
        ((Dense(5), Activation("sigmoid"), Dense(1), Activation("tanh")), "mean_squared_error"),
    ],
    ids=["dropout-ce", "playground-mse"],
)
@pytest.mark.slow
def test_manual_and_autodiff_grad_sources_train_alike(layers, loss):
    """Same dropout masks, same data order: the two gradient sources give the same run."""
    task = tasks.layer_task(layers, (1, 3), loss=loss)
    y = Y if loss == "softmax_cross_entropy" else 2.0 * Y - 1.0
    data = loop.Data(X[:32], y[:32], X[32:], y[32:])
    cfg = loop.TrainConfig(
        epochs=3, batch_size=8, optimizer="nesterov", eval_train=False, strategy="python"
    )
    hp = loop.Hyper(learning_rate=0.1, l1=1e-3, l2=1e-2)
    auto = loop.train(task, cfg, data, hp, key=jax.random.key(4))
    manual = loop.train(
        task, dataclasses.replace(cfg, grad_source="manual"), data, hp, key=jax.random.key(4)
    )
    _tree_close(auto.params, manual.params, rtol=1e-5, atol=1e-6)
    _tree_close(auto.history, manual.history, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_manual_and_autodiff_gradients_agree_under_a_traced_dropout_rate(x64):
    """dropout_from_hyper: both gradient sources read the vmapped, traced Hyper.dropout_rate."""
    layers = (Dense(6), Activation("tanh"), Dropout(0.0), Dense(4), Dropout(0.0), Dense(2))
    task = tasks.layer_task(layers, (1, 3), param_dtype=jnp.float64, dropout_from_hyper=True)
    params, state = task.init(jax.random.key(0))
    x = np.asarray(X[:16], np.float64)
    batch = (x, np.asarray(Y[:16]), np.ones(16, bool))
    rng = jax.random.key(7)
    rates = jnp.asarray([0.0, 0.25, 0.5], jnp.float64)
    auto_fn, manual_fn = loop.autodiff_grad_fn(task), task.manual_grad

    @jax.jit
    @jax.vmap
    def both(rate):
        hp = loop.Hyper(dropout_rate=rate)
        return auto_fn(params, batch, rng, state, hp)[:2], manual_fn(params, batch, rng, state, hp)[
            :2
        ]

    (auto_loss, auto_g), (man_loss, man_g) = both(rates)
    np.testing.assert_allclose(auto_loss, man_loss, rtol=1e-10)
    _tree_close(auto_g, man_g, rtol=1e-8, atol=1e-12)
    # Rate 0 is the no-dropout gradient (jax.grad of the plain network); other rates differ.
    w = params

    def plain(p):
        h = jnp.tanh(x @ p["layer_0"]["kernel"] + p["layer_0"]["bias"])
        h = h @ p["layer_3"]["kernel"] + p["layer_3"]["bias"]
        z = h @ p["layer_5"]["kernel"] + p["layer_5"]["bias"]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, batch[1]))

    _tree_close(jax.tree.map(lambda a: a[0], man_g), jax.grad(plain)(w), rtol=1e-10, atol=1e-14)
    k = man_g["layer_0"]["kernel"]
    assert not np.allclose(k[1], k[0]) and not np.allclose(k[2], k[1])


@pytest.mark.slow
def test_make_train_is_pure_and_compiles_once_for_every_batch_of_members():
    """The caller owns jit(vmap(make_train(...))): one trace serves every batch of members of
    the same shapes, and each member equals loop.train with its own key and hyperparameters."""
    cfg = loop.TrainConfig(epochs=3, batch_size=8, optimizer="momentum", eval_train=False)
    train_fn = chex.assert_max_traces(loop.make_train(LINEAR, cfg), n=1)
    batched = jax.jit(jax.vmap(train_fn, in_axes=(None, 0, 0)))
    data = loop.as_data(DATA)
    results = []
    for lrs, seeds in (([0.05, 0.1], [0, 1]), ([0.2, 0.3], [2, 3])):
        hp = loop.Hyper(*(jnp.full(2, v, jnp.float32) for v in loop.Hyper()))
        hp = hp._replace(learning_rate=jnp.asarray(lrs, jnp.float32))
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
        results.append((lrs, seeds, batched(data, hp, keys)))  # second batch: no retrace
    for lrs, seeds, res in results:
        for i, (lr, seed) in enumerate(zip(lrs, seeds, strict=True)):
            alone = loop.train(
                LINEAR, cfg, DATA, loop.Hyper(learning_rate=lr), key=jax.random.key(seed)
            )
            member = jax.tree.map(lambda a, i=i: a[i], (res.params, res.history))
            chex.assert_trees_all_close(member, (alone.params, alone.history), rtol=1e-5, atol=1e-6)


def _count_train_steps(task, n):
    """``task`` whose training-mode forward pass (traced only inside the training step) may
    be traced at most ``n`` times in this process (chex.assert_max_traces)."""

    @chex.assert_max_traces(n=n)
    def forward(params, state, x, rng, hparams):
        return task.apply(params, state, x, train=True, rng=rng, hparams=hparams)

    def apply(params, state, x, *, train, rng, hparams):
        if train:
            return forward(params, state, x, rng, hparams)
        return task.apply(params, state, x, train=False, rng=rng, hparams=hparams)

    return dataclasses.replace(task, apply=apply)


@pytest.mark.slow
def test_python_loop_compiles_the_step_once_across_epochs_and_runs():
    """The Python loop traces its step once: not per epoch, nor per call with the same task,
    config and data shapes (the bounded LRU cache), whatever the hyperparameters and key."""
    task = _count_train_steps(MLP, n=1)
    cfg = dataclasses.replace(MLP_CFG, strategy="python", epochs=3)
    a = loop.train(task, cfg, DATA, loop.Hyper(learning_rate=0.1), key=jax.random.key(0))
    b = loop.train(task, cfg, DATA, loop.Hyper(learning_rate=0.2), key=jax.random.key(1))
    assert int(a.epochs_run) == int(b.epochs_run) == 3
    ref = loop.train(MLP, cfg, DATA, loop.Hyper(learning_rate=0.2), key=jax.random.key(1))
    chex.assert_trees_all_close((b.params, b.history), (ref.params, ref.history), rtol=1e-6)


@pytest.mark.parametrize("strategy", ["scan", "python"])
@pytest.mark.slow
def test_test_set_is_evaluated_every_epoch_and_never_changes_training(strategy):
    """A test set equal to the validation set gives test_* curves equal to val_*; adding it
    leaves the parameters and the other curves bit-identical (it only observes)."""
    cfg = dataclasses.replace(MLP_CFG, epochs=3, strategy=strategy)
    hp = loop.Hyper(learning_rate=0.1)
    with_test = DATA._replace(x_test=DATA.x_val, y_test=DATA.y_val)
    a = loop.train(MLP, cfg, with_test, hp, key=jax.random.key(7))
    b = loop.train(MLP, cfg, DATA, hp, key=jax.random.key(7))
    assert set(a.history) == set(b.history) | {"test_loss", "test_accuracy"}
    for k in ("loss", "accuracy"):
        np.testing.assert_array_equal(a.history[f"test_{k}"], a.history[f"val_{k}"])
    _tree_close({k: a.history[k] for k in b.history}, b.history, rtol=0, atol=0)
    _tree_close(a.params, b.params, rtol=0, atol=0)
    # The curve is the model's accuracy on the test set after each epoch: the last one
    # recomputed from the final parameters.
    out, _ = MLP.apply(
        a.params, a.model_state, X[32:], train=False, rng=None, hparams=hp.as_arrays()
    )
    acc = float(jnp.mean(jnp.argmax(out, -1) == Y[32:]))
    assert float(a.history["test_accuracy"][-1]) == pytest.approx(acc, abs=1e-6)


def test_half_a_test_set_is_a_value_error():
    with pytest.raises(ValueError, match="give both x_test and y_test"):
        loop.train(LINEAR, loop.TrainConfig(batch_size=8), DATA._replace(x_test=X[32:]))
    with pytest.raises(ValueError, match="x_test and y_test have different numbers of rows"):
        loop.train(
            LINEAR, loop.TrainConfig(batch_size=8), DATA._replace(x_test=X[32:], y_test=Y[33:])
        )
    with pytest.raises(ValueError, match="y_test must hold integer class labels"):
        loop.train(
            LINEAR,
            loop.TrainConfig(batch_size=8),
            DATA._replace(x_test=X[32:], y_test=Y[32:] + 5),
        )


def test_fixed_order_sum_is_the_sum_in_one_fixed_order():
    """Pairwise halves: odd and even lengths, 0 and 1 element, against float64 sums; a 2-D
    array is refused."""
    rng = np.random.default_rng(0)
    total = jax.jit(loop.fixed_order_sum)
    for n in (0, 1, 7, 140):
        v = rng.normal(size=n).astype(np.float32)
        np.testing.assert_allclose(float(total(v)), v.astype(np.float64).sum(), atol=1e-5)
    # Exactly ((1 + 2) + (3 + 4)) + 5 for five values: the odd one joins last.
    v = jnp.asarray([1e8, 1.0, -1e8, 1.0, 0.5], jnp.float32)
    expected = (np.float32(1e8) + np.float32(-1e8)) + (np.float32(1.0) + np.float32(1.0))
    assert float(total(v)) == float(expected + np.float32(0.5))
    with pytest.raises(ValueError, match="1-D"):
        loop.fixed_order_sum(jnp.ones((2, 2)))


def test_evaluate_is_bit_identical_whatever_the_vmapped_batch():
    """A member's loss over its own 360 points (a sweep over several datasets, as the
    Playground's) is the same bits in a vmapped batch of 16 members and of 8 (the sweep
    split over two devices or processes). With ``jnp.sum`` XLA's CPU code summed 4 of these
    8 in a batch-dependent order (the Playground's train losses came out 2e-7 apart)."""
    act = Activation("sigmoid")
    task = tasks.layer_task(
        (Dense(5), act, Dense(5), act, Dense(1), Activation("tanh")),
        (1, 7),
        loss="mean_squared_error",
    )
    params, _ = jax.jit(jax.vmap(task.init))(jax.random.split(jax.random.key(0), 16))
    x = np.random.default_rng(1).normal(size=(16, 360, 7)).astype(np.float32)
    y = np.tanh(x[..., :1] * x[..., 1:2])
    members = jax.jit(
        jax.vmap(lambda p, x, y: loop.evaluate(task, p, {}, x, y, loop.Hyper())["loss"])
    )
    whole = members(params, x, y)
    half = members(jax.tree.map(lambda a: a[:8], params), x[:8], y[:8])
    np.testing.assert_array_equal(np.asarray(whole[:8]), np.asarray(half))


def test_time_steps_projects_an_epoch_from_timed_steps():
    """32 training rows at batch 10: 4 steps per epoch (the last one padded), 8 validation rows
    evaluated; the timings fit inside a stopwatch around the call; n < 1 is refused."""
    cfg = loop.TrainConfig(epochs=1, batch_size=10, eval_train=False)
    t0 = time.perf_counter()
    timing = loop.time_steps(LINEAR, cfg, DATA, loop.Hyper(), jax.random.key(0), n=2)
    wall = time.perf_counter() - t0
    assert timing.steps_per_epoch == 4
    assert 0 < timing.compile_s + 2 * timing.step_s <= wall
    # 4 steps plus 8 evaluated images at a third of a 10-image step each.
    np.testing.assert_allclose(timing.epoch_s, timing.step_s * (4 + 8 / 30), rtol=1e-12)
    with pytest.raises(ValueError, match="n >= 1"):
        loop.time_steps(LINEAR, cfg, DATA, loop.Hyper(), jax.random.key(0), n=0)
