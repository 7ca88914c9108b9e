"""Tests of mljax.nn.models: builders, seed models, parameter counts, the seed-002 forward pass."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mljax.data import toy
from mljax.nn import kernels, models
from mljax.nn.layers import (
    Activation,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    LayerStack,
    MaxPool,
)

# ----------------------------------------------------------------------------- counts

# Closed forms: Dense d·f + f, Conv k·k·c·f + f, BatchNorm 4f (γ, β, running mean, var).
CLOSED_FORM_COUNTS = {
    # seed 000 §3.4 prints 36880 + 136 + 63 = 37079 and 208 + 3216 + 7175 = 10599.
    "seed000_nn": 2304 * 16 + 16 + 16 * 8 + 8 + 8 * 7 + 7,
    "seed000_cnn": (5 * 5 * 1 * 8 + 8) + (5 * 5 * 8 * 16 + 16) + (16 * 64 * 7 + 7),
    # Same models on 28×28×1, 10 classes: the CNN's map is 28 → 9 (pool 3) → 4 (pool 2).
    "seed000_nn_fashion": 784 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10,
    "seed000_cnn_fashion": 208 + 3216 + 4 * 4 * 16 * 10 + 10,
    "seed004_a": 784 * 10 + 10,
    "seed004_b": 784 * 128 + 128 + 128 * 10 + 10,
    "seed004_c": 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10,
    "seed004_d": (9 * 16 + 16) + (9 * 16 * 16 + 16) + (7 * 7 * 16 * 256 + 256) + 2570,
    "seed002_sigmoid": 3 + 3,
    "seed001_twolayer_toy": 4 * 10 + 10 + 10 * 3 + 3,
    "seed001_twolayer": 3072 * 100 + 100 + 100 * 10 + 10,
    # seed 003 Keras summaries (Figures 5, 8 and 11): total params as printed.
    "seed003_mlp": 244_591,
    "seed003_cnn": 380_675,
    "seed003_cnn_v2": 1_922_058,
}
REPORTED = {"seed000_nn": 37_079, "seed000_cnn": 10_599}
KERAS_TRAINABLE = {"seed003_mlp": 244_491, "seed003_cnn": 380_163, "seed003_cnn_v2": 1_920_330}
SEED_MODELS = {m.name: m for m in models.seed_models()}


def test_every_seed_model_has_a_closed_form_count():
    assert set(SEED_MODELS) == set(CLOSED_FORM_COUNTS)


@pytest.mark.parametrize("name", sorted(CLOSED_FORM_COUNTS))
def test_param_count_equals_closed_form(name):
    model = SEED_MODELS[name]
    count = models.count_params(model.layers, model.input_shape)
    assert count.total == CLOSED_FORM_COUNTS[name]
    assert count.total == count.trainable + count.non_trainable
    if name in REPORTED:
        assert count.total == REPORTED[name] == model.reported_params
    if name in KERAS_TRAINABLE:
        assert count.trainable == KERAS_TRAINABLE[name] == model.reported_trainable


def test_seed000_counts_per_layer_match_the_report():
    rows = models.param_rows(models.tfd_cnn(), models.TFD_SHAPE)
    assert [c for _, _, c in rows if c] == [208, 3216, 7175]
    rows = models.param_rows(models.tfd_nn(), models.TFD_SHAPE)
    assert [c for _, _, c in rows if c] == [36880, 136, 63]


def test_seed000_cnn_other_pool_orders():
    # (2, 3) reaches 8×8 too; (2, 2) does not (12×12), so the report's 10,599 fixes the pools.
    assert models.count_params(models.tfd_cnn(pools=(2, 3)), models.TFD_SHAPE).total == 10_599
    assert models.count_params(models.tfd_cnn(pools=(2, 2)), models.TFD_SHAPE).total != 10_599


def test_count_is_batch_independent():
    layers = models.mnist_cnn()
    assert models.count_params(layers, (1, 28, 28, 1)) == models.count_params(
        layers, (7, 28, 28, 1)
    )


def test_param_table_prints(capsys):
    rows = models.print_param_table(
        [SEED_MODELS["seed000_nn"], SEED_MODELS["seed000_cnn"], SEED_MODELS["seed003_mlp"]]
    )
    out = capsys.readouterr().out
    assert "37,079" in out and "10,599" in out and "244,491" in out
    assert [r["total"] for r in rows] == [37_079, 10_599, 244_591]


# ----------------------------------------------------------------------------- builders


def test_mlp_structure():
    layers = models.mlp(
        (5, 4), 3, activation="tanh", dropout=(0.5, 0.0), batch_norm=(False, True), flatten=True
    )
    assert layers == (
        Flatten(),
        Dense(5),
        Activation("tanh"),
        Dropout(0.5),
        Dense(4),
        BatchNorm(),
        Activation("tanh"),
        Dense(3),
    )
    after = models.mlp((4,), 2, batch_norm=True, norm_position="after", use_bias=False)
    assert after == (Dense(4, use_bias=False), Activation("relu"), BatchNorm(), Dense(2, False))


def test_cnn_structure():
    layers = models.cnn(
        [models.ConvBlock(8, 5, pool=3), models.ConvBlock(16, 5, padding="VALID", pool=2)],
        (),
        7,
    )
    assert layers == (
        Conv(8, (5, 5)),
        Activation("relu"),
        MaxPool((3, 3)),
        Conv(16, (5, 5), padding="VALID"),
        Activation("relu"),
        MaxPool((2, 2)),
        Flatten(),
        Dense(7),
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden": (4, 0), "outputs": 2}, "hidden\\[1\\]"),
        ({"hidden": (4,), "outputs": 0}, "outputs"),
        ({"hidden": (4,), "outputs": 2, "activation": "gelu"}, "activation"),
        ({"hidden": (4,), "outputs": 2, "dropout": 1.0}, "dropout"),
        ({"hidden": (4, 4), "outputs": 2, "dropout": (0.1,)}, "dropout"),
        ({"hidden": (4,), "outputs": 2, "batch_norm": (True, False)}, "batch_norm"),
        ({"hidden": (4,), "outputs": 2, "norm_position": "middle"}, "norm_position"),
        ({"hidden": 4, "outputs": 2}, "hidden"),
    ],
)
def test_mlp_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.mlp(**kwargs)


def test_cnn_rejects_bad_input():
    with pytest.raises(ValueError, match="blocks"):
        models.cnn([], (), 10)
    with pytest.raises(ValueError, match="pool_kind"):
        models.ConvBlock(8, pool_kind="median")
    with pytest.raises(ValueError, match="empty"):
        models.count_params(models.tfd_cnn(pools=(8, 8)), (1, 28, 28, 1))


# ----------------------------------------------------------------------------- forward shapes


def _out_features(layers) -> int:
    return layers[-1].features if isinstance(layers[-1], Dense) else 1


@pytest.mark.parametrize("name", sorted(SEED_MODELS))
def test_forward_shapes(name):
    # Shapes through jax.eval_shape (no compute): eval mode and train mode (dropout, BN stats).
    model = SEED_MODELS[name]
    x = jax.ShapeDtypeStruct((2, *model.input_shape[1:]), jnp.float32)
    net = models.build(model.layers)
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    y = jax.eval_shape(net.apply, variables, x)
    assert y.shape == (2, _out_features(model.layers))
    y_train, updates = jax.eval_shape(
        lambda v, x: net.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
        ),
        variables,
        x,
    )
    assert y_train.shape == y.shape
    assert jax.tree.structure(updates) == jax.tree.structure(
        {k: v for k, v in variables.items() if k == "batch_stats"}
    )


def _plain_tfd_cnn(params, x):
    """seed000_cnn_fashion written out with the plain lax convolution and pooling."""

    def conv(h, p):
        return kernels.conv_lax(h, p["kernel"], (1, 1), "SAME") + p["bias"]

    h = jax.nn.relu(conv(x, params["layer_0"]))
    h = kernels.max_pool_lax(h, (3, 3), (3, 3), "VALID")
    h = jax.nn.relu(conv(h, params["layer_3"]))
    h = kernels.max_pool_lax(h, (2, 2), (2, 2), "VALID").reshape(x.shape[0], -1)
    return h @ params["layer_7"]["kernel"] + params["layer_7"]["bias"]


class ForwardVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_forward_values(self):
        # The seed-000 CNN on Fashion-MNIST-sized input: conv, pools, flatten, dense together.
        model = SEED_MODELS["seed000_cnn_fashion"]
        x = jax.random.normal(jax.random.key(0), (2, *model.input_shape[1:]))
        net = models.build(model.layers)
        rng = np.random.default_rng(1)
        params = jax.tree.map(
            lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.3, jnp.float32),
            jax.eval_shape(net.init, jax.random.key(1), x)["params"],
        )
        out = self.variant(net.apply)({"params": params}, x)
        chex.assert_shape(out, (2, 10))
        chex.assert_tree_all_finite(out)
        chex.assert_trees_all_close(out, _plain_tfd_cnn(params, x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_forward_vmapped_over_seeds_equals_loop():
    net = models.build(models.mlp((8,), 3, flatten=True))
    x = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))
    keys = jax.random.split(jax.random.key(1), 3)
    stacked = jax.vmap(net.init, in_axes=(0, None))(keys, x)
    batched = jax.jit(jax.vmap(net.apply, in_axes=(0, None)))(stacked, x)
    init, apply = jax.jit(net.init), jax.jit(net.apply)
    for i, key in enumerate(keys):
        one = apply(init(key, x), x)
        np.testing.assert_allclose(batched[i], one, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- seed 002


def _hand_forward(x: float):
    """SPEC E2's network computed from the report's equations, in NumPy float64."""
    w = toy.SIGMOID_NET_WEIGHTS
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    a5 = z5 = x
    a2, a3, a4 = w["w52"] * z5, w["w53"] * z5, w["w54"] * z5
    z2, z3, z4 = sig(a2), sig(a3), sig(a4)
    a1 = w["w21"] * z2 + w["w31"] * z3 + w["w41"] * z4
    return {"a1": a1, "a2": a2, "a3": a3, "a4": a4, "a5": a5,
            "z1": sig(a1), "z2": z2, "z3": z3, "z4": z4, "z5": z5}  # fmt: skip


# Seed 002 §2.3's forward table exactly as printed (strings keep the printed precision).
PRINTED = {
    0.0: {"a1": "-1", "a2": "0.0", "a3": "0.0", "a4": "0.0", "a5": "0.0",
          "z1": "0.269", "z2": "0.5", "z3": "0.5", "z4": "0.5", "z5": "0.0"},
    1.0: {"a1": "-3.38", "a2": "-3", "a3": "2", "a4": "-10", "a5": "1.0",
          "z1": "0.033", "z2": "0.047", "z3": "0.88", "z4": "4.5e-5", "z5": "1.0"},
}  # fmt: skip


def _half_last_digit(printed: str) -> float:
    """Half a unit in the last printed digit ("0.047" -> 5e-4, "4.5e-5" -> 5e-7)."""
    mantissa, _, exp = printed.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (-decimals + (int(exp) if exp else 0))


@pytest.mark.parametrize("row", toy.SIGMOID_NET_DELTA_TABLE, ids=["x=0", "x=1"])
def test_sigmoid_net_forward_equals_hand_computation(row):
    with jax.enable_x64(True):
        layers = models.sigmoid_net()
        params = models.sigmoid_net_params(toy.SIGMOID_NET_WEIGHTS, dtype=jnp.float64)
        net = models.build(layers, param_dtype=jnp.float64)
        x = jnp.array([[row["x"]]], jnp.float64)
        z1, state = net.apply({"params": params}, x, capture_intermediates=True)
        hidden_pre = state["intermediates"]["layer_0"]["__call__"][0][0]
        out_pre = state["intermediates"]["layer_2"]["__call__"][0][0, 0]
    hand = _hand_forward(row["x"])
    ours = {
        "a1": float(out_pre), "a2": float(hidden_pre[0]), "a3": float(hidden_pre[1]),
        "a4": float(hidden_pre[2]), "z1": float(z1[0, 0]),
        "z2": hand["z2"], "z3": hand["z3"], "z4": hand["z4"],
    }  # fmt: skip
    for key in ("a1", "a2", "a3", "a4", "z1"):
        np.testing.assert_allclose(ours[key], hand[key], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(
        jax.nn.sigmoid(hidden_pre), [hand["z2"], hand["z3"], hand["z4"]], rtol=1e-14
    )
    # ... and both agree with the report's table to its printed precision.
    ours["a5"] = ours["z5"] = row["x"]  # the input neuron is the identity
    for key, printed in PRINTED[row["x"]].items():
        assert abs(ours[key] - float(printed)) <= _half_last_digit(printed) * (1 + 1e-9), key
        assert float(printed) == pytest.approx(row.get(key, float(printed)))


def test_sigmoid_net_params_shape_and_names():
    params = models.sigmoid_net_params(toy.SIGMOID_NET_WEIGHTS)
    net = models.build(models.sigmoid_net())
    init = net.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, init)
    with pytest.raises(ValueError, match="w41"):
        models.sigmoid_net_params({"w52": 1.0})


def test_sigmoid_net_uniform_init():
    net = models.build(models.sigmoid_net(kernel_init=jax.nn.initializers.uniform(1.0)))
    params = net.init(jax.random.key(3), jnp.zeros((1, 1)))["params"]
    leaves = jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(params)])
    assert leaves.shape == (6,) and bool(jnp.all((leaves >= 0) & (leaves < 1)))
    assert isinstance(LayerStack(models.sigmoid_net()), LayerStack)
