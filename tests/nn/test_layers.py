"""LayerStack (flax) forward against hand-written NumPy forwards, layer by layer, float64;
the custom-VJP kernels against jax.grad of the plain lax forms."""

import chex
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mljax.nn import kernels
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
    dropout_masks,
    layer_shapes,
)


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def _params(model, x, rng):
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape)), shapes)


def _pad(x, k, s, padding, value):
    """NumPy 'SAME'/'VALID' padding of the two spatial axes, as lax computes it."""
    pads = []
    for n, kk, ss in zip(x.shape[1:3], k, s, strict=True):
        if padding == "VALID":
            pads.append((0, 0))
        else:
            out = -(-n // ss)
            total = max((out - 1) * ss + kk - n, 0)
            pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)


def _windows(xp, k, s):
    """Yield (i, j, window [n, kh, kw, c]) over the valid window positions of a padded input."""
    oh = (xp.shape[1] - k[0]) // s[0] + 1
    ow = (xp.shape[2] - k[1]) // s[1] + 1
    for i in range(oh):
        for j in range(ow):
            yield i, j, oh, ow, xp[:, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]]


def np_conv(x, w, b, layer):
    xp = _pad(x, layer.kernel_size, layer.strides, layer.padding, 0.0)
    out = None
    for i, j, oh, ow, win in _windows(xp, layer.kernel_size, layer.strides):
        if out is None:
            out = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
        out[:, i, j] = np.einsum("nhwc,hwcf->nf", win, w)
    return out + (0 if b is None else b)


def np_pool(x, layer, kind):
    fill = -np.inf if kind == "max" else 0.0
    xp = _pad(x, layer.window, layer.strides, layer.padding, fill)
    out = None
    for i, j, oh, ow, win in _windows(xp, layer.window, layer.strides):
        if out is None:
            out = np.zeros((x.shape[0], oh, ow, x.shape[-1]))
        out[:, i, j] = win.max((1, 2)) if kind == "max" else win.sum((1, 2)) / win[0, ..., 0].size
    return out


CONV_CASES = [
    Conv(3, (3, 3), (1, 1), "SAME"),
    Conv(2, (2, 3), (2, 1), "SAME", use_bias=False),
    Conv(4, (3, 2), (2, 2), "VALID"),
]


@pytest.mark.parametrize("layer", CONV_CASES, ids=str)
def test_conv_forward(layer):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)))
    model = LayerStack((layer,), param_dtype=jnp.float64)
    v = _params(model, x, rng)
    p = v["params"]["layer_0"]
    want = np_conv(np.asarray(x), np.asarray(p["kernel"]), p.get("bias"), layer)
    np.testing.assert_allclose(model.apply(v, x), want, rtol=1e-12, atol=1e-12)
    assert model.apply(v, x).shape == layer_shapes((layer,), x.shape)[-1]


POOL_CASES = [
    ("max", MaxPool()),
    ("max", MaxPool((3, 3), (2, 2), "SAME")),
    ("max", MaxPool((2, 3), (1, 2), "VALID")),
    ("avg", AvgPool()),
    ("avg", AvgPool((3, 3), (2, 1), "SAME")),
]


@pytest.mark.parametrize("kind,layer", POOL_CASES, ids=str)
def test_pool_forward(kind, layer):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 6, 3)))
    model = LayerStack((layer,))
    np.testing.assert_allclose(model.apply({}, x), np_pool(np.asarray(x), layer, kind), rtol=1e-13)


def test_dense_flatten_activations_forward():
    rng = np.random.default_rng(2)
    layers = (
        Flatten(),
        Dense(5),
        Activation("tanh"),
        Dense(4, use_bias=False),
        Activation("sigmoid"),
        Dense(3),
        Activation("relu"),
        Dense(2),
        Activation("identity"),
    )
    x = jnp.asarray(rng.normal(size=(3, 2, 2, 2)))
    model = LayerStack(layers, param_dtype=jnp.float64)
    v = _params(model, x, rng)
    p = {k: {n: np.asarray(a) for n, a in d.items()} for k, d in v["params"].items()}
    assert set(p) == {"layer_1", "layer_3", "layer_5", "layer_7"}  # layer_{index in tuple}
    assert "bias" not in p["layer_3"]
    h = np.asarray(x).reshape(3, -1)
    h = np.tanh(h @ p["layer_1"]["kernel"] + p["layer_1"]["bias"])
    h = 1 / (1 + np.exp(-(h @ p["layer_3"]["kernel"])))
    h = np.maximum(h @ p["layer_5"]["kernel"] + p["layer_5"]["bias"], 0)
    h = h @ p["layer_7"]["kernel"] + p["layer_7"]["bias"]
    np.testing.assert_allclose(model.apply(v, x), h, rtol=1e-12)


