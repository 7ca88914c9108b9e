"""Manual backprop (mljax.nn.backprop) against jax.grad of the flax LayerStack, float64."""

from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from mljax.data import toy
from mljax.nn import backprop, gradcheck, kernels, losses, models
from mljax.nn import layers as layers_lib
from mljax.nn.layers import (
    Activation,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    LayerStack,
    MaxPool,
    layer_shapes,
)

TOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def _random_variables(model, x, rng):
    """Variables of the model's structure filled from a NumPy RNG.

    Shapes come from ``jax.eval_shape(model.init)``: nothing is compiled (a jitted flax init
    with threefry takes seconds to compile on CPU, far longer than the checks themselves).
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)

    def fill(path, leaf):
        name = gradcheck.leaf_name(path)
        noise = rng.normal(size=leaf.shape)
        if name.endswith("scale"):
            return jnp.asarray(1.0 + 0.3 * noise)
        if name.endswith("var"):
            return jnp.asarray(0.5 + np.abs(noise))
        fan_in = int(np.prod(leaf.shape[:-1])) if name.endswith("kernel") else 1
        return jnp.asarray(noise / np.sqrt(max(fan_in, 1)))

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _setup(layers, x_shape, loss="softmax_cross_entropy", seed=0):
    """Model, float64 variables (random, BatchNorm off its 1 / 0 defaults), input and targets."""
    rng = np.random.default_rng(seed)
    model = LayerStack(tuple(layers), param_dtype=jnp.float64)
    x = jnp.asarray(rng.normal(size=x_shape))
    variables = _random_variables(model, x, rng)
    out_shape = jax.eval_shape(lambda v: model.apply(v, x), variables).shape
    if loss == "softmax_cross_entropy":
        y = jnp.asarray(rng.integers(0, out_shape[-1], out_shape[:1]), jnp.int32)
    else:
        y = jnp.asarray(rng.uniform(size=out_shape))
    return model, variables, x, y


def _masks(layers, x_shape, seed):
    """Dropout keep-masks from NumPy (`dropout_masks` itself is tested in test_layers)."""
    rng = np.random.default_rng(seed)
    shapes = layer_shapes(layers, x_shape)
    return tuple(
        jnp.asarray(rng.uniform(size=shapes[i]) >= lay.rate) if isinstance(lay, Dropout) else None
        for i, lay in enumerate(layers)
    )


def _autodiff(model, variables, x, y, *, loss, train=False, masks=None, l1=0.0, l2=0.0, reg=0.0):
    def f(params):
        v = dict(variables, params=params)
        if train:
            z, _ = model.apply(v, x, train=True, masks=masks, mutable=["batch_stats"])
        else:
            z = model.apply(v, x)
        data = losses.get(loss)(z, y)
        penalties = losses.l2_penalty(params, l2) + losses.reg_penalty(params, reg)
        return data + penalties + losses.l1_penalty(params, l1)

    return jax.value_and_grad(f)(variables["params"])


def _manual(model, variables, x, y, **kw):
    return backprop.grads(
        model, variables["params"], x, y, batch_stats=variables.get("batch_stats"), **kw
    )


def _assert_matches(layers, x_shape, *, loss="softmax_cross_entropy", train=False, seed=0, **kw):
    model, variables, x, y = _setup(layers, x_shape, loss, seed)
    masks = _masks(model.layers, x.shape, seed + 7) if train else None
    ref_loss, ref = jax.jit(
        lambda v, x, y, m: _autodiff(model, v, x, y, loss=loss, train=train, masks=m, **kw)
    )(variables, x, y, masks)
    res = jax.jit(
        lambda v, x, y, m: _manual(model, v, x, y, loss=loss, train=train, masks=m, **kw)
    )(variables, x, y, masks)
    assert jax.tree.structure(res.grads) == jax.tree.structure(ref)
    table = gradcheck.compare_trees(res.grads, ref)
    assert table.max_rel_err <= TOL, str(table)
    np.testing.assert_allclose(res.loss, ref_loss, rtol=1e-12)
    return res, ref


# ----------------------------------------------------------------------------- per layer type

LAYER_CASES = {
    "dense_tanh": ((Dense(7), Activation("tanh"), Dense(3)), (5, 4)),
    "dense_relu": ((Dense(7), Activation("relu"), Dense(3)), (5, 4)),
    "dense_sigmoid_nobias": ((Dense(7, use_bias=False), Activation("sigmoid"), Dense(3)), (5, 4)),
    "dense_identity": ((Dense(6), Activation("identity"), Dense(3)), (4, 5)),
    "conv_same_s1": ((Conv(3, (3, 3)), Activation("tanh"), Flatten(), Dense(3)), (2, 7, 6, 2)),
    "conv_valid_s2": (
        (Conv(3, (3, 2), (2, 2), "VALID"), Activation("tanh"), Flatten(), Dense(3)),
        (2, 9, 8, 2),
    ),
    "conv_same_s12_nobias": (
        (Conv(4, (2, 3), (1, 2), "SAME", use_bias=False), Flatten(), Dense(3)),
        (2, 7, 7, 3),
    ),
    "maxpool_2x2": ((Conv(3, (3, 3)), MaxPool(), Flatten(), Dense(3)), (2, 7, 6, 2)),
    "maxpool_3x3_s2_same": (
        (Conv(3, (3, 3)), MaxPool((3, 3), (2, 2), "SAME"), Flatten(), Dense(3)),
        (2, 7, 6, 2),
    ),
    "avgpool_2x2": ((Conv(3, (3, 3)), AvgPool(), Flatten(), Dense(3)), (2, 7, 6, 2)),
    "avgpool_3x2_s1_same": (
        (Conv(3, (3, 3)), AvgPool((3, 2), (1, 1), "SAME"), Flatten(), Dense(3)),
        (2, 5, 6, 2),
    ),
    "dense_on_nhwc": ((Conv(3, (1, 1)), Dense(4), Flatten(), Dense(3)), (2, 3, 3, 2)),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_types_match_jax_grad(case):
    layers, shape = LAYER_CASES[case]
    _assert_matches(layers, shape)


TRAIN_CASES = {
    "dropout_dense": ((Dense(8), Activation("relu"), Dropout(0.4), Dense(3)), (6, 5)),
    "batchnorm_dense": (
        (Dense(6, use_bias=False), BatchNorm(), Activation("tanh"), Dense(3)),
        (7, 4),
    ),
    "batchnorm_conv_dropout": (
        (
            Conv(3, (3, 3), use_bias=False),
            BatchNorm(momentum=0.8),
            Activation("relu"),
            Dropout(0.3),
            MaxPool(),
            Flatten(),
            Dense(3),
        ),
        (3, 7, 6, 2),
    ),
}


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_dropout_and_batchnorm_train_and_eval(case, train):
    layers, shape = TRAIN_CASES[case]
    _assert_matches(layers, shape, train=train)


@pytest.mark.slow
def test_batchnorm_running_stats_match_flax():
    layers = (Dense(5, use_bias=False), BatchNorm(momentum=0.7), Activation("relu"), Dense(2))
    model, variables, x, y = _setup(layers, (9, 3))
    _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    res = _manual(model, variables, x, y, train=True)
    chex.assert_trees_all_close(res.batch_stats, updated["batch_stats"], rtol=1e-12)


LOSS_CASES = {
    "softmax_cross_entropy": (Dense(6), Activation("tanh"), Dense(4)),
    "squared_error": (Dense(6), Activation("sigmoid"), Dense(2), Activation("sigmoid")),
    "mean_squared_error": (Dense(6), Activation("tanh"), Dense(2)),
    "binary_cross_entropy": (Dense(6), Activation("relu"), Dense(3)),
}


@pytest.mark.parametrize("loss", sorted(LOSS_CASES))
def test_losses_match_jax_grad(loss):
    _assert_matches(LOSS_CASES[loss], (5, 3), loss=loss)


def test_penalties_match_jax_grad():
    """Each kernel penalty alone and all three together (λ traced: one compiled program per
    side serves every setting) give jax.grad's gradients of the penalised loss."""
    layers = (
        Conv(2, (3, 3)),
        Activation("relu"),
        Flatten(),
        Dense(6, use_bias=False),
        BatchNorm(),
        Dense(3),
    )
    model, variables, x, y = _setup(layers, (4, 5, 5, 1), "softmax_cross_entropy", 0)
    masks = _masks(model.layers, x.shape, 7)
    kw = dict(loss="softmax_cross_entropy", train=True, masks=masks)
    autodiff = jax.jit(
        chex.assert_max_traces(lambda lam: _autodiff(model, variables, x, y, **kw, **lam), n=1)
    )
    manual = jax.jit(
        chex.assert_max_traces(lambda lam: _manual(model, variables, x, y, **kw, **lam), n=1)
    )
    for l1, l2, reg in [(0.0, 0.3, 0.0), (0.0, 0.0, 0.3), (0.2, 0.0, 0.0), (0.1, 0.05, 0.02)]:
        lam = {"l1": l1, "l2": l2, "reg": reg}
        ref_loss, ref = autodiff(lam)
        res = manual(lam)
        table = gradcheck.compare_trees(res.grads, ref)
        assert table.max_rel_err <= TOL, f"{lam}: {table}"
        np.testing.assert_allclose(res.loss, ref_loss, rtol=1e-12)


