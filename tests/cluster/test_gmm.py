"""Tests of mljax.cluster.gmm against scikit-learn, autodiff and closed forms."""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

from mljax.cluster import gmm

COV_TYPES = gmm.COVARIANCE_TYPES


@pytest.fixture(autouse=True)
def _strict_ranks():
    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def blobs(n_per=60, d=3, k=3, seed=0, spread=4.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * spread
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    x = np.concatenate([centres[j] + scales[j] * rng.normal(size=(n_per, d)) for j in range(k)])
    return rng.permutation(x).astype(dtype)


def start_params(x, k, covariance_type, seed=1):
    """Deliberately imperfect starting parameters (numpy) and sklearn's precisions_init."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    weights = rng.uniform(0.5, 1.5, size=k)
    weights /= weights.sum()
    means = x[rng.choice(len(x), k, replace=False)] + 0.1
    var = x.var(axis=0)
    if covariance_type == "full":
        a = rng.normal(size=(k, d, d)) * 0.3
        cov = np.einsum("kij,klj->kil", a, a) + np.diag(var)[None]
        prec = np.linalg.inv(cov)
    elif covariance_type == "tied":
        a = rng.normal(size=(d, d)) * 0.3
        cov = a @ a.T + np.diag(var)
        prec = np.linalg.inv(cov)
    elif covariance_type == "diag":
        cov = var[None] * rng.uniform(0.5, 2.0, size=(k, d))
        prec = 1.0 / cov
    else:
        cov = var.mean() * rng.uniform(0.5, 2.0, size=k)
        prec = 1.0 / cov
    return gmm.GMMParams(weights, means, cov), prec


def sk_model(params, covariance_type, prec, **kw):
    return GaussianMixture(
        n_components=len(params.weights),
        covariance_type=covariance_type,
        weights_init=params.weights,
        means_init=params.means,
        precisions_init=prec,
        **kw,
    )


def sk_with_params(params, covariance_type):
    """A fitted-looking sklearn model holding exactly ``params``."""
    m = GaussianMixture(n_components=len(params.weights), covariance_type=covariance_type)
    m.weights_ = np.asarray(params.weights)
    m.means_ = np.asarray(params.means)
    m.covariances_ = np.asarray(params.covariances)
    m.precisions_cholesky_ = np.asarray(
        gmm.compute_precision_cholesky(jnp.asarray(params.covariances), covariance_type)
    )
    m.n_features_in_ = m.means_.shape[1]
    return m


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


# ----------------------------------------------------------------------------- sklearn parity


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_fit_matches_sklearn_per_iteration(x64, covariance_type):
    x = blobs()
    p0, prec = start_params(x, 3, covariance_type)
    n_iter = 8
    sk = sk_model(p0, covariance_type, prec, max_iter=n_iter, tol=0.0, reg_covar=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(x)
    res = gmm.fit(
        jax.random.key(0), x, 3, covariance_type=covariance_type, init=p0,
        max_iter=n_iter, tol=0.0, reg_covar=1e-6,
    )  # fmt: skip
    assert res.params.means.dtype == jnp.float64
    assert int(res.n_iter) == n_iter and not bool(res.converged)
    assert rel_err(res.log_likelihood_trace, np.array(sk.lower_bounds_)) < 1e-6
    assert rel_err(res.params.weights, sk.weights_) < 1e-6
    assert rel_err(res.params.means, sk.means_) < 1e-6
    assert rel_err(res.params.covariances, sk.covariances_) < 1e-6
    assert rel_err(res.params.precisions_cholesky, sk.precisions_cholesky_) < 1e-6
    assert rel_err(res.log_likelihood, sk.score(x)) < 1e-6


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_trace_nan_after_convergence(x64, covariance_type):
    x = blobs()
    p0, prec = start_params(x, 3, covariance_type)
    sk = sk_model(p0, covariance_type, prec, max_iter=200, tol=1e-3).fit(x)
    res = gmm.fit(
        jax.random.key(0), x, 3, covariance_type=covariance_type, init=p0, max_iter=200, tol=1e-3
    )
    n = int(res.n_iter)
    assert bool(res.converged) and n == sk.n_iter_
    trace = np.asarray(res.log_likelihood_trace)
    assert np.all(np.isfinite(trace[:n])) and np.all(np.isnan(trace[n:]))
    assert rel_err(trace[:n], np.array(sk.lower_bounds_)) < 1e-6


def _kernel_outputs(x, p, covariance_type):
    kw = {"covariance_type": covariance_type}
    return {
        "score_samples": gmm.score_samples(x, p, **kw),
        "score": gmm.score(x, p, **kw),
        "predict_proba": gmm.predict_proba(x, p, **kw),
        "predict": gmm.predict(x, p, **kw),
        "bic": gmm.bic(x, p, **kw),
        "aic": gmm.aic(x, p, **kw),
    }


def _sklearn_outputs(x, sk):
    return {
        "score_samples": sk.score_samples(x),
        "score": sk.score(x),
        "predict_proba": sk.predict_proba(x),
        "predict": sk.predict(x),
        "bic": sk.bic(x),
        "aic": sk.aic(x),
    }


def _assert_outputs_match(out, refs):
    for name, ref in refs.items():
        if name == "predict":
            np.testing.assert_array_equal(out[name], ref)
        else:
            assert rel_err(out[name], ref) < 1e-10, name


class KernelsMatchSklearnTest(chex.TestCase):
    """The public kernels against scikit-learn, each with and without jit (chex variants)."""

    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))
        self.enter_context(jax.numpy_rank_promotion("raise"))
        self.x = blobs()

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*COV_TYPES)
    def test_e_step(self, covariance_type):
        params = jax.tree.map(jnp.asarray, start_params(self.x, 3, covariance_type)[0])
        ref_ll, ref_lr = sk_with_params(params, covariance_type)._e_step(self.x)
        e_step = self.variant(
            lambda p: gmm.e_step(self.x, p, covariance_type=covariance_type, chunk_size=17)
        )
        ll, lr = e_step(params)
        chex.assert_shape(lr, (len(self.x), 3))
        assert rel_err(ll, ref_ll) < 1e-10
        assert rel_err(lr, ref_lr) < 1e-10

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*COV_TYPES)
    def test_m_step(self, covariance_type):
        resp = np.random.default_rng(3).dirichlet(np.ones(3), size=len(self.x))
        m_step = self.variant(
            lambda lr: gmm.m_step(
                self.x, lr, covariance_type=covariance_type, reg_covar=1e-4, chunk_size=23
            )
        )
        p = m_step(np.log(resp))
        nk, means, cov = _estimate_gaussian_parameters(self.x, resp, 1e-4, covariance_type)
        chex.assert_shape([p.weights, p.means, p.covariances], [(3,), (3, 3), cov.shape])
        assert rel_err(p.weights, nk / nk.sum()) < 1e-10
        assert rel_err(p.means, means) < 1e-10
        assert rel_err(p.covariances, cov) < 1e-10

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*COV_TYPES)
    def test_scores(self, covariance_type):
        params = jax.tree.map(jnp.asarray, start_params(self.x, 3, covariance_type)[0])
        refs = _sklearn_outputs(self.x, sk_with_params(params, covariance_type))
        out = self.variant(lambda p: _kernel_outputs(self.x, p, covariance_type))(params)
        _assert_outputs_match(out, refs)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_e_step_under_vmap_matches_sklearn(x64, covariance_type):
    x = blobs()
    p0, _ = start_params(x, 3, covariance_type)
    p1, _ = start_params(x, 3, covariance_type, seed=7)
    both = jax.tree.map(lambda a, b: jnp.stack([jnp.asarray(a), jnp.asarray(b)]), p0, p1)
    lls, lrs = jax.vmap(lambda p: gmm.e_step(x, p, covariance_type=covariance_type, chunk_size=17))(
        both
    )
    for i, p in enumerate((p0, p1)):
        ref_ll, ref_lr = sk_with_params(jax.tree.map(jnp.asarray, p), covariance_type)._e_step(x)
        assert rel_err(lls[i], ref_ll) < 1e-10 and rel_err(lrs[i], ref_lr) < 1e-10


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_m_step_under_vmap_matches_sklearn(x64, covariance_type):
    x = blobs()
    rng = np.random.default_rng(3)
    resps = [rng.dirichlet(np.ones(3), size=len(x)) for _ in range(2)]
    ps = jax.vmap(
        lambda lr: gmm.m_step(x, lr, covariance_type=covariance_type, reg_covar=1e-4, chunk_size=23)
    )(jnp.log(jnp.stack(resps)))
    for i, resp in enumerate(resps):
        nk, means, cov = _estimate_gaussian_parameters(x, resp, 1e-4, covariance_type)
        assert rel_err(ps.weights[i], nk / nk.sum()) < 1e-10
        assert rel_err(ps.means[i], means) < 1e-10
        assert rel_err(ps.covariances[i], cov) < 1e-10


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_scores_under_vmap_match_sklearn(x64, covariance_type):
    x = blobs()
    p0, _ = start_params(x, 3, covariance_type)
    p1, _ = start_params(x, 3, covariance_type, seed=7)
    both = jax.tree.map(lambda a, b: jnp.stack([jnp.asarray(a), jnp.asarray(b)]), p0, p1)
    outs = jax.vmap(lambda p: _kernel_outputs(x, p, covariance_type))(both)
    for i, p in enumerate((p0, p1)):
        refs = _sklearn_outputs(x, sk_with_params(jax.tree.map(jnp.asarray, p), covariance_type))
        _assert_outputs_match(jax.tree.map(lambda a, i=i: a[i], outs), refs)


# ----------------------------------------------------------------------------- EM properties


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    centres=st.lists(st.floats(-6, 6), min_size=6, max_size=6),
    log_scale=st.floats(-1.5, 1.0),
    seed=st.integers(0, 2**16),
    covariance_type=st.sampled_from(COV_TYPES),
)
@pytest.mark.slow
def test_em_never_decreases_log_likelihood(centres, log_scale, seed, covariance_type):
    init = "random_from_data"
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        c = np.asarray(centres).reshape(3, 2)
        x = c[rng.integers(0, 3, 90)] + np.exp(log_scale) * rng.normal(size=(90, 2))
        res = gmm.fit(
            jax.random.key(seed), x, 3, covariance_type=covariance_type, init=init,
            max_iter=25, tol=0.0, reg_covar=0.0,
        )  # fmt: skip
        assume(int(res.n_reseeded) == 0)
        trace = np.asarray(res.log_likelihood_trace)
        assert np.all(np.isfinite(trace))
        steps = np.diff(trace)
        assert np.all(steps >= -1e-9 * np.abs(trace[1:])), steps.min()
        assert float(res.log_likelihood) >= trace[-1] - 1e-9 * abs(trace[-1])


def _dense_covariances(cov, covariance_type, k, d):
    cov = np.asarray(cov)
    return {
        "full": lambda: cov,
        "tied": lambda: np.stack([cov] * k),
        "diag": lambda: np.stack([np.diag(c) for c in cov]),
        "spherical": lambda: cov[:, None, None] * np.eye(d)[None],
    }[covariance_type]()


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-3.0, 3.0),
    covariance_type=st.sampled_from(COV_TYPES),
)
@pytest.mark.slow
def test_score_samples_matches_scipy_for_random_parameters(seed, log_scale, covariance_type):
    """Every covariance type's entry of the table, through the public kernel, against scipy's
    dense multivariate normal (fixed shapes: [25, 3] data, k = 4, so nothing recompiles)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(25, 3)) * np.exp(log_scale)
        params, _ = start_params(x, 4, covariance_type, seed=seed)
        covs = _dense_covariances(params.covariances, covariance_type, 4, 3)
        ref = logsumexp(
            [
                np.log(params.weights[j]) + multivariate_normal(params.means[j], covs[j]).logpdf(x)
                for j in range(4)
            ],
            axis=0,
        )
        got = gmm.score_samples(x, params, covariance_type=covariance_type)
        chex.assert_shape(got, (25,))
        assert rel_err(got, ref) < 1e-9