def test_batchnorm_train_and_eval_forward():
    rng = np.random.default_rng(3)
    layer = BatchNorm(momentum=0.8, epsilon=1e-3)
    x = jnp.asarray(rng.normal(size=(4, 3, 3, 2)) * 2 + 1)
    model = LayerStack((layer,), param_dtype=jnp.float64)
    v = _params(model, x, rng)
    v["batch_stats"]["layer_0"]["var"] = jnp.abs(v["batch_stats"]["layer_0"]["var"])
    g, b = (np.asarray(v["params"]["layer_0"][k]) for k in ("scale", "bias"))
    rm, rv = (np.asarray(v["batch_stats"]["layer_0"][k]) for k in ("mean", "var"))
    xn = np.asarray(x)
    mu, var = xn.mean((0, 1, 2)), xn.var((0, 1, 2))
    y, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y, (xn - mu) / np.sqrt(var + 1e-3) * g + b, rtol=1e-12)
    np.testing.assert_allclose(upd["batch_stats"]["layer_0"]["mean"], 0.8 * rm + 0.2 * mu)
    np.testing.assert_allclose(upd["batch_stats"]["layer_0"]["var"], 0.8 * rv + 0.2 * var)
    np.testing.assert_allclose(
        model.apply(v, x), (xn - rm) / np.sqrt(rv + 1e-3) * g + b, rtol=1e-12
    )


def test_dropout_masks_and_forward():
    layers = (Dense(6), Dropout(0.5), Activation("relu"), Dropout(0.0), Dense(2))
    x = jnp.ones((400, 3))
    masks = dropout_masks(jax.random.key(0), layers, x.shape)
    assert masks[0] is None and masks[2] is None and masks[3] is None and masks[4] is None
    assert masks[1].shape == (400, 6) and masks[1].dtype == jnp.bool_
    assert 0.45 < float(masks[1].mean()) < 0.55  # keep probability 1 - rate
    again = dropout_masks(jax.random.key(0), layers, x.shape)
    np.testing.assert_array_equal(masks[1], again[1])
    model = LayerStack(layers, param_dtype=jnp.float64)
    v = model.init(jax.random.key(1), x)
    k = np.asarray(v["params"]["layer_0"]["kernel"])
    h = np.asarray(x) @ k + np.asarray(v["params"]["layer_0"]["bias"])
    want_h = np.maximum(np.where(masks[1], h / 0.5, 0.0), 0)
    want = want_h @ np.asarray(v["params"]["layer_4"]["kernel"]) + np.asarray(
        v["params"]["layer_4"]["bias"]
    )
    np.testing.assert_allclose(model.apply(v, x, train=True, masks=masks), want, rtol=1e-12)
    # Without masks, train mode draws them from the "dropout" rng; eval mode ignores dropout.
    a = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})
    b = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, model.apply(v, x))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Activation("softplus"), "Activation.name"),
        (lambda: Dense(0), "Dense.features"),
        (lambda: Conv(3, padding="FULL"), "padding"),
        (lambda: Conv(3, kernel_size=(3, 0)), "kernel_size"),
        (lambda: Conv(3, strides=(1, 2, 3)), "strides"),
        (lambda: MaxPool(window=0), "window"),
        (lambda: AvgPool(padding="same!"), "padding"),
        (lambda: Dropout(1.0), "rate"),
        (lambda: Dropout(-0.1), "rate"),
        (lambda: BatchNorm(momentum=1.0), "momentum"),
        (lambda: BatchNorm(epsilon=0.0), "epsilon"),
        (lambda: layer_shapes((Dense(3), "relu"), (2, 3)), "layers\\[1\\]"),
        (lambda: layer_shapes((Conv(3, (5, 5), padding="VALID"),), (1, 3, 3, 1)), "empty"),
        (lambda: layer_shapes((MaxPool(),), (4, 3)), "rank-4"),
        (lambda: layer_shapes(Dense(3), (4, 3)), "single layer"),
    ],
)
def test_bad_specs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_strides_default_to_window_and_shapes():
    assert MaxPool((3, 2)).strides == (3, 2)
    assert Conv(2, 3, 2).kernel_size == (3, 3) and Conv(2, 3, 2).strides == (2, 2)
    shapes = layer_shapes(
        (Conv(4, (3, 3), (2, 2), "SAME"), MaxPool(), Flatten(), Dense(5)), (2, 9, 9, 1)
    )
    assert shapes == ((2, 9, 9, 1), (2, 5, 5, 4), (2, 2, 2, 4), (2, 16), (2, 5))


# ----------------------------------------------------------------------------- custom VJPs

# (batch, h, w, c, features, kernel, strides, padding): SAME and VALID, strides, odd sizes,
# batch 1, windows that leave trailing rows unreached.
CONV_VJP_CASES = [
    (1, 7, 5, 3, 4, (3, 3), (1, 1), "SAME"),
    (2, 9, 8, 2, 3, (3, 2), (2, 3), "VALID"),
    (3, 6, 6, 1, 2, (5, 5), (2, 2), "SAME"),
    (1, 8, 7, 4, 5, (2, 4), (3, 2), "VALID"),
    (2, 5, 5, 2, 2, (1, 1), (1, 1), "VALID"),
]


def test_conv_vjp_cases_cover_both_kernel_gradient_paths():
    widths = [case[5][0] * case[5][1] * case[3] for case in CONV_VJP_CASES]
    assert min(widths) <= kernels.IM2COL_MAX_PATCH < max(widths)


