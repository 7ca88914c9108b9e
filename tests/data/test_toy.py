"""Toy generators: shapes, determinism, balance and the laws they are meant to follow."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mljax.data import toy

KEY = jax.random.key(0)


# ----------------------------------------------------------------------------- blobs


def test_blobs_shapes_balance_determinism():
    x, y, _c = toy.blobs(KEY, 4001, 4, cluster_std=0.6)
    assert x.shape == (4001, 2) and x.dtype == jnp.float32
    assert y.shape == (4001,) and y.dtype == jnp.int32
    # make_blobs: n // k per centre, the first n % k centres one more.
    np.testing.assert_array_equal(np.bincount(np.asarray(y)), [1001, 1000, 1000, 1000])
    x2, y2, _ = toy.blobs(KEY, 4001, 4)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _, _ = toy.blobs(jax.random.key(1), 4001, 4)
    assert not np.allclose(x, x3)


@pytest.mark.slow
def test_blobs_law_centres_in_box_and_std():
    keys = jax.random.split(KEY, 64)
    xs, ys, cs = jax.vmap(lambda k: toy.blobs(k, 2000, 4, cluster_std=0.6))(keys)
    cs = np.asarray(cs)
    assert cs.min() >= -10 and cs.max() <= 10
    # Uniform centres in [-10, 10]: mean 0, variance 400/12.
    assert abs(cs.mean()) < 4 * math.sqrt(400 / 12 / cs.size)
    assert abs(cs.var() - 400 / 12) < 0.15 * 400 / 12
    resid = np.asarray(xs) - np.take_along_axis(cs, np.asarray(ys)[..., None].repeat(2, -1), axis=1)
    assert abs(resid.std() - 0.6) < 0.01
    assert abs(resid.mean()) < 0.01


def test_blobs_given_centres_and_per_centre_std():
    centres = jnp.array([[0.0, 0.0], [100.0, 100.0]])
    x, y, c = toy.blobs(KEY, 20000, centres, cluster_std=jnp.array([1.0, 3.0]))
    np.testing.assert_array_equal(c, centres)
    for label, std in [(0, 1.0), (1, 3.0)]:
        pts = np.asarray(x)[np.asarray(y) == label]
        np.testing.assert_allclose(pts.mean(0), centres[label], atol=0.1)
        np.testing.assert_allclose(pts.std(0), std, rtol=0.05)


def test_blobs_bad_input():
    with pytest.raises(ValueError, match="centers must be an int >= 1; got 0"):
        toy.blobs(KEY, 10, 0)
    # Sizes are ints: a float (with or without a fraction) or a bool is refused, naming it.
    for bad, name in (((10.5, 3), "n_samples"), ((10, 3.0), "centers"), ((True, 3), "n_samples")):
        with pytest.raises(ValueError, match=name):
            toy.blobs(KEY, *bad)
    with pytest.raises(ValueError, match="cluster_std must be finite and >= 0"):
        toy.blobs(KEY, 10, 2, cluster_std=-1.0)
    with pytest.raises(ValueError, match="centers contains NaN"):
        toy.blobs(KEY, 10, np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="n_samples .3. must be >= the number of centres .4."):
        toy.blobs(KEY, 3, 4)
    with pytest.raises(ValueError, match="center_box"):
        toy.blobs(KEY, 10, 2, center_box=(1.0, -1.0))


# ----------------------------------------------------------------------------- Playground


@pytest.mark.parametrize("name", toy.PLAYGROUND_DATASETS)
@pytest.mark.parametrize("mode", ["eager", "jit", "vmap"])
def test_playground_shapes_and_determinism(name, mode):
    gen = toy._GENERATORS[name]
    if mode == "eager":
        x, y = gen(KEY, 500, 0.1)
    elif mode == "jit":
        x, y = jax.jit(gen, static_argnums=1)(KEY, 500, 0.1)
    else:
        x, y = jax.vmap(lambda k: gen(k, 500, 0.1))(jax.random.split(KEY, 3))
        assert not np.allclose(x[0], x[1])
        x, y = x[0], y[0]
    assert x.shape == (500, 2) and y.shape == (500,)
    assert set(np.unique(np.asarray(y))) <= {-1.0, 1.0}
    x2, y2 = toy.playground(name, KEY, 500, 0.1)
    if mode != "vmap":
        np.testing.assert_allclose(
            x, x2, rtol=1e-4, atol=1e-5
        )  # XLA may fuse differently under jit
        np.testing.assert_array_equal(y, y2)


def test_circle_law():
    x, y = toy.circle(KEY, 1000, 0.0)
    r = np.linalg.norm(np.asarray(x), axis=1)
    assert r[:500].max() <= 2.5 + 1e-5 and r[500:].min() >= 3.5 - 1e-5 and r[500:].max() <= 5 + 1e-5
    np.testing.assert_array_equal(y, np.r_[np.ones(500), -np.ones(500)])
    # Radii uniform in [0, 2.5] and [3.5, 5]: means 1.25 and 4.25.
    assert abs(r[:500].mean() - 1.25) < 0.1 and abs(r[500:].mean() - 4.25) < 0.06
    # With noise the label follows the noisy point, so some labels flip from the clean rule.
    _, yn = toy.circle(KEY, 1000, 0.5)
    flips = np.mean(np.asarray(yn) != np.r_[np.ones(500), -np.ones(500)])
    assert 0.05 < flips < 0.6


@pytest.mark.parametrize("noise,variance", [(0.0, 0.5), (0.25, 2.25), (0.5, 4.0)])
def test_gauss_law(noise, variance):
    x, y = toy.gauss(KEY, 20000, noise)
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(x[y == 1].mean(0), [2, 2], atol=0.06)
    np.testing.assert_allclose(x[y == -1].mean(0), [-2, -2], atol=0.06)
    np.testing.assert_allclose(x[y == 1].var(0), variance, rtol=0.05)
    assert np.sum(y == 1) == 10000


def test_xor_law():
    x, y = toy.xor(KEY, 2000, 0.0)
    x, y = np.asarray(x), np.asarray(y)
    assert np.abs(x).min() >= 0.3 - 1e-6 and np.abs(x).max() <= 5.3 + 1e-5
    np.testing.assert_array_equal(y, np.where(x[:, 0] * x[:, 1] >= 0, 1.0, -1.0))
    assert 0.4 < np.mean(y == 1) < 0.6


def test_spiral_law():
    x, y = toy.spiral(KEY, 500, 0.0)
    x = np.asarray(x)
    i = np.arange(250)
    r = i / 250 * 5
    t = 1.75 * i / 250 * 2 * np.pi
    np.testing.assert_allclose(x[:250], np.c_[r * np.sin(t), r * np.cos(t)], atol=1e-5)
    # The second arm is the first turned by π.
    np.testing.assert_allclose(x[250:], -x[:250], atol=1e-5)
    np.testing.assert_array_equal(y, np.r_[np.ones(250), -np.ones(250)])
    xn, _ = toy.spiral(KEY, 500, 0.5)
    dev = np.abs(np.asarray(xn) - x)
    assert dev.max() <= 0.5 + 1e-6 and dev.max() > 0.4


def test_playground_split_is_deterministic_partition():
    s = toy.playground_split("spiral", KEY, 500, 0.0)
    assert s.x_train.shape == (350, 2) and s.x_test.shape == (150, 2)
    x, _ = toy.playground("spiral", jax.random.split(KEY)[0], 500, 0.0)
    both = np.concatenate([s.x_train, s.x_test])
    np.testing.assert_allclose(np.sort(both, axis=0), np.sort(np.asarray(x), axis=0))
    s2 = toy.playground_split("spiral", KEY, 500, 0.0)
    np.testing.assert_array_equal(s.x_test, s2.x_test)


def test_playground_bad_input():
    with pytest.raises(ValueError, match="unknown Playground dataset 'moons'"):
        toy.playground("moons", KEY)
    with pytest.raises(ValueError, match=r"noise must lie in \[0, 0.5\]"):
        toy.playground("xor", KEY, noise=0.7)
    with pytest.raises(ValueError, match="even number"):
        toy.circle(KEY, 501)
    for bad in (float("nan"), "0.1", np.array([0.1, 0.2])):
        with pytest.raises(ValueError, match="noise must lie in"):
            toy.playground("xor", KEY, noise=bad)
    with pytest.raises(ValueError, match="n must be an int"):
        toy.xor(KEY, 10.5)
    with pytest.raises(ValueError, match="train_fraction"):
        toy.playground_split("xor", KEY, train_fraction=1.0)


def test_features_closed_form():
    x = jnp.array([[0.5, -2.0], [3.0, 1.0]])
    f = toy.features(x, toy.FEATURE_NAMES)
    x1, x2 = np.asarray(x).T
    expected = np.stack([x1, x2, x1**2, x2**2, x1 * x2, np.sin(x1), np.sin(x2)], axis=1)
    np.testing.assert_allclose(f, expected, rtol=1e-6)
    np.testing.assert_allclose(toy.features(x, ["x1*x2", "x1"]), expected[:, [4, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown feature"):
        toy.features(x, ["x1", "x3"])
    with pytest.raises(ValueError, match="2 columns"):
        toy.features(jnp.ones((3, 3)), ["x1"])


# ----------------------------------------------------------------------------- seed tables


def test_twolayer_toy_reproduces_the_reports_correct_scores():
    t = toy.twolayer_toy()
    h = np.maximum(t.x @ t.w1 + t.b1, 0)
    s = h @ t.w2 + t.b2
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # The report prints 8 significant digits.
    np.testing.assert_allclose(p, toy.TWOLAYER_TOY_CORRECT_SCORES, atol=1e-7)


def test_sigmoid_net_table_is_consistent_with_its_weights():
    w = toy.SIGMOID_NET_WEIGHTS
    for row in toy.SIGMOID_NET_DELTA_TABLE:
        assert row["a2"] == pytest.approx(w["w52"] * row["x"])
        assert row["a4"] == pytest.approx(w["w54"] * row["x"])
    assert len(toy.SIGMOID_NET_TRAIN_X) == len(toy.SIGMOID_NET_TRAIN_Y) == 11


def test_sizes_beyond_the_machine_are_refused_before_allocating():
    with pytest.raises(ValueError, match="more than this machine's memory"):
        toy.blobs(KEY, 2**62, 3)
    with pytest.raises(ValueError, match="more than this machine's memory"):
        toy.xor(KEY, 2**62)