@pytest.mark.slow
def test_l2_is_half_of_reg():
    """l2 = (λ/2)‖W‖² (gradient λW) and reg = λ‖W‖² (gradient 2λW): l2=2λ equals reg=λ."""
    layers = (Dense(4), Activation("tanh"), Dense(3))
    model, variables, x, y = _setup(layers, (5, 3))
    plain = _manual(model, variables, x, y)
    with_l2 = _manual(model, variables, x, y, l2=0.6)
    with_reg = _manual(model, variables, x, y, reg=0.3)
    w = variables["params"]["layer_0"]["kernel"]
    dw = with_l2.grads["layer_0"]["kernel"] - plain.grads["layer_0"]["kernel"]
    chex.assert_trees_all_close(dw, 0.6 * w, rtol=1e-12)
    chex.assert_trees_all_close(with_l2.grads, with_reg.grads, rtol=1e-13)
    np.testing.assert_allclose(with_l2.loss, with_reg.loss, rtol=1e-14)


# ----------------------------------------------------------------------------- hypothesis shapes


@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(1, 3),
    hw=st.tuples(st.integers(3, 8), st.integers(3, 8)),
    c_in=st.integers(1, 3),
    features=st.integers(1, 4),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.sampled_from(["SAME", "VALID"]),
    pool=st.sampled_from(["max", "avg", "none"]),
    pool_window=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pool_strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pool_padding=st.sampled_from(["SAME", "VALID"]),
    act=st.sampled_from(["relu", "sigmoid", "tanh", "identity"]),
    seed=st.integers(0, 2**16),
)
@pytest.mark.slow
def test_random_conv_stacks_match_jax_grad(
    n,
    hw,
    c_in,
    features,
    kernel,
    strides,
    padding,
    pool,
    pool_window,
    pool_strides,
    pool_padding,
    act,
    seed,
):
    layers = [Conv(features, kernel, strides, padding), Activation(act)]
    if pool != "none":
        cls = MaxPool if pool == "max" else AvgPool
        layers.append(cls(pool_window, pool_strides, pool_padding))
    layers += [Flatten(), Dense(3)]
    try:
        layer_shapes(layers, (n, *hw, c_in))
    except ValueError:
        return  # VALID windows larger than the input: an empty output, nothing to check
    _assert_matches(layers, (n, *hw, c_in), seed=seed)


