"""Losses and penalties (mljax.nn.losses) against closed forms and optax, float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mljax.nn import losses


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


RNG = np.random.default_rng(0)
Z = RNG.normal(size=(6, 4)) * 3
LABELS = RNG.integers(0, 4, 6)
T = RNG.uniform(size=(6, 4))


def test_softmax_cross_entropy_vs_optax_and_closed_form():
    ours = losses.softmax_cross_entropy(Z, LABELS)
    ref = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(Z), jnp.asarray(LABELS))
    np.testing.assert_allclose(ours, ref.mean(), rtol=1e-14)
    p = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    np.testing.assert_allclose(ours, -np.log(p[np.arange(6), LABELS]).mean(), rtol=1e-13)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = jnp.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]])
    np.testing.assert_allclose(losses.softmax_cross_entropy(z, jnp.array([1, 1])), 1e4 / 2)


@pytest.mark.parametrize("reduction,divisor", [("sum", 1.0), ("mean", 6.0)])
def test_squared_error_closed_form(reduction, divisor):
    ours = losses.squared_error(Z, T, reduction=reduction)
    np.testing.assert_allclose(ours, 0.5 * np.sum((Z - T) ** 2) / divisor, rtol=1e-14)


def test_seed002_convention_mean_is_sum_over_n():
    # Seed 002 trains on the summed ½err² and reports its mean over the 11 samples.
    np.testing.assert_allclose(losses.mean_squared_error(Z, T), losses.squared_error(Z, T) / 6)


def test_binary_cross_entropy_vs_optax_and_stability():
    ours = losses.binary_cross_entropy(Z, T)
    ref = optax.sigmoid_binary_cross_entropy(jnp.asarray(Z), jnp.asarray(T)).sum() / 6
    np.testing.assert_allclose(ours, ref, rtol=1e-13)
    p = 1 / (1 + np.exp(-Z))
    closed = -(T * np.log(p) + (1 - T) * np.log(1 - p)).sum() / 6
    np.testing.assert_allclose(ours, closed, rtol=1e-12)
    big = losses.binary_cross_entropy(jnp.array([[800.0, -800.0]]), jnp.array([[0.0, 1.0]]))
    np.testing.assert_allclose(big, 1600.0)


PARAMS = {
    "layer_0": {"kernel": jnp.asarray(RNG.normal(size=(3, 2))), "bias": jnp.ones(2)},
    "layer_2": {"kernel": jnp.asarray(RNG.normal(size=(2, 2))), "scale": jnp.ones(2)},
}


def test_l2_penalty_has_no_half_and_skips_biases():
    w1, w2 = PARAMS["layer_0"]["kernel"], PARAMS["layer_2"]["kernel"]
    lam = 0.25
    np.testing.assert_allclose(
        losses.l2_penalty(PARAMS, lam), lam * (np.sum(w1**2) + np.sum(w2**2)), rtol=1e-14
    )
    g = jax.grad(losses.l2_penalty)(PARAMS, lam)
    np.testing.assert_allclose(g["layer_0"]["kernel"], 2 * lam * w1, rtol=1e-14)  # 2λW
    np.testing.assert_array_equal(g["layer_0"]["bias"], 0.0)
    np.testing.assert_array_equal(g["layer_2"]["scale"], 0.0)


def test_l1_penalty():
    w1, w2 = PARAMS["layer_0"]["kernel"], PARAMS["layer_2"]["kernel"]
    np.testing.assert_allclose(
        losses.l1_penalty(PARAMS, 0.5), 0.5 * (np.abs(w1).sum() + np.abs(w2).sum()), rtol=1e-14
    )


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: losses.softmax_cross_entropy(Z, LABELS.astype(float)), "integers"),
        (lambda: losses.softmax_cross_entropy(Z, LABELS[:3]), "labels must be"),
        (lambda: losses.softmax_cross_entropy(Z[0], LABELS), "logits must be"),
        (lambda: losses.squared_error(Z, T[:, :2]), "targets must have"),
        (lambda: losses.squared_error(Z, T, reduction="median"), "reduction must be"),
        (lambda: losses.binary_cross_entropy(Z, T[:2]), "targets must have"),
        (lambda: losses.get("hinge"), "loss must be one of"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_jit_and_vmap():
    f = jax.jit(losses.softmax_cross_entropy)
    np.testing.assert_allclose(f(Z, LABELS), losses.softmax_cross_entropy(Z, LABELS))
    per = jax.vmap(lambda z, y: losses.softmax_cross_entropy(z[None], y[None]))(Z, LABELS)
    np.testing.assert_allclose(per.mean(), losses.softmax_cross_entropy(Z, LABELS), rtol=1e-14)