def _expected_complete_ll(x, log_resp, weights, means, covs):
    """Q = sum_n sum_k r_nk [log pi_k + log N(x_n | mu_k, Sigma_k)], Sigma a general matrix."""
    d = x.shape[1]
    r = jnp.exp(log_resp)

    def log_normal(mu, cov):
        diff = x - mu[None]
        _, logdet = jnp.linalg.slogdet(cov)
        maha = jnp.sum(diff * jnp.linalg.solve(cov, diff.T).T, axis=1)
        return -0.5 * (d * jnp.log(2 * jnp.pi) + logdet + maha)

    logn = jax.vmap(log_normal, out_axes=1)(means, covs)
    return jnp.sum(r * (jnp.log(weights)[None] + logn))


@pytest.mark.slow
def test_m_step_is_stationary_point_of_expected_complete_ll(x64):
    """Seed 000's derivation: dQ/dmu = 0, dQ/dSigma = 0, dQ/dpi_k = lambda for all k."""
    x = blobs(n_per=40)
    p0, _ = start_params(x, 3, "full")
    _, log_resp = gmm.e_step(x, jax.tree.map(jnp.asarray, p0))
    new = gmm.m_step(x, log_resp, covariance_type="full", reg_covar=0.0)
    g_w, g_mu, g_cov = jax.jit(jax.grad(_expected_complete_ll, argnums=(2, 3, 4)))(
        x, log_resp, new.weights, new.means, new.covariances
    )
    scale = float(jnp.sum(jnp.exp(log_resp)))
    assert np.max(np.abs(g_mu)) < 1e-9 * scale
    assert np.max(np.abs(g_cov)) < 1e-9 * scale
    # Lagrange condition on the simplex: dQ/dpi_k = N_k / pi_k = n for every k.
    np.testing.assert_allclose(g_w, np.full(3, len(x)), rtol=1e-10)
    # And the stationary point is a maximum along a random feasible perturbation.
    q = _expected_complete_ll(x, log_resp, new.weights, new.means, new.covariances)
    q2 = _expected_complete_ll(x, log_resp, new.weights, new.means + 0.05, new.covariances)
    assert q2 < q


