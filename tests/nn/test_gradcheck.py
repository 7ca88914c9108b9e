"""Gradient checking (mljax.nn.gradcheck) and the seed-001 toy problem, float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mljax.data import toy
from mljax.nn import backprop, gradcheck
from mljax.nn.layers import Activation, Conv, Dense, Flatten, MaxPool


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def test_relative_error_formula():
    a, b = np.array([1.0, -2.0, 0.0]), np.array([1.0, -2.5, 0.0])
    assert gradcheck.relative_error(a, b) == pytest.approx(0.5 / 4.5)  # leaf scale
    assert gradcheck.relative_error(a, b, elementwise=True) == pytest.approx(0.5 / 4.5)
    c, d = np.array([1.0, 1e-12]), np.array([1.0, 2e-12])
    assert gradcheck.relative_error(c, d) == pytest.approx(1e-12 / 2)
    assert gradcheck.relative_error(c, d, elementwise=True) == pytest.approx(1 / 3)
    assert gradcheck.relative_error(np.zeros(3), np.zeros(3)) == 0.0


def test_numerical_grad_of_closed_form():
    w = {"a": jnp.array([0.3, -1.2, 2.0]), "b": jnp.array([[0.5, 0.1], [-0.7, 1.1]])}

    def f(p):
        return jnp.sum(jnp.sin(p["a"])) + jnp.sum(p["b"] ** 3)

    num = gradcheck.numerical_grad(f, w)
    np.testing.assert_allclose(num["a"], np.cos(w["a"]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(num["b"], 3 * w["b"] ** 2, rtol=1e-9, atol=1e-9)  # roundoff ~ε|f|/h


TWOLAYER_NAMES = {
    "layer_0/kernel": "W1",
    "layer_0/bias": "b1",
    "layer_2/kernel": "W2",
    "layer_2/bias": "b2",
}


def _twolayer():
    t = toy.twolayer_toy()
    layers = (Dense(10), Activation("relu"), Dense(3))
    params = {
        "layer_0": {"kernel": jnp.asarray(t.w1), "bias": jnp.asarray(t.b1)},
        "layer_2": {"kernel": jnp.asarray(t.w2), "bias": jnp.asarray(t.b2)},
    }
    return t, layers, params


@pytest.mark.slow
def test_seed001_toy_scores_loss_and_gradient_check():
    t, layers, params = _twolayer()
    res = backprop.grads(layers, params, t.x, t.y, reg=t.reg)
    # Scores: the report prints the correct softmax scores to 8 digits.
    np.testing.assert_allclose(jax.nn.softmax(res.outputs), t.correct_scores, atol=5e-9)
    # Loss: mean CE + reg λ(‖W1‖² + ‖W2‖²) (no ½), from the closed form in NumPy.
    h = np.maximum(t.x @ t.w1 + t.b1, 0)
    z = h @ t.w2 + t.b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    closed = -np.log(p[np.arange(5), t.y]).mean() + t.reg * ((t.w1**2).sum() + (t.w2**2).sum())
    np.testing.assert_allclose(res.loss, closed, rtol=1e-13)

    def f(prm):
        return backprop.grads(layers, prm, t.x, t.y, reg=t.reg).loss

    table = gradcheck.check_gradients(f, params, res.grads, names=TWOLAYER_NAMES)
    assert {r.name for r in table.rows} == set(TWOLAYER_NAMES.values())
    assert table.max_rel_err < 1e-8, str(table)
    assert "W1 max relative error: " in str(table)
    auto = jax.grad(
        lambda prm: (
            backprop.loss_and_output_grad(
                "softmax_cross_entropy",
                jnp.maximum(t.x @ prm["layer_0"]["kernel"] + prm["layer_0"]["bias"], 0)
                @ prm["layer_2"]["kernel"]
                + prm["layer_2"]["bias"],
                t.y,
            )[0]
            + t.reg * sum(jnp.sum(prm[k]["kernel"] ** 2) for k in prm)
        )
    )(params)
    assert gradcheck.compare_trees(res.grads, auto).max_rel_err < 1e-12


@pytest.mark.parametrize(
    "layers,shape",
    [
        ((Dense(5), Activation("tanh"), Dense(4), Activation("sigmoid"), Dense(3)), (6, 3)),
        (
            (Conv(2, (3, 3), (2, 2), "SAME"), Activation("tanh"), MaxPool(), Flatten(), Dense(3)),
            (2, 7, 6, 2),
        ),
    ],
    ids=["mlp", "cnn"],
)
@pytest.mark.slow
def test_manual_vs_finite_differences(layers, shape):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=shape))
    from mljax.nn.layers import LayerStack

    model = LayerStack(layers, param_dtype=jnp.float64)
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape)) * 0.5,
        jax.eval_shape(model.init, jax.random.key(0), x)["params"],
    )
    y = jnp.asarray(rng.integers(0, 3, shape[0]), jnp.int32)
    res = backprop.grads(layers, params, x, y, l2=0.05)
    table = gradcheck.check_gradients(
        lambda p: backprop.grads(layers, p, x, y, l2=0.05).loss, params, res.grads
    )
    assert table.max_rel_err <= 1e-7, str(table)


@pytest.mark.slow
def test_wrong_gradient_fails_the_check():
    """Seed 002's bug in spirit: the right numbers in the wrong leaves must fail."""
    t, layers, params = _twolayer()
    res = backprop.grads(layers, params, t.x, t.y, reg=t.reg)
    wrong = jax.tree.map(lambda g: g, res.grads)
    wrong["layer_0"]["kernel"] = res.grads["layer_0"]["kernel"][::-1]  # rows swapped
    wrong["layer_2"]["bias"] = 2 * res.grads["layer_2"]["bias"]

    def f(prm):
        return backprop.grads(layers, prm, t.x, t.y, reg=t.reg).loss

    table = gradcheck.check_gradients(f, params, wrong, names=TWOLAYER_NAMES)
    rows = {r.name: r.max_rel_err for r in table.rows}
    assert not table.passed(1e-7)
    assert rows["W1"] > 1e-2 and rows["b2"] > 1e-2 and rows["W2"] < 1e-8