MAXPOOL_VJP_CASES = [
    ((1, 4, 4, 1), MaxPool()),
    ((2, 7, 5, 3), MaxPool()),  # odd sizes: VALID drops the last row / column
    ((2, 7, 5, 3), MaxPool((3, 3), (1, 1), "SAME")),  # overlapping windows add up
    ((1, 7, 6, 2), MaxPool((3, 2), (2, 2), "SAME")),
    ((3, 9, 8, 2), MaxPool((2, 3), (3, 2), "VALID")),
]


def _pool_args(layer):
    return layer.window, layer.strides, layer.padding


class CustomVjpTest(chex.TestCase):
    """The custom VJPs, jitted and not, against jax.grad of the plain lax forms (float64)."""

    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*CONV_VJP_CASES)
    @pytest.mark.slow
    def test_conv_matches_lax_grad(self, n, h, w, c, f, k, s, pad):
        """im2col / per-offset forward and kernel gradient and the transposed-conv input
        gradient = the lax conv and its jax.grad."""
        rng = np.random.default_rng(n + h + w + c + f)
        x = jnp.asarray(rng.normal(size=(n, h, w, c)))
        kernel = jnp.asarray(rng.normal(size=(*k, c, f)))
        y_ref = kernels.conv_lax(x, kernel, s, pad)
        g = jnp.asarray(rng.normal(size=y_ref.shape))

        def loss(fn):
            return lambda a, b: jnp.sum(fn(a, b, s, pad) * g)

        ours = self.variant(jax.grad(loss(kernels.conv), (0, 1)))(x, kernel)
        ref = jax.grad(loss(kernels.conv_lax), (0, 1))(x, kernel)
        chex.assert_trees_all_close(kernels.conv(x, kernel, s, pad), y_ref, rtol=1e-12)
        chex.assert_trees_all_close(ours, ref, rtol=1e-10, atol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*MAXPOOL_VJP_CASES)
    @pytest.mark.slow
    def test_maxpool_matches_select_and_scatter(self, shape, layer):
        rng = np.random.default_rng(shape[1] * 10 + shape[2])
        x = jnp.asarray(rng.normal(size=shape))
        y_ref = kernels.max_pool_lax(x, *_pool_args(layer))
        g = jnp.asarray(rng.normal(size=y_ref.shape))
        grad = jax.grad(lambda a: jnp.sum(kernels.max_pool(a, *_pool_args(layer)) * g))
        ours = self.variant(grad)(x)
        ref = jax.grad(lambda a: jnp.sum(kernels.max_pool_lax(a, *_pool_args(layer)) * g))(x)
        np.testing.assert_array_equal(kernels.max_pool(x, *_pool_args(layer)), y_ref)
        chex.assert_trees_all_close(ours, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_conv_custom_vjp_under_vmap():
    rng = np.random.default_rng(7)
    xs = jnp.asarray(rng.normal(size=(3, 2, 6, 5, 2)))
    ks = jnp.asarray(rng.normal(size=(3, 3, 3, 2, 4)))

    def per_model(fn):
        return jax.vmap(jax.grad(lambda a, b: jnp.sum(jnp.tanh(fn(a, b, (2, 1), "SAME"))), (0, 1)))

    chex.assert_trees_all_close(
        per_model(kernels.conv)(xs, ks), per_model(kernels.conv_lax)(xs, ks), rtol=1e-10, atol=1e-12
    )


@pytest.mark.slow
def test_maxpool_custom_vjp_ties_and_vmap():
    """Ties (ReLU zeros, equal values) go to the first maximum, as select-and-scatter."""
    x = jnp.zeros((2, 4, 6, 2)).at[:, 2:, 2:4].set(1.0).at[1, 0, 0, 1].set(-0.0)
    geometry = ((2, 2), (1, 2), "SAME")

    def grads(fn):
        weights = jnp.arange(1.0, 13.0).reshape(1, 4, 3, 1)
        return jax.vmap(jax.grad(lambda a: jnp.sum(fn(a[None], *geometry) * weights)))

    np.testing.assert_array_equal(grads(kernels.max_pool)(x), grads(kernels.max_pool_lax)(x))


def test_layerstack_conv_params_match_flax_conv():
    """LayerStack's Conv keeps flax.linen.Conv's parameter names, shapes and initial values."""
    x = jnp.ones((2, 9, 7, 3))

    class FlaxConv(flax.linen.Module):
        @flax.linen.compact
        def __call__(self, x):
            return flax.linen.Conv(4, (3, 2), (2, 1), "SAME", name="layer_0")(x)

    ours = LayerStack((Conv(4, (3, 2), (2, 1), "SAME"),)).init(jax.random.key(3), x)["params"]
    ref = FlaxConv().init(jax.random.key(3), x)["params"]
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    chex.assert_trees_all_equal(ours, ref)
    np.testing.assert_allclose(
        LayerStack((Conv(4, (3, 2), (2, 1), "SAME"),)).apply({"params": ours}, x),
        FlaxConv().apply({"params": ref}, x),
        rtol=1e-12,
    )
