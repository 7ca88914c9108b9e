"""Tests of mljax.metrics against scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from mljax import metrics


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"):
        yield


def _random_labels(seed, n, ka, kb, agree):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, ka, n)
    b = np.where(rng.uniform(size=n) < agree, a % kb, rng.integers(0, kb, n))
    return a, b


# name, n, classes true, classes pred, agreement
ARI_CASES = [
    ("random_small", 30, 3, 4, 0.0),
    ("partial_agreement", 500, 5, 5, 0.6),
    ("near_identical", 1000, 4, 4, 0.95),
    ("more_clusters", 400, 3, 8, 0.5),
    ("two_points", 2, 2, 2, 0.5),
]


@pytest.mark.parametrize("name,n,ka,kb,agree", ARI_CASES, ids=[c[0] for c in ARI_CASES])
def test_ari_matches_sklearn(name, n, ka, kb, agree):
    a, b = _random_labels(len(name), n, ka, kb, agree)
    with jax.enable_x64(True):
        ours = float(metrics.adjusted_rand_index(a, b))
    np.testing.assert_allclose(ours, skm.adjusted_rand_score(a, b), rtol=1e-10, atol=1e-12)


SPECIAL = [
    ("identical_renamed", [0, 0, 1, 1, 2], [5, 5, 9, 9, -1]),
    ("one_cluster_each", [0, 0, 0], [1, 1, 1]),
    ("all_singletons", [0, 1, 2, 3], [3, 2, 1, 0]),
    ("one_vs_singletons", [0, 0, 0, 0], [0, 1, 2, 3]),
    ("single_point", [3], [7]),
]


@pytest.mark.parametrize("name,a,b", SPECIAL, ids=[c[0] for c in SPECIAL])
def test_ari_special_partitions(name, a, b):
    np.testing.assert_allclose(
        float(metrics.adjusted_rand_index(a, b)), skm.adjusted_rand_score(a, b), atol=1e-6
    )


def test_ari_float32_large_n():
    a, b = _random_labels(0, 60_000, 10, 10, 0.7)
    np.testing.assert_allclose(
        float(metrics.adjusted_rand_index(a, b)), skm.adjusted_rand_score(a, b), rtol=1e-4
    )


def test_ari_jit_and_vmap():
    a, b = _random_labels(1, 200, 4, 5, 0.5)
    ref = skm.adjusted_rand_score(a, b)
    f = jax.jit(lambda a, b: metrics.adjusted_rand_index(a, b, n_true=4, n_pred=5))
    np.testing.assert_allclose(float(f(a, b)), ref, rtol=1e-5)
    bs = np.stack([b, a % 5, np.zeros_like(b)])
    got = jax.vmap(lambda bb: metrics.adjusted_rand_index(a, bb, n_true=4, n_pred=5))(bs)
    want = [skm.adjusted_rand_score(a, bb) for bb in bs]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


def test_ari_traced_without_sizes_raises():
    with pytest.raises(ValueError, match="n_true and n_pred must be given"):
        jax.jit(metrics.adjusted_rand_index)(jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("mode", ["eager", "jit", "vmap"])
def test_accuracy_error_rate_confusion(mode):
    a, b = _random_labels(2, 300, 6, 6, 0.5)
    if mode == "eager":
        acc, err = metrics.accuracy(a, b), metrics.error_rate(a, b)
        cm = metrics.confusion_matrix(a, b, 6)
    elif mode == "jit":
        acc = jax.jit(metrics.accuracy)(a, b)
        err = jax.jit(metrics.error_rate)(a, b)
        cm = jax.jit(metrics.confusion_matrix, static_argnums=2)(a, b, 6)
    else:
        stack = np.stack([b, a])
        acc = jax.vmap(metrics.accuracy, in_axes=(None, 0))(a, stack)[0]
        err = jax.vmap(metrics.error_rate, in_axes=(None, 0))(a, stack)[0]
        cm = jax.vmap(lambda bb: metrics.confusion_matrix(a, bb, 6))(stack)[0]
    np.testing.assert_allclose(float(acc), skm.accuracy_score(a, b), rtol=1e-6)
    np.testing.assert_allclose(float(err), 1 - skm.accuracy_score(a, b), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(cm), skm.confusion_matrix(a, b, labels=range(6)))


def test_confusion_matrix_infers_classes():
    a, b = [0, 2, 2, 1], [0, 1, 2, 2]
    np.testing.assert_array_equal(
        np.asarray(metrics.confusion_matrix(a, b)), skm.confusion_matrix(a, b)
    )


BAD = [
    ("2d", lambda: metrics.accuracy(np.zeros((2, 2)), np.zeros((2, 2))), "must be 1-D"),
    ("shape", lambda: metrics.error_rate([0, 1], [0, 1, 1]), "same shape"),
    ("empty", lambda: metrics.accuracy([], []), "empty"),
    ("non_integer", lambda: metrics.adjusted_rand_index([0.5, 1.0], [0, 1]), "integer"),
    ("negative_classes", lambda: metrics.confusion_matrix([-1, 0], [0, 0]), ">= 0"),
    ("bad_n_classes", lambda: metrics.confusion_matrix([0, 1], [0, 1], 0), "n_classes"),
]


@pytest.mark.parametrize("name,call,match", BAD, ids=[c[0] for c in BAD])
def test_bad_input(name, call, match):
    with pytest.raises(ValueError, match=match):
        call()