@pytest.mark.parametrize("covariance_type", ["full", "spherical"])
def test_sample_weight_equals_repeated_points(x64, covariance_type):
    x = blobs()
    counts = np.random.default_rng(5).integers(0, 4, size=len(x))
    counts[0] = 1
    p0, _ = start_params(x, 3, covariance_type)
    kw = {"covariance_type": covariance_type, "init": p0, "max_iter": 8, "tol": 0.0}
    weighted = gmm.fit(jax.random.key(0), x, 3, sample_weight=counts, **kw)
    repeated = gmm.fit(jax.random.key(0), np.repeat(x, counts, axis=0), 3, **kw)
    chex.assert_trees_all_close(
        weighted.log_likelihood_trace, repeated.log_likelihood_trace, rtol=1e-10
    )
    chex.assert_trees_all_close(weighted.params, repeated.params, rtol=1e-9, atol=1e-12)


def test_chunked_fit_equals_single_chunk(x64):
    x = blobs()
    p0, _ = start_params(x, 3, "full")
    kw = {"init": p0, "max_iter": 8, "tol": 0.0}
    a = gmm.fit(jax.random.key(0), x, 3, chunk_size=16, **kw)
    b = gmm.fit(jax.random.key(0), x, 3, **kw)  # one chunk
    chex.assert_trees_all_close(a.log_likelihood_trace, b.log_likelihood_trace, rtol=1e-12)
    chex.assert_trees_all_close(a.params.covariances, b.params.covariances, rtol=1e-10)


