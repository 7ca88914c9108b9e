"""Tests of mljax.linear.pca against scikit-learn's PCA (float64) and closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import PCA

from mljax.linear import pca


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"):
        yield


def _data(n, d, seed, rank=None):
    """Correlated Gaussian data with a decaying spectrum (distinct eigenvalues)."""
    rng = np.random.default_rng(seed)
    r = rank or d
    basis = rng.normal(size=(r, d))
    scales = 3.0 * 0.8 ** np.arange(r)
    return (rng.normal(size=(n, r)) * scales) @ basis + rng.normal(size=d)


# name, n, d, n_components, method, whiten
PARITY_CASES = [
    ("tall_eigh", 500, 20, 5, "covariance_eigh", False),
    ("tall_auto", 400, 12, 12, "auto", False),
    ("wide_svd", 30, 60, 10, "svd", False),
    ("wide_auto_rank", 25, 40, 24, "auto", False),  # k = n - 1: every nonzero axis
    ("tall_svd_whiten", 300, 15, 6, "svd", True),
    ("tall_eigh_whiten", 300, 15, 4, "covariance_eigh", True),
]


@pytest.mark.parametrize("name,n,d,k,method,whiten", PARITY_CASES, ids=[c[0] for c in PARITY_CASES])
def test_parity_with_sklearn_full(x64, name, n, d, k, method, whiten):
    x = _data(n, d, seed=len(name))
    x_new = _data(50, d, seed=len(name) + 1)
    sk = PCA(n_components=k, svd_solver="full", whiten=whiten).fit(x)
    ours = pca.fit(jnp.asarray(x), k, method=method, whiten=whiten)
    chex.assert_shape(ours.components, (k, d))
    np.testing.assert_allclose(ours.explained_variance, sk.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(
        ours.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-8
    )
    np.testing.assert_allclose(ours.singular_values, sk.singular_values_, rtol=1e-8)
    np.testing.assert_allclose(ours.mean, sk.mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.components, sk.components_, atol=1e-6)
    np.testing.assert_allclose(pca.transform(ours, x_new), sk.transform(x_new), atol=1e-6)
    z = sk.transform(x_new)
    np.testing.assert_allclose(pca.inverse_transform(ours, z), sk.inverse_transform(z), atol=1e-6)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.95, 0.999])
def test_fraction_picks_sklearn_count(x64, fraction):
    x = _data(400, 30, seed=3)
    sk = PCA(n_components=fraction, svd_solver="full").fit(x)
    ours = pca.fit(x, fraction)
    assert ours.components.shape[0] == sk.n_components_
    np.testing.assert_allclose(ours.explained_variance, sk.explained_variance_, rtol=1e-8)
    # The definition itself: fewest components whose ratios sum to more than the fraction.
    cum = np.cumsum(ours.explained_variance_ratio)
    assert cum[-1] > fraction and (len(cum) == 1 or cum[-2] <= fraction)


def test_randomized_matches_exact_on_low_rank_data(x64):
    x = _data(800, 600, seed=5, rank=8)  # min(n, d) > 500: auto takes the randomized path
    exact = pca.fit(x, 5, method="svd")
    rand = pca.fit(x, 5, method="auto", key=jax.random.key(3))
    np.testing.assert_allclose(rand.explained_variance, exact.explained_variance, rtol=1e-8)
    np.testing.assert_allclose(
        rand.explained_variance_ratio, exact.explained_variance_ratio, rtol=1e-8
    )
    np.testing.assert_allclose(rand.components, exact.components, atol=1e-6)


def test_randomized_close_to_sklearn_randomized_on_full_rank_data(x64):
    x = _data(600, 80, seed=8)
    sk = PCA(n_components=10, svd_solver="full").fit(x)
    ours = pca.fit(x, 10, method="randomized", n_iter=7)
    np.testing.assert_allclose(ours.explained_variance, sk.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(np.abs(ours.components @ sk.components_.T), np.eye(10), atol=1e-3)


def test_float32_default_close_to_float64():
    x = _data(2000, 50, seed=11).astype(np.float32)
    sk = PCA(n_components=10, svd_solver="full").fit(x.astype(np.float64))
    ours = pca.fit(x, 10)
    assert ours.components.dtype == jnp.float32
    np.testing.assert_allclose(ours.explained_variance, sk.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(ours.components, sk.components_, atol=1e-3)


def test_transform_round_trip_and_orthonormal_axes(x64):
    x = _data(200, 10, seed=2)
    m = pca.fit(x, 10, whiten=True)
    np.testing.assert_allclose(m.components @ m.components.T, np.eye(10), atol=1e-12)
    np.testing.assert_allclose(pca.inverse_transform(m, pca.transform(m, x)), x, atol=1e-9)
    # Whitened coordinates of the training data have unit variance (ddof 1).
    np.testing.assert_allclose(np.var(pca.transform(m, x), axis=0, ddof=1), 1.0, rtol=1e-9)


class TestJitVmap(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_fit_transform_variants(self):
        with jax.enable_x64(True):
            x = jnp.asarray(_data(300, 8, seed=4))
            sk = PCA(3, svd_solver="full").fit(np.asarray(x))
            fn = self.variant(lambda x: pca.transform(pca.fit(x, 3), x))
            np.testing.assert_allclose(fn(x), sk.transform(np.asarray(x)), atol=1e-6)

    def test_vmap_over_datasets_equals_single_fits(self):
        with jax.enable_x64(True):
            xs = jnp.stack([jnp.asarray(_data(200, 6, seed=s)) for s in range(3)])
            batched = jax.vmap(lambda x: pca.fit(x, 2))(xs)
            for i in range(3):
                single = pca.fit(xs[i], 2)
                chex.assert_trees_all_close(
                    jax.tree.map(lambda a, i=i: a[i], batched), single, atol=1e-10
                )

    def test_one_trace_per_shape(self):
        @jax.jit
        @chex.assert_max_traces(n=1)
        def f(x):
            return pca.fit(x, 2).explained_variance

        f(jnp.ones((10, 3)) + jnp.arange(30.0).reshape(10, 3) ** 2)
        f(jnp.arange(30.0).reshape(10, 3) ** 1.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": -1}, "n_components"),
        ({"n_components": 11}, "n_components"),
        ({"n_components": 1.0}, "n_components"),
        ({"n_components": 0.0}, "n_components"),
        ({"n_components": 1.5}, "n_components"),
        ({"n_components": True}, "n_components"),
        ({"n_components": 2, "method": "arpack"}, "method"),
        ({"n_components": 2, "n_iter": -1}, "n_iter"),
    ],
)
def test_bad_arguments(kwargs, match):
    x = np.random.default_rng(0).normal(size=(11, 10))
    with pytest.raises(ValueError, match=match):
        pca.fit(x, **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_x_is_refused(bad):
    x = np.random.default_rng(0).normal(size=(20, 4))
    x[3, 1] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        pca.fit(x, 2)


def test_fraction_under_jit_is_refused():
    with pytest.raises(ValueError, match="n_components"):
        jax.jit(lambda x: pca.fit(x, 0.5).mean)(jnp.ones((5, 3)))
