"""Losses and penalties (mljax.nn.losses) against closed forms and optax, float64."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

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


@pytest.mark.parametrize(
    "fn,divisor",
    [(losses.squared_error, 1.0), (losses.mean_squared_error, 6.0)],
    ids=["sum", "mean"],
)
def test_squared_error_closed_form(fn, divisor):
    """squared_error is the batch sum ½ Σ (z - t)²; mean_squared_error its batch mean."""
    np.testing.assert_allclose(fn(Z, T), 0.5 * np.sum((Z - T) ** 2) / divisor, rtol=1e-14)


def test_seed002_convention_mean_is_sum_over_n():
    # Seed 002 trains on the summed ½err² and reports its mean over the 11 samples.
    np.testing.assert_allclose(losses.mean_squared_error(Z, T), losses.squared_error(Z, T) / 6)


def test_every_loss_name_has_a_function():
    assert {losses.get(name).__name__ for name in losses.LOSSES} == set(losses.LOSSES)


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


@pytest.mark.parametrize(
    "penalty,factor", [(losses.l2_penalty, 0.5), (losses.reg_penalty, 1.0)], ids=["l2", "reg"]
)
def test_l2_has_a_half_reg_has_none_and_both_skip_biases(penalty, factor):
    """l2 = (λ/2)‖W‖² with gradient λW; reg = λ‖W‖² (seed 001) with gradient 2λW."""
    w1, w2 = PARAMS["layer_0"]["kernel"], PARAMS["layer_2"]["kernel"]
    lam = 0.25
    np.testing.assert_allclose(
        penalty(PARAMS, lam), factor * lam * (np.sum(w1**2) + np.sum(w2**2)), rtol=1e-14
    )
    g = jax.grad(penalty)(PARAMS, lam)
    want = {
        "layer_0": {"kernel": 2 * factor * lam * w1, "bias": jnp.zeros(2)},
        "layer_2": {"kernel": 2 * factor * lam * w2, "scale": jnp.zeros(2)},
    }
    chex.assert_trees_all_close(g, want, rtol=1e-14)


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
        (lambda: losses.binary_cross_entropy(Z, T, reduction="median"), "reduction must be"),
        (lambda: losses.binary_cross_entropy(Z, T[:2]), "targets must have"),
        (lambda: losses.get("hinge"), "loss must be one of"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _closed_forms():
    """NumPy values of every loss on (Z, LABELS / T), from the module docstring's formulas."""
    p = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    sq = 0.5 * np.sum((Z - T) ** 2)
    bce = -(T * np.log(1 / (1 + np.exp(-Z))) + (1 - T) * np.log(1 - 1 / (1 + np.exp(-Z))))
    return {
        "softmax_cross_entropy": (LABELS, -np.log(p[np.arange(6), LABELS]).mean()),
        "squared_error": (T, sq),
        "mean_squared_error": (T, sq / 6),
        "binary_cross_entropy": (T, bce.sum() / 6),
    }


class LossVariantsTest(chex.TestCase):
    """Every loss, jitted and not, against its closed form and under vmap."""

    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*losses.LOSSES)
    def test_loss_matches_closed_form(self, name):
        targets, want = _closed_forms()[name]
        got = self.variant(losses.get(name))(jnp.asarray(Z), jnp.asarray(targets))
        chex.assert_shape(got, ())
        np.testing.assert_allclose(got, want, rtol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_penalties(self):
        params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), PARAMS)
        got = self.variant(
            lambda p: (
                losses.l2_penalty(p, 0.3),
                losses.reg_penalty(p, 0.3),
                losses.l1_penalty(p, 0.3),
            )
        )(params)
        sq = sum(float(np.sum(np.asarray(params[k]["kernel"]) ** 2)) for k in params)
        ab = sum(float(np.sum(np.abs(np.asarray(params[k]["kernel"])))) for k in params)
        chex.assert_trees_all_close(got, (0.15 * sq, 0.3 * sq, 0.3 * ab), rtol=1e-13)


def test_vmap():
    per = jax.vmap(lambda z, y: losses.softmax_cross_entropy(z[None], y[None]))(Z, LABELS)
    np.testing.assert_allclose(per.mean(), losses.softmax_cross_entropy(Z, LABELS), rtol=1e-14)