# ----------------------------------------------------------------------------- fit variants


@pytest.mark.parametrize("init", ["kmeans", "k-means++"])
@pytest.mark.slow
def test_kmeans_inits_recover_separated_blobs(init):
    x = blobs(n_per=100, d=2, spread=8.0, dtype=np.float32)
    res = gmm.fit(jax.random.key(1), x, 3, init=init, n_init=2)
    # From a k-means start EM reaches the optimum sklearn finds (best of 5 k-means starts).
    ref = GaussianMixture(3, n_init=5, random_state=0).fit(x.astype(np.float64)).score(x)
    assert res.params.means.dtype == jnp.float32
    assert bool(res.converged)
    assert float(res.log_likelihood) > ref - 1e-3
    np.testing.assert_allclose(float(jnp.sum(res.params.weights)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("init", ["random", "random_from_data", "rand_const"])
@pytest.mark.slow
def test_random_inits_start_where_documented(x64, init):
    """The first trace entry is the log-likelihood of the documented starting parameters."""
    x = blobs()
    key = jax.random.key(4)
    res = gmm.fit(key, x, 3, init=init, covariance_type="diag", max_iter=8, tol=0.0, rand_const=5.0)
    mean, var = x.mean(0), x.var(0)
    if init == "rand_const":  # the seed's mogEM.py
        kw, km = jax.random.split(key)
        w = 5.0 + np.asarray(jax.random.uniform(kw, (3,), jnp.float64))
        means = mean + np.asarray(jax.random.normal(km, (3, 3), jnp.float64)) * np.sqrt(var) / 5
        start = gmm.GMMParams(w / w.sum(), means, np.tile(2 * var, (3, 1)))
    elif init == "random":  # uniform random responsibilities, then an M-step
        u = np.asarray(jax.random.uniform(key, (len(x), 3), jnp.float64))
        nk, means, cov = _estimate_gaussian_parameters(x, u / u.sum(1, keepdims=True), 1e-6, "diag")
        start = gmm.GMMParams(nk / nk.sum(), means, cov)
    else:  # k data points, covariance reg_covar
        idx = jax.random.choice(key, len(x), (3,), replace=False, p=jnp.full(len(x), 1 / len(x)))
        start = gmm.GMMParams(np.full(3, 1 / 3), x[np.asarray(idx)], np.full((3, 3), 1e-6))
    expected = sk_with_params(jax.tree.map(jnp.asarray, start), "diag").score(x)
    assert rel_err(res.log_likelihood_trace[0], expected) < 1e-9
    assert np.all(np.diff(np.asarray(res.log_likelihood_trace)) > -1e-9)


@pytest.mark.slow
def test_restarts_pick_best_of_split_keys(x64):
    x = blobs(n_per=40, spread=2.0)
    key = jax.random.key(3)
    best = gmm.fit(key, x, 4, init="random_from_data", n_init=4, max_iter=30)
    runs = [
        gmm.fit(kk, x, 4, init="random_from_data", max_iter=30) for kk in jax.random.split(key, 4)
    ]
    singles = [float(r.log_likelihood) for r in runs]
    assert float(best.log_likelihood) == pytest.approx(max(singles), rel=1e-12)
    # Every restart's objective and iteration count, in split-key order, as its single run.
    np.testing.assert_allclose(np.asarray(best.restart_log_likelihood), singles, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(best.restart_n_iter), [int(r.n_iter) for r in runs])
    assert np.asarray(runs[0].restart_log_likelihood).shape == (1,)


@pytest.mark.slow
def test_fit_under_jit_and_vmap_over_keys():
    x = blobs(n_per=40, dtype=np.float32)
    keys = jax.random.split(jax.random.key(0), 3)

    def one(key):
        return gmm.fit(key, x, 3, init="random_from_data", max_iter=20)

    batched = jax.vmap(one)(keys)
    jitted = jax.jit(one)(keys[1])
    eager = one(keys[1])
    chex.assert_tree_shape_prefix(batched, (3,))
    chex.assert_trees_all_close(batched.log_likelihood[1], eager.log_likelihood, rtol=1e-5)
    chex.assert_trees_all_close(jitted.params.means, eager.params.means, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_select_k_by_bic_finds_three_blobs_and_uses_sample_weight(x64):
    """Three blobs of weight 1 and a fourth, far away, of weight 0: the choice is 3, and the
    BIC is scikit-learn's on the weighted points alone (the BIC used to ignore the weights)."""
    x = blobs(n_per=80, d=2, spread=10.0)
    far = np.random.default_rng(9).normal(size=(30, 2)) + 200.0
    w = np.concatenate([np.ones(len(x)), np.zeros(30)])
    sel = gmm.select_k_by_bic(
        jax.random.key(0), np.concatenate([x, far]), [2, 3, 4], init="random_from_data",
        n_init=4, sample_weight=w,
    )  # fmt: skip
    assert sel.best_k == 3
    sk = sk_with_params(sel.best.params, "full")
    assert rel_err(sel.bic[1], sk.bic(x)) < 1e-10


def test_bic_aic_with_integer_weights_equal_repeated_points(x64):
    x = blobs(n_per=20)
    counts = np.random.default_rng(5).integers(0, 4, size=len(x))
    counts[0] = 1
    params = jax.tree.map(jnp.asarray, start_params(x, 3, "diag")[0])
    sk = sk_with_params(params, "diag")
    x_rep = np.repeat(x, counts, axis=0)
    kw = {"covariance_type": "diag", "sample_weight": counts}
    assert rel_err(gmm.bic(x, params, **kw), sk.bic(x_rep)) < 1e-10
    assert rel_err(gmm.aic(x, params, **kw), sk.aic(x_rep)) < 1e-10


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.slow
def test_zero_weight_points_drop_out_of_score_bic_aic(covariance_type):
    """A point of weight 0 whose ``log p(x_n)`` is -inf (float32 overflow) is left out of
    ``score``, ``bic`` and ``aic`` as ``e_step`` leaves it out (it used to give NaN)."""
    x = blobs(n_per=20, dtype=np.float32)
    params = jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float32), start_params(x, 3, covariance_type)[0]
    )
    x_far = np.concatenate([x, np.full((1, 3), 1e20, np.float32)])
    w = np.concatenate([np.ones(len(x), np.float32), [0.0]]).astype(np.float32)
    kw = {"covariance_type": covariance_type}
    assert float(gmm.score_samples(x_far, params, **kw)[-1]) == -np.inf
    with jax.enable_x64(True):  # a float64 reference on the weighted points alone
        sk = sk_with_params(
            jax.tree.map(lambda a: np.asarray(a, np.float64), params), covariance_type
        )
    x64_ = x.astype(np.float64)
    score = gmm.score(x_far, params, sample_weight=w, **kw)
    assert np.isfinite(float(score)) and rel_err(score, sk.score(x64_)) < 1e-5
    ll, _ = gmm.e_step(x_far, params, sample_weight=w, **kw)
    for got, ref in (
        (ll, sk.score(x64_)),
        (gmm.bic(x_far, params, sample_weight=w, **kw), sk.bic(x64_)),
        (gmm.aic(x_far, params, sample_weight=w, **kw), sk.aic(x64_)),
    ):
        assert np.isfinite(float(got))
        assert rel_err(got, ref) < 1e-5


@pytest.mark.slow
def test_min_variance_floors_diagonal():
    x = blobs(n_per=50, dtype=np.float32) * 0.01
    for ct in ("full", "spherical"):
        res = gmm.fit(
            jax.random.key(0), x, 3, covariance_type=ct, init="random_from_data", min_variance=0.5
        )
        cov = np.asarray(res.params.covariances)
        diag = np.diagonal(cov, axis1=-2, axis2=-1) if ct in ("full", "tied") else cov
        assert np.all(diag >= 0.5 * (1 - 1e-6)), ct


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_sample_moments(covariance_type):
    params = jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float32),
        start_params(blobs(), 3, covariance_type)[0],
    )
    xs, z = gmm.sample(jax.random.key(0), params, 60_000, covariance_type=covariance_type)
    assert xs.shape == (60_000, 3) and z.shape == (60_000,)
    freq = np.bincount(np.asarray(z), minlength=3) / len(z)
    np.testing.assert_allclose(freq, params.weights, atol=0.01)
    full = _dense_covariances(params.covariances, covariance_type, 3, 3)
    for j in range(3):
        pts = np.asarray(xs)[np.asarray(z) == j]
        sd = np.sqrt(np.diag(full[j]))
        np.testing.assert_allclose(pts.mean(0), params.means[j], atol=0.05 * sd.max() * 3)
        np.testing.assert_allclose(np.cov(pts.T), full[j], atol=0.06 * np.max(full[j]))