@settings(max_examples=6, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    d_in=st.integers(1, 5),
    n=st.integers(1, 6),
    act=st.sampled_from(["relu", "sigmoid", "tanh", "identity"]),
    use_bias=st.booleans(),
    loss=st.sampled_from(sorted(LOSS_CASES)),
    seed=st.integers(0, 2**16),
)
@pytest.mark.slow
def test_random_mlps_match_jax_grad(sizes, d_in, n, act, use_bias, loss, seed):
    layers = []
    for width in sizes:
        layers += [Dense(width, use_bias=use_bias), Activation(act)]
    layers.append(Dense(2 if loss == "softmax_cross_entropy" else 3))
    _assert_matches(layers, (n, d_in), loss=loss, seed=seed)


# ----------------------------------------------------------------------------- max-pool ties


def test_maxpool_ties_route_like_jax_grad():
    """All-equal windows: the gradient goes to the first position, as select_and_scatter_add."""
    x = jnp.zeros((1, 4, 4, 1), jnp.float64).at[0, 0, 0, 0].set(0.0)
    x = x.at[0, 2:, 2:, 0].set(jnp.array([[1.0, 1.0], [0.5, 1.0]]))
    g = jnp.arange(1.0, 5.0, dtype=jnp.float64).reshape(1, 2, 2, 1)
    for geometry in (((2, 2), (2, 2), "VALID"), ((3, 3), (1, 1), "SAME")):
        # The plain reduce_window (XLA's select-and-scatter gradient), not the custom-VJP
        # max_pool, whose backward is max_pool_backward itself.
        y = kernels.max_pool_lax(x, *geometry)
        g = jnp.arange(1.0, 1.0 + y.size, dtype=jnp.float64).reshape(y.shape)
        ref = jax.jit(
            jax.grad(lambda a, gm=geometry, g=g: jnp.sum(kernels.max_pool_lax(a, *gm) * g))
        )(x)
        ours = jax.jit(kernels.max_pool_backward, static_argnums=(2, 3, 4))(x, g, *geometry)
        np.testing.assert_array_equal(ours, ref)