@pytest.mark.slow
def test_sampled_entries_and_table_output():
    t, layers, params = _twolayer()
    res = backprop.grads(layers, params, t.x, t.y, reg=t.reg)
    table = gradcheck.check_gradients(
        lambda p: backprop.grads(layers, p, t.x, t.y, reg=t.reg).loss,
        params,
        res.grads,
        max_per_leaf=4,
        key=jax.random.key(1),
        title="toy",
    )
    assert [r.n_checked for r in table.rows] == [4, 4, 3, 4]  # b1, W1, b2 (3 entries), W2
    assert table.max_rel_err < 1e-8
    assert "| layer_0/kernel | 4×10 | 4 |" in table.markdown()
    assert set(table.to_dict()) == {r.name for r in table.rows}


def test_compare_trees_errors_and_floor():
    a = {"w": jnp.ones(3), "b": jnp.array([1e-17])}
    b = {"w": jnp.ones(3), "b": jnp.array([-1e-17])}
    assert gradcheck.compare_trees(a, b).to_dict()["b"] == pytest.approx(1.0)
    assert gradcheck.compare_trees(a, b, tree_floor=1e-6).to_dict()["b"] < 1e-10
    with pytest.raises(ValueError, match="structure"):
        gradcheck.compare_trees(a, {"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="shapes differ"):
        gradcheck.compare_trees(a, {"w": jnp.ones(2), "b": jnp.ones(1)})
    with pytest.raises(ValueError, match="eps"):
        gradcheck.numerical_grad(lambda p: jnp.sum(p["w"]), a, eps=0.0)
    with pytest.raises(ValueError, match="max_per_leaf"):
        gradcheck.numerical_grad(lambda p: jnp.sum(p["w"]), a, max_per_leaf=0)


def test_numerical_grad_needs_float64():
    with jax.enable_x64(False), pytest.raises(ValueError, match="float64"):
        gradcheck.numerical_grad(lambda p: jnp.sum(p), jnp.ones(3, jnp.float32))