# ----------------------------------------------------------------------------- degenerate data

DEGENERATE = {
    "duplicated_points": np.repeat(np.arange(10.0).reshape(5, 2), 8, axis=0),
    "one_point_cluster": np.concatenate(
        [np.random.default_rng(0).normal(size=(40, 2)), [[50.0, 50.0]]]
    ),
    "d_greater_than_n": np.random.default_rng(1).normal(size=(12, 30)),
    "constant_feature": np.column_stack(
        [np.random.default_rng(2).normal(size=(60, 2)), np.full(60, 3.0)]
    ),
    "all_identical": np.ones((20, 4)),
}


DEGENERATE_RUNS = [
    ("duplicated_points", "full", "kmeans"),
    ("one_point_cluster", "full", "random_from_data"),
    ("d_greater_than_n", "full", "random"),
    ("d_greater_than_n", "diag", "rand_const"),
    ("constant_feature", "full", "k-means++"),
    ("all_identical", "tied", "kmeans"),
]


@pytest.mark.parametrize(("case", "covariance_type", "init"), DEGENERATE_RUNS)
@pytest.mark.slow
def test_degenerate_inputs_stay_finite(case, covariance_type, init):
    x = DEGENERATE[case].astype(np.float32)
    res = gmm.fit(
        jax.random.key(0), x, 3, covariance_type=covariance_type, init=init, max_iter=30,
        reg_covar=1e-6,
    )  # fmt: skip
    chex.assert_tree_all_finite(res.params)
    chex.assert_tree_all_finite(res.log_likelihood)
    n = int(res.n_iter)
    chex.assert_tree_all_finite(res.log_likelihood_trace[:n])
    chex.assert_tree_all_finite(gmm.predict_proba(x, res.params, covariance_type=covariance_type))