# ----------------------------------------------------------------------------- deltas


@pytest.mark.slow
def test_deltas_are_dloss_dpreactivation_and_input_grad():
    """Deltas equal jax.grad w.r.t. zero perturbations added to each pre-activation."""
    layers = (Dense(5), Activation("tanh"), Dense(4), Activation("sigmoid"), Dense(3))
    model, variables, x, y = _setup(layers, (6, 3))
    p = variables["params"]

    def f(eps, x):
        z0 = x @ p["layer_0"]["kernel"] + p["layer_0"]["bias"] + eps[0]
        z2 = jnp.tanh(z0) @ p["layer_2"]["kernel"] + p["layer_2"]["bias"] + eps[1]
        z4 = jax.nn.sigmoid(z2) @ p["layer_4"]["kernel"] + p["layer_4"]["bias"] + eps[2]
        return losses.softmax_cross_entropy(z4, y)

    eps = (jnp.zeros((6, 5)), jnp.zeros((6, 4)), jnp.zeros((6, 3)))
    d_eps, d_x = jax.jit(jax.grad(f, argnums=(0, 1)))(eps, x)
    res = jax.jit(lambda p, x, y: backprop.grads(model, p, x, y, input_grad=True))(p, x, y)
    for i, ref in zip((0, 2, 4), d_eps, strict=True):
        np.testing.assert_allclose(res.deltas[i], ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res.input_grad, d_x, rtol=1e-12, atol=1e-15)
    assert backprop.grads(model, p, x, y).input_grad is None


def _seed002_net():
    params = models.sigmoid_net_params(toy.SIGMOID_NET_WEIGHTS, dtype=jnp.float64)
    return models.sigmoid_net(), params


@pytest.mark.parametrize("row", range(len(toy.SIGMOID_NET_DELTA_TABLE)))
def test_seed002_delta_table(row):
    """Seed 002 Q2: a1..a4, z1..z4 and d1..d5 to the report's printed 2-3 significant digits."""
    want = toy.SIGMOID_NET_DELTA_TABLE[row]
    layers, params = _seed002_net()
    x = jnp.array([[want["x"]]])
    res = backprop.grads(
        layers, params, x, jnp.array([[want["t"]]]), loss="squared_error", input_grad=True
    )
    _, acts, _, _ = backprop.forward(layers, params, x)
    got = {
        "a1": acts[3][0, 0],
        "z1": acts[4][0, 0],
        "d1": res.deltas[2][0, 0],
        "d5": res.input_grad[0, 0],
    }
    for j, name in enumerate(("2", "3", "4")):
        got["a" + name] = acts[1][0, j]
        got["z" + name] = acts[2][0, j]
        got["d" + name] = res.deltas[0][0, j]
    for key, value in got.items():
        printed = want[key]
        if printed == 0:
            assert abs(float(value)) < 1e-12, key
            continue
        # Half a unit in the last printed significant digit (0.080 is stored as 0.08: 1 digit).
        mantissa = f"{abs(printed):e}".split("e")[0].rstrip("0").replace(".", "")
        exponent = int(f"{abs(printed):e}".split("e")[1])
        half_unit = 0.5 * 10.0 ** (exponent - max(len(mantissa), 1) + 1)
        assert abs(float(value) - printed) <= half_unit * (1 + 1e-9), (key, float(value), printed)


# ----------------------------------------------------------------------------- seed models


def _seed_models():
    return {sm.name: sm for sm in models.seed_models()}


def _smallest_input(layers, input_shape):
    """The report's input shrunk to the smallest square image (or kept for [n, d] inputs) that
    every layer accepts: the gradient identities do not depend on the image size, and float64
    conv kernels and the flatten → dense weights shrink with it."""
    if len(input_shape) != 4:
        return input_shape
    for size in range(1, input_shape[1] + 1):
        shape = (input_shape[0], size, size, input_shape[3])
        try:
            layer_shapes(layers, shape)
        except ValueError:
            continue
        return shape
    return input_shape


