"""Seed 003 (sample questions): a linear 2-2-1 network is linear / logistic regression.

With inputs x1, x2, hidden units h1 = w1 x1 + w3 x2, h2 = w2 x1 + w4 x2 (no biases, identity
activations) and output w5 h1 + w6 h2, the network computes β1 x1 + β2 x2 with
β1 = w1 w5 + w2 w6 and β2 = w3 w5 + w4 w6. With a sigmoid output it computes σ(β·x): a
logistic regression with those coefficients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from mljax.nn import layers as L
from mljax.nn.models import build


def network(sigmoid_output: bool):
    stack = [L.Dense(2, use_bias=False), L.Dense(1, use_bias=False)]
    if sigmoid_output:
        stack.append(L.Activation("sigmoid"))
    return build(tuple(stack), param_dtype=np.float64)


def params_from(w):
    w1, w2, w3, w4, w5, w6 = w
    # Dense kernels are [inputs, outputs]: row = from, column = to.
    return {
        "layer_0": {"kernel": np.array([[w1, w2], [w3, w4]])},
        "layer_1": {"kernel": np.array([[w5], [w6]])},
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_221_network_is_linear_regression(x64, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=6)
    x = rng.normal(size=(200, 2))
    out = np.asarray(network(False).apply({"params": params_from(w)}, x))[:, 0]
    beta = np.array([w[0] * w[4] + w[1] * w[5], w[2] * w[4] + w[3] * w[5]])
    # Least squares on the network's own outputs recovers exactly those coefficients.
    fitted = LinearRegression(fit_intercept=False).fit(x, out)
    np.testing.assert_allclose(fitted.coef_, beta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out, x @ beta, rtol=1e-12, atol=1e-12)


def test_sigmoid_output_is_logistic_regression(x64):
    rng = np.random.default_rng(7)
    w = rng.normal(size=6)
    x = rng.normal(size=(300, 2))
    prob = np.asarray(network(True).apply({"params": params_from(w)}, x))[:, 0]
    beta = np.array([w[0] * w[4] + w[1] * w[5], w[2] * w[4] + w[3] * w[5]])
    logreg = LogisticRegression(fit_intercept=False)
    logreg.classes_ = np.array([0, 1])
    logreg.coef_ = beta[None, :]
    logreg.intercept_ = np.zeros(1)
    np.testing.assert_allclose(prob, logreg.predict_proba(x)[:, 1], rtol=1e-12)


def test_trained_linear_network_matches_least_squares(x64):
    """Gradient descent on the 2-2-1 network reaches the least-squares β (a product form)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 2))
    y = x @ np.array([1.5, -0.7]) + 0.1 * rng.normal(size=100)
    model = network(False)
    params = params_from(rng.normal(scale=0.5, size=6))

    def loss(p):
        return 0.5 * jnp.mean((model.apply({"params": p}, x)[:, 0] - y) ** 2)

    step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p)))
    for _ in range(3000):
        params = step(params)
    k0, k1 = np.asarray(params["layer_0"]["kernel"]), np.asarray(params["layer_1"]["kernel"])[:, 0]
    beta_net = k0 @ k1
    beta_ls = LinearRegression(fit_intercept=False).fit(x, y).coef_
    np.testing.assert_allclose(beta_net, beta_ls, rtol=1e-6)