def test_collapsed_component_is_reseeded_and_counted():
    # A starting component far from all data gets weight ~ 0 after one M-step.
    x = blobs(n_per=50, d=2, dtype=np.float32)
    p = gmm.GMMParams(
        np.array([0.5, 0.49, 0.01]),
        np.array([x[0], x[1], [1e4, 1e4]]),
        np.stack([np.eye(2)] * 2 + [np.eye(2) * 1e-4]),
    )
    res = gmm.fit(jax.random.key(0), x, 3, init=p, max_iter=20)
    assert int(res.n_reseeded) >= 1
    assert np.all(np.abs(np.asarray(res.params.means)) < 100)
    assert np.all(np.asarray(res.params.weights) > 0.01)


# ----------------------------------------------------------------------------- bad input

X_OK = np.random.default_rng(0).normal(size=(20, 2))


def _params(shape_k=3, d=2, cov=None):
    return gmm.GMMParams(
        np.full(shape_k, 1 / shape_k),
        np.zeros((shape_k, d)),
        np.stack([np.eye(d)] * shape_k) if cov is None else cov,
    )


BAD = {
    "nan_x": (dict(x=np.where(np.arange(20)[:, None] == 3, np.nan, X_OK)), "x"),
    "inf_x": (dict(x=np.full((5, 2), np.inf)), "x"),
    "x_1d": (dict(x=np.zeros(5)), "x"),
    "k_zero": (dict(k=0), "k"),
    "k_gt_n": (dict(k=21), "k"),
    "weight_shape": (dict(sample_weight=np.ones(19)), "sample_weight"),
    "weight_negative": (dict(sample_weight=-np.ones(20)), "sample_weight"),
    "cov_type": (dict(covariance_type="banana"), "covariance_type"),
    "init_name": (dict(init="kmeans+++"), "init"),
    "init_means_shape": (dict(init=gmm.GMMParams(np.ones(3) / 3, np.zeros((3, 5)), np.stack([np.eye(2)] * 3))), "init.means"),
    "init_cov_shape": (dict(init=_params(cov=np.ones((3, 2)))), "init.covariances"),
    "init_not_pd": (dict(init=_params(cov=-np.stack([np.eye(2)] * 3))), "init.covariances"),
    "n_init": (dict(n_init=0), "n_init"),
    "reg_covar": (dict(reg_covar=-1.0), "reg_covar"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error(case):
    overrides, name = BAD[case]
    kw = {"x": X_OK, "k": 3} | overrides
    x, k = kw.pop("x"), kw.pop("k")
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        gmm.fit(jax.random.key(0), x, k, **kw)


def test_bad_input_in_kernels():
    p = jax.tree.map(jnp.asarray, _params())
    with pytest.raises(ValueError, match="x"):
        gmm.e_step(np.full((4, 2), np.nan), p)
    with pytest.raises(ValueError, match="covariance_type"):
        gmm.m_step(X_OK, np.zeros((20, 3)), covariance_type="fancy")
    with pytest.raises(ValueError, match="ambiguous"):
        gmm.score(X_OK, gmm.GMMParams(jnp.ones(2) / 2, jnp.zeros((2, 2)), jnp.ones((2, 2))))


def _fit_temp_bytes(n, d, k, chunk, covariance_type, init):
    """XLA's temporary-buffer bytes of a compiled fit on ``[n, d]`` float32 data (no run)."""
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)
    w = jax.ShapeDtypeStruct((n,), jnp.float32)
    if init == "params":
        cov = {"full": np.broadcast_to(np.eye(d), (k, d, d)), "diag": np.ones((k, d))}
        init = gmm.GMMParams(jnp.full((k,), 1.0 / k), jnp.zeros((k, d)), cov[covariance_type])

    def f(key, x, w):
        return gmm.fit(
            key, x, k, covariance_type=covariance_type, init=init, chunk_size=chunk,
            max_iter=3, sample_weight=w,
        )  # fmt: skip

    compiled = jax.jit(f).lower(jax.random.key(0), x, w).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.slow
def test_fit_memory_is_bounded_by_the_chunk_not_n(covariance_type, monkeypatch):
    """Independent check of the chunked passes: XLA's own buffer assignment. With the chunk
    fixed and the responsibilities recomputed per chunk (above ``KEEP_RESP_ELEMENTS``), 4x the
    rows must not mean 4x the temporaries (a centred or padded copy of ``x``, or ``[n, k]``
    responsibilities kept between passes, would)."""
    monkeypatch.setattr(gmm, "KEEP_RESP_ELEMENTS", 0)
    d, k, chunk = 32, 4, 1024
    small = _fit_temp_bytes(2**16, d, k, chunk, covariance_type, "params")
    large = _fit_temp_bytes(2**18, d, k, chunk, covariance_type, "params")
    x_growth = 4 * d * (2**18 - 2**16)
    assert large < 1.1 * small + 0.02 * x_growth, (small, large)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.slow
def test_fit_keeps_only_n_by_k_responsibilities_below_the_budget(covariance_type):
    """Below the budget the kept responsibilities are the only per-row temporaries: the growth
    from 2^16 to 2^18 rows is about ``4 k`` bytes a row, far below a copy of ``x`` (``4 d``)."""
    d, k, chunk = 32, 4, 1024
    assert 2**18 * k <= gmm.KEEP_RESP_ELEMENTS
    small = _fit_temp_bytes(2**16, d, k, chunk, covariance_type, "params")
    large = _fit_temp_bytes(2**18, d, k, chunk, covariance_type, "params")
    rows = 2**18 - 2**16
    assert large - small < 1.5 * 4 * k * rows + 0.1 * small, (small, large)
    assert large - small > 0.5 * 4 * k * rows, (small, large)


# ----------------------------------------------------------------------------- compilation


def test_em_iteration_is_traced_once_per_compiled_fit(monkeypatch):
    """One trace of the EM iteration serves every iteration, every vmapped restart and later
    calls with other keys and traced hyperparameters (tol, reg_covar, weights)."""
    traces = []
    iteration = gmm._em_iteration

    def counted(*args, **kwargs):
        traces.append(1)
        return iteration(*args, **kwargs)

    monkeypatch.setattr(gmm, "_em_iteration", chex.assert_max_traces(counted, n=1))
    x = blobs(n_per=23, d=2, dtype=np.float32)  # a shape no other test compiles
    runs = [
        gmm.fit(jax.random.key(s), x, 3, covariance_type="diag", init="random_from_data",
                n_init=3, max_iter=12, tol=tol, reg_covar=reg, sample_weight=w)
        for s, tol, reg, w in ((0, 0.0, 1e-6, None), (1, 1e-3, 1e-3, np.full(69, 2.0)))
    ]  # fmt: skip
    assert len(traces) == 1
    assert int(runs[0].n_iter) == 12  # the body ran many times on that one trace


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_restarts_share_one_wide_e_step_product(lowered_text, covariance_type):
    """n_init restarts read each chunk of x once for all of them: the chunk [256, d] meets the
    whitening factors (full) or precisions (diag) of every restart's components, stacked as
    [R, ·, d], in one dot_general against the transposed chunk [d, 256] (rows minor), and no
    product batches x per restart."""
    x = np.random.default_rng(0).normal(size=(600, 2)).astype(np.float32)
    lowered = lowered_text(gmm, "_fit_jit")
    gmm.fit(jax.random.key(0), x, 3, covariance_type=covariance_type, init="random_from_data",
            n_init=4, max_iter=2, chunk_size=256)  # fmt: skip
    dots = [ln for ln in lowered["text"].splitlines() if "dot_general" in ln]
    # full: one [K·d, d] whitening product per restart, stacked; diag: [K, d] precisions
    # against x and x², all against the transposed chunk [d, 256].
    width = 6 if covariance_type == "full" else 3
    chunk_rows = [ln for ln in dots if f"(tensor<4x{width}x2xf32>, tensor<2x256xf32>)" in ln]
    assert chunk_rows and all(f"-> tensor<4x{width}x256xf32>" in ln for ln in chunk_rows)
    assert not any("batching_dims" in ln and "tensor<4x256x2xf32>" in ln for ln in dots)


def test_restarts_get_a_chunk_whose_block_fits_the_restart_budget():
    """Closed form of the default chunk: one run keeps ``[chunk, k·d]`` within 2**19 elements,
    n_init vmapped restarts keep ``[chunk, n_init·k·d]`` within 2**20 (at least 64 rows, at
    most n)."""
    for n, k, d, r in [(100_000, 8, 16, 1), (100_000, 8, 16, 8), (100_000, 4, 2, 8),
                       (200_000, 16, 32, 4), (500, 3, 2, 10), (10**6, 64, 64, 16)]:  # fmt: skip
        budget = (1 << 19) if r == 1 else (1 << 20)
        assert gmm.auto_chunk_size(n, k, d, r) == max(64, min(n, budget // (r * k * d)))
    assert gmm.auto_chunk_size(100_000, 8, 16, 8) == 1024
    assert gmm.auto_chunk_size(100_000, 8, 16) == 4096
    # Diagonal fits from DIAG_SUM_MIN_KD component-features on form no [chunk, k, d] array and
    # take twice the single-run budget; below it, and with restarts, the usual rules.
    assert gmm.auto_chunk_size(200_000, 16, 32, 1, "diag") == 2048
    assert gmm.auto_chunk_size(200_000, 16, 32, 1, "full") == 1024
    assert gmm.auto_chunk_size(200_000, 4, 2, 1, "diag") == gmm.auto_chunk_size(
        200_000, 4, 2, 1, "tied"
    )
    # Full fits of at most SMALL_FULL_MAX_KD component-features take small, rows-minor chunks.
    assert gmm.auto_chunk_size(200_000, 4, 2) == gmm.ROWS_MINOR_MAX_CHUNK
    assert gmm.auto_chunk_size(200_000, 4, 8) == gmm.ROWS_MINOR_MAX_CHUNK
    assert gmm.auto_chunk_size(200_000, 8, 8) == (1 << 19) // 64
    assert gmm.auto_chunk_size(500, 4, 2) == 500
    assert gmm.auto_chunk_size(200_000, 16, 32, 8, "diag") == gmm.auto_chunk_size(
        200_000, 16, 32, 8
    )


@pytest.mark.parametrize("c", [300, gmm.FULL_ROWS_MINOR_MAX_CHUNK + 1])
def test_full_mahalanobis_equals_numpy_in_either_layout(x64, c):
    """The E-step's squared Mahalanobis distances ||(x_n - mu_k)ᵀ P_k||², whitened rows minor
    (chunks of <= FULL_ROWS_MINOR_MAX_CHUNK rows) or rows major, equal float64 numpy's."""
    k, d = 5, 4
    rng = np.random.default_rng(c)
    x = rng.normal(size=(c, d))
    mu = rng.normal(size=(k, d))
    p = np.tril(rng.normal(size=(k, d, d))) + 3 * np.eye(d)
    want = np.einsum("nkd,kde->nke", x[:, None, :] - mu[None], p)
    want = np.sum(want**2, axis=-1)
    a, b = gmm._prepare_full(jnp.asarray(mu), jnp.asarray(p))
    got = gmm._sq_full(jnp.asarray(x), a, b, k)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-11)


@pytest.mark.parametrize(
    ("c", "k", "d"),
    [(300, 4, 2), (gmm.ROWS_MINOR_MAX_CHUNK + 1, 8, 16),
     (gmm.ROWS_MINOR_MAX_CHUNK + 1, 3, gmm.MOMENTS_ROWS_MINOR_MIN_D), (700, 16, 33)],
)  # fmt: skip
def test_full_moments_equal_numpy_in_either_layout(x64, c, k, d):
    """sum_n r_nk (x_n - mu_k)(x_n - mu_k)ᵀ from both layouts of the weighted differences
    ([k, d, c] for small chunks or many features, [c, k, d] otherwise) equals the float64 numpy
    sum, with mu_k away from the data's mean (the compensated form must not cancel)."""
    rng = np.random.default_rng(c + k + d)
    r = rng.dirichlet(np.ones(k), size=c)
    x = rng.normal(size=(c, d)) + 3.0
    mu = rng.normal(size=(k, d))
    diff = x[:, None, :] - mu[None]
    want = np.einsum("nk,nkd,nke->kde", r, diff, diff)
    got = gmm._moments_matrix(jnp.asarray(r), jnp.asarray(x), jnp.asarray(mu))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-11, atol=1e-11 * np.abs(want).max())


@pytest.mark.parametrize(("k", "d"), [(4, 2), (8, 8), (8, 16), (16, 32), (40, 4)])
def test_diagonal_moments_equal_numpy_on_either_side_of_the_fused_sum_limit(x64, k, d):
    """sum_n r_nk (x_nd - mu_kd)² from every form (matmul, einsum, fused sum from
    DIAG_SUM_MIN_KD component-features on) equals the float64 numpy sum."""
    rng = np.random.default_rng(k * d)
    r = rng.dirichlet(np.ones(k), size=300)
    x = rng.normal(size=(300, d))
    mu = rng.normal(size=(k, d))
    want = np.einsum("nk,nkd->kd", r, (x[:, None, :] - mu[None]) ** 2)
    got = gmm._moments_diagonal(jnp.asarray(r), jnp.asarray(x), jnp.asarray(mu))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


@pytest.mark.parametrize("c", [700, gmm.ROWS_MINOR_MAX_CHUNK + 476])
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("keep", [True, False])
def test_components_major_em_iteration_equals_numpy(x64, monkeypatch, keep, covariance_type, c):
    """An EM iteration whose passes hold the responsibilities as [k, c] (full covariance over
    chunks of <= FULL_ROWS_MINOR_MAX_CHUNK rows, diagonal always), kept as [k, n] or recomputed in
    the covariance pass: with sample weights (zeros included) and a chunk that does not divide
    n, its log-likelihood and parameters equal a float64 numpy EM step."""
    x = blobs(n_per=667)  # 2,001 rows; chunks of 700 or 1,500: the last one is shifted back
    n, d = x.shape
    k, reg = 3, 1e-6
    assert gmm._components_major(gmm._COVARIANCES[covariance_type], c)
    w = np.random.default_rng(3).uniform(0.0, 2.0, size=n)
    w[::7] = 0.0
    p0, _ = start_params(x, k, covariance_type)
    if not keep:
        monkeypatch.setattr(gmm, "KEEP_RESP_ELEMENTS", 0)
    res = gmm.fit(jax.random.key(0), x, k, covariance_type=covariance_type, init=p0, max_iter=1,
                  tol=0.0, reg_covar=reg, sample_weight=w, chunk_size=c)  # fmt: skip
    cov0 = p0.covariances if covariance_type == "full" else [np.diag(v) for v in p0.covariances]
    log_p = np.stack(
        [np.log(p0.weights[j]) + multivariate_normal(p0.means[j], cov0[j]).logpdf(x)
         for j in range(k)], axis=1,
    )  # fmt: skip
    lse = logsumexp(log_p, axis=1)
    r = np.exp(log_p - lse[:, None]) * w[:, None]
    nk = r.sum(axis=0) + 10 * np.finfo(np.float64).eps
    means = r.T @ x / nk[:, None]
    diff = x[:, None, :] - means[None]
    cov = np.einsum("nk,nkd,nke->kde", r, diff, diff) / nk[:, None, None] + reg * np.eye(d)
    if covariance_type == "diag":
        cov = np.diagonal(cov, axis1=1, axis2=2)
    np.testing.assert_allclose(float(res.log_likelihood_trace[0]), w @ lse / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(res.params.weights), nk / nk.sum(), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res.params.means), means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.params.covariances), cov, rtol=1e-10, atol=1e-12)