SLOW_SEED_MODELS = ("seed003_cnn", "seed003_cnn_v2")  # 10^5-10^6 float64 conv weights


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SEED_MODELS else n
        for n in _seed_models()
    ],
)
@pytest.mark.slow
def test_seed_model_matches_jax_grad(name):
    """Each seed model in train mode (dropout masks, batch statistics), batch of 2, on the
    smallest image it accepts, reg λ = 0.01 (seed 001's λ‖W‖²).

    A bias feeding a BatchNorm has a zero gradient (the norm removes any shift): both
    engines give rounding noise there, so those leaves are checked in absolute terms.
    """
    sm = _seed_models()[name]
    loss = "squared_error" if name == "seed002_sigmoid" else "softmax_cross_entropy"
    shape = _smallest_input(sm.layers, (2, *sm.input_shape[1:]))
    model, variables, x, y = _setup(sm.layers, shape, loss)
    masks = _masks(model.layers, x.shape, 3)
    _, ref = jax.jit(
        lambda v, x, y, m: _autodiff(model, v, x, y, loss=loss, train=True, masks=m, reg=0.01)
    )(variables, x, y, masks)
    res = jax.jit(
        lambda v, x, y, m: _manual(model, v, x, y, loss=loss, train=True, masks=m, reg=0.01)
    )(variables, x, y, masks)
    zero = {
        f"layer_{i}/bias"
        for i, lay in enumerate(sm.layers[:-1])
        if isinstance(lay, Dense | Conv)
        and lay.use_bias
        and isinstance(sm.layers[i + 1], BatchNorm)
    }
    table = gradcheck.compare_trees(res.grads, ref, title=name)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref))
    for row in table.rows:
        if row.name in zero:
            assert row.max_abs_err <= 1e-12 * scale, str(table)
        else:
            assert row.max_rel_err <= TOL, str(table)


# ----------------------------------------------------------------------------- jit / vmap

JV_LAYERS = (Conv(3, (3, 3), (2, 2)), Activation("relu"), MaxPool(), Flatten(), Dense(4))

# (name, layer, input shape, train): every entry of layers.RULES, both kernel-gradient paths
# of Conv, overlapping pools, dropout on and off, batch norm with batch and running stats.
RULE_CASES = [
    ("dense", Dense(3), (4, 5), False),
    ("dense_nhwc_nobias", Dense(3, use_bias=False), (2, 3, 3, 2), False),
    ("conv_im2col", Conv(3, (3, 3), (2, 1), "SAME"), (2, 6, 5, 1), False),
    ("conv_per_offset", Conv(2, (2, 3), (1, 2), "VALID", use_bias=False), (2, 6, 7, 4), False),
    ("maxpool", MaxPool((3, 3), (2, 2), "SAME"), (2, 7, 6, 2), False),
    ("avgpool", AvgPool((2, 3), (1, 2), "VALID"), (2, 5, 7, 2), False),
    ("flatten", Flatten(), (2, 3, 4, 2), False),
    ("relu", Activation("relu"), (4, 5), False),
    ("sigmoid", Activation("sigmoid"), (4, 5), False),
    ("tanh", Activation("tanh"), (4, 5), False),
    ("identity", Activation("identity"), (4, 5), False),
    ("dropout_train", Dropout(0.4), (4, 5), True),
    ("dropout_eval", Dropout(0.4), (4, 5), False),
    ("batchnorm_train", BatchNorm(0.8, 1e-3), (6, 3), True),
    ("batchnorm_eval", BatchNorm(0.8, 1e-3), (2, 3, 3, 3), False),
]


def test_rule_cases_cover_every_layer_type():
    assert {type(case[1]) for case in RULE_CASES} == set(layers_lib.RULES)


class JitTest(chex.TestCase):
    """`grads` and each layer's rule, jitted and not (float64)."""

    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))

    @chex.variants(with_jit=True, without_jit=True)
    @pytest.mark.slow
    def test_grads_match_jax_grad(self):
        model, variables, x, y = _setup(JV_LAYERS, (3, 9, 9, 2))
        grads = self.variant(lambda p, x, y, lam: backprop.grads(model, p, x, y, l2=lam))
        res = grads(variables["params"], x, y, 0.1)
        ref_loss, ref = jax.jit(
            lambda v: _autodiff(model, v, x, y, loss="softmax_cross_entropy", l2=0.1)
        )(variables)
        chex.assert_trees_all_close(res.grads, ref, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(res.loss, ref_loss, rtol=1e-13)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*RULE_CASES)
    def test_rule_backward_is_vjp_of_its_forward(self, layer, shape, train):
        """Each LayerRule's manual backward equals jax.vjp of its own forward (params and x)."""
        rng = np.random.default_rng(5)
        x = jnp.asarray(rng.normal(size=shape))
        rule = layers_lib.rule_of(layer)
        params = {
            k: jnp.asarray(1.0 + 0.3 * rng.normal(size=s))
            for k, s in rule.params(layer, shape).items()
        }
        stats = {"mean": jnp.asarray(rng.normal(size=shape[-1:])), "var": jnp.full(shape[-1:], 2.0)}
        mask = jnp.asarray(rng.uniform(size=shape) > 0.4)
        step = layers_lib.Step(train, mask, None, stats)

        def forward(p, a):
            return rule.forward(layer, p, a, step)[0]

        # The reference differentiates the plain lax forms, not the custom VJPs (whose
        # backward passes share kernels with the manual rules).
        with (
            mock.patch.object(kernels, "conv", kernels.conv_lax),
            mock.patch.object(kernels, "max_pool", kernels.max_pool_lax),
        ):
            y, vjp = jax.vjp(forward, params, x)
            g = jnp.asarray(rng.normal(size=y.shape))
            ref_params, ref_x = vjp(g)

        @self.variant
        def manual(p, a, g):
            out, cache, _ = rule.forward(layer, p, a, step)
            return rule.backward(layer, p, a, out, cache, g, step, True)

        grads, dx = manual(params, x, g)
        chex.assert_trees_all_close((grads, dx), (ref_params, ref_x), rtol=1e-11, atol=1e-13)


@pytest.mark.slow
def test_vmap_over_seeds_and_penalty():
    """vmap over stacked parameters and λ equals a loop of single calls and jax.grad."""
    model, _, x, y = _setup(JV_LAYERS, (3, 9, 9, 2))
    rng = np.random.default_rng(4)
    seeds = [_random_variables(model, x, rng)["params"] for _ in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *seeds)
    lams = jnp.array([0.0, 0.1, 0.5])
    batched = jax.jit(jax.vmap(lambda p, lam: backprop.grads(model, p, x, y, l2=lam).grads))(
        stacked, lams
    )
    for s in range(3):
        p = jax.tree.map(lambda a, s=s: a[s], stacked)
        _, ref = _autodiff(model, {"params": p}, x, y, loss="softmax_cross_entropy", l2=lams[s])
        one = jax.tree.map(lambda a, s=s: a[s], batched)
        assert gradcheck.compare_trees(one, ref).max_rel_err <= TOL


@pytest.mark.slow
def test_vmap_over_examples():
    """vmap over single examples ([1, ...] each) gives the per-example gradients."""
    model, variables, x, y = _setup(JV_LAYERS, (4, 9, 9, 2))
    per = jax.vmap(
        lambda xi, yi: backprop.grads(model, variables["params"], xi[None], yi[None]).grads
    )(x, y)
    # The batch loss is the mean of per-example losses, so its gradient is their mean.
    mean = jax.tree.map(lambda a: a.mean(0), per)
    _, ref = _autodiff(model, variables, x, y, loss="softmax_cross_entropy")
    assert gradcheck.compare_trees(mean, ref).max_rel_err <= TOL


def test_training_step_with_manual_grads_decreases_loss():
    layers = (Dense(16), Activation("tanh"), Dense(3))
    model, variables, x, y = _setup(layers, (30, 4))

    @jax.jit
    def step(p):
        r = backprop.grads(model, p, x, y)
        return jax.tree.map(lambda a, g: a - 0.5 * g, p, r.grads), r.loss

    p = variables["params"]
    first = None
    for _ in range(50):
        p, loss = step(p)
        first = loss if first is None else first
    assert float(loss) < 0.5 * float(first)


# ----------------------------------------------------------------------------- a wrong rule fails


@pytest.mark.slow
def test_transposed_dense_rule_fails_the_check(monkeypatch):
    """A dense rule with dW = (xᵀg)ᵀ (square layers keep the shapes valid) must fail."""
    layers = (Dense(4), Activation("tanh"), Dense(4), Activation("tanh"), Dense(4))
    model, variables, x, y = _setup(layers, (5, 4))
    _, ref = _autodiff(model, variables, x, y, loss="softmax_cross_entropy")
    good = backprop.grads(model, variables["params"], x, y)
    assert gradcheck.compare_trees(good.grads, ref).passed(TOL)

    right = layers_lib.RULES[Dense]

    def transposed(*args):
        grads, dx = right.backward(*args)
        return dict(grads, kernel=grads["kernel"].T), dx

    monkeypatch.setitem(layers_lib.RULES, Dense, right._replace(backward=transposed))
    bad = backprop.grads(model, variables["params"], x, y)
    table = gradcheck.compare_trees(bad.grads, ref)
    assert not table.passed(TOL)
    assert table.max_rel_err > 1e-2


@pytest.mark.slow
def test_unflipped_conv_input_rule_fails_the_check(monkeypatch):
    layers = (Conv(2, (3, 3)), Activation("tanh"), Conv(2, (3, 3)), Flatten(), Dense(3))
    model, variables, x, y = _setup(layers, (2, 5, 5, 2))
    _, ref = _autodiff(model, variables, x, y, loss="softmax_cross_entropy")
    right = kernels.conv_input_grad
    # The Conv rule calls kernels.conv_input_grad through the module attribute.
    monkeypatch.setattr(
        kernels,
        "conv_input_grad",
        lambda g, kernel, *geometry: right(g, kernel[::-1, ::-1], *geometry),
    )
    bad = backprop.grads(model, variables["params"], x, y)
    assert gradcheck.compare_trees(bad.grads, ref).max_rel_err > 1e-2


# ----------------------------------------------------------------------------- bad input

BAD = (Dense(4), Activation("relu"), Dropout(0.5), BatchNorm(), Dense(3))


def _bad_setup():
    model, variables, x, y = _setup(BAD, (5, 3))
    return model, variables, x, y


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: dict(a, loss="hinge"), "loss must be one of"),
        (lambda a: dict(a, l2=-1.0), "l2 must be"),
        (lambda a: dict(a, l1=float("nan")), "l1 must be"),
        (lambda a: dict(a, reg=-0.5), "reg must be"),
        (lambda a: dict(a, dropout_rate=1.0), "dropout_rate must be"),
        (lambda a: dict(a, y=a["y"].astype(jnp.float64)), "integer labels"),
        (lambda a: dict(a, y=a["y"][:3]), "integer labels"),
        (lambda a: dict(a, masks=None, train=True), "needs masks= or dropout_rng="),
        (lambda a: dict(a, batch_stats=None), "needs batch_stats="),
        (lambda a: dict(a, params={"layer_0": a["params"]["layer_0"]}), "has no entry"),
        (lambda a: dict(a, params={"params": a["params"]}), "variables\\['params'\\]"),
        (lambda a: dict(a, x=a["x"][:, :2]), "must have shape"),
        (lambda a: dict(a, layers=(Dense(3), "relu")), "layers\\[1\\]"),
        (lambda a: dict(a, masks=(None,), train=True), "one entry per layer"),
    ],
)
def test_bad_input_raises(mutate, match):
    model, variables, x, y = _bad_setup()
    args = dict(
        layers=model,
        params=variables["params"],
        x=x,
        y=y,
        loss="softmax_cross_entropy",
        batch_stats=variables["batch_stats"],
        train=False,
        l1=0.0,
        l2=0.0,
        reg=0.0,
        masks=None,
    )
    args = mutate(args)
    with pytest.raises(ValueError, match=match):
        backprop.grads(args.pop("layers"), args.pop("params"), args.pop("x"), args.pop("y"), **args)


def test_squared_error_target_shape():
    layers = (Dense(3), Activation("sigmoid"), Dense(1))
    model, variables, x, y = _setup(layers, (4, 2), loss="squared_error")
    flat = backprop.grads(model, variables["params"], x, y[:, 0], loss="squared_error")
    full = backprop.grads(model, variables["params"], x, y, loss="squared_error")
    np.testing.assert_allclose(flat.loss, full.loss, rtol=1e-14)
    with pytest.raises(ValueError, match="output shape"):
        backprop.grads(model, variables["params"], x, y[:2], loss="squared_error")
