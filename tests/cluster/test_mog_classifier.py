"""Tests of mljax.cluster.mog_classifier: closed forms, per-class EM fixed points checked with
scikit-learn's GaussianMixture, and Bayes' rule recomputed with scipy."""

import functools
import warnings

import jax
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.datasets import make_blobs
from sklearn.mixture import GaussianMixture

from mljax.cluster import gmm
from mljax.cluster import mog_classifier as mc


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"), jax.enable_x64(True):
        yield


def _data(sizes, d=3, seed=0):
    """Three classes, each itself two blobs, of the given sizes (unequal => padding)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, m in enumerate(sizes):
        centres = rng.normal(scale=4.0, size=(2, d))
        x, _ = make_blobs(m, n_features=d, centers=centres, cluster_std=1.0, random_state=seed + c)
        xs.append(x)
        ys.append(np.full(m, c))
    perm = rng.permutation(sum(sizes))
    return np.concatenate(xs)[perm], np.concatenate(ys)[perm]


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.slow
def test_k1_is_the_class_mean_and_covariance(covariance_type):
    # One component per class: EM's answer is the class's MLE Gaussian in closed form, so
    # this also checks that the padding rows of the smaller classes carry no weight.
    x, y = _data([50, 80, 120])
    model = mc.fit(jax.random.key(0), x, y, 3, 1, covariance_type=covariance_type, reg_covar=0.0)
    for c in range(3):
        xc = x[y == c]
        np.testing.assert_allclose(np.asarray(model.params.means[c, 0]), xc.mean(0), rtol=1e-10)
        cov = np.cov(xc.T, bias=True)
        got = np.asarray(model.params.covariances[c, 0])
        want = {"full": cov, "diag": np.diag(cov), "spherical": np.diag(cov).mean()}
        np.testing.assert_allclose(got, want[covariance_type], rtol=1e-9)
    np.testing.assert_allclose(
        np.exp(np.asarray(model.log_priors)), [50 / 250, 80 / 250, 120 / 250]
    )


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.slow
def test_each_class_fit_is_an_em_fixed_point_of_that_class_alone(covariance_type):
    # Starting scikit-learn's EM on class c alone from our fitted parameters, one more
    # iteration must not move them: padding or other classes leaking in would.
    x, y = _data([60, 90, 150], seed=1)
    model = mc.fit(
        jax.random.key(1), x, y, 3, 2, covariance_type=covariance_type, tol=1e-12, max_iter=500,
        reg_covar=1e-6,
    )  # fmt: skip
    for c in range(3):
        p = jax.tree.map(lambda a, c=c: np.asarray(a[c]), model.params)
        cov = p.covariances
        prec = np.linalg.inv(cov) if covariance_type == "full" else 1.0 / cov
        sk = GaussianMixture(
            2, covariance_type=covariance_type, weights_init=p.weights, means_init=p.means,
            precisions_init=prec, max_iter=1, tol=0.0, reg_covar=1e-6,
        )  # fmt: skip

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "did not converge" after one iteration
            sk.fit(x[y == c])
        np.testing.assert_allclose(sk.means_, p.means, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sk.covariances_, cov, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sk.weights_, p.weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(model.log_likelihood[c]), sk.score(x[y == c]), rtol=1e-8)


@pytest.mark.slow
def test_balanced_classes_equal_separate_gmm_fits():
    # With equal class sizes there is no padding: each class's fit is exactly gmm.fit on
    # that class with the class's split key.
    x, y = _data([70, 70, 70], seed=2)
    key = jax.random.key(3)
    model = mc.fit(key, x, y, 3, 2, covariance_type="diag")
    keys = jax.random.split(key, 3)
    for c in range(3):
        r = gmm.fit(keys[c], x[y == c], 2, covariance_type="diag")
        np.testing.assert_allclose(
            np.asarray(model.params.means[c]), np.asarray(r.params.means), rtol=1e-8
        )
        assert int(model.n_iter[c]) == int(r.n_iter)


@pytest.fixture(scope="module")
def diag_model():
    with jax.enable_x64(True):
        x, y = _data([40, 60, 80], seed=4)
        return mc.fit(jax.random.key(0), x, y, 3, 2, covariance_type="diag"), x


@pytest.mark.slow
def test_bayes_rule_matches_scipy(diag_model):
    model, _ = diag_model
    covariance_type = "diag"
    xt, yt = _data([30, 30, 30], seed=5)
    joint = np.zeros((len(xt), 3))
    for c in range(3):
        comps = []
        for j in range(2):
            cov = np.asarray(model.params.covariances[c, j])
            cov = np.diag(cov) if covariance_type == "diag" else cov
            mean = np.asarray(model.params.means[c, j])
            comps.append(
                np.log(float(model.params.weights[c, j]))
                + multivariate_normal(mean, cov).logpdf(xt)
            )
        joint[:, c] = logsumexp(np.stack(comps), axis=0) + float(model.log_priors[c])
    post = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))
    np.testing.assert_allclose(np.asarray(mc.predict_proba(model, xt)), post, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(mc.predict(model, xt)), post.argmax(1))
    acc = (post.argmax(1) == yt).mean()
    np.testing.assert_allclose(float(mc.score(model, xt, yt)), acc, rtol=1e-6)
    np.testing.assert_allclose(float(mc.error_rate(model, xt, yt)), 1 - acc, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["jit", "vmap"])
@pytest.mark.slow
def test_predict_under_jit_and_vmap(mode, diag_model):
    model, x = diag_model
    eager = np.asarray(mc.predict_proba(model, x))
    f = functools.partial(mc.predict_proba, covariance_type="diag")
    if mode == "jit":
        got = jax.jit(f)(model, x)
    else:
        got = jax.vmap(f, in_axes=(None, 0))(model, x.reshape(6, 30, 3)).reshape(180, 3)
    np.testing.assert_allclose(np.asarray(got), eager, rtol=1e-10)


BAD = [
    ("y_shape", dict(y=np.zeros(5, int)), "y must have shape"),
    ("y_float", dict(y=np.zeros(30)), "integer"),
    ("y_range", dict(y=np.arange(30) % 4), r"\[0, n_classes\)"),
    ("missing_class", dict(y=np.arange(30) % 2), "classes \\[2\\] have none"),
    ("k_too_big", dict(k=11), "smallest class size"),
    ("init_params", dict(init=object()), "init must be"),
    ("init_unknown", dict(init="kmeans||"), "init must be"),
    ("cov_type", dict(covariance_type="banded"), "covariance_type"),
]


@pytest.mark.parametrize("name,kw,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, kw, match):
    x = np.random.default_rng(0).normal(size=(30, 2))
    args = dict(y=np.arange(30) % 3, k=2)
    args.update(kw)
    y, k = args.pop("y"), args.pop("k")
    with pytest.raises(ValueError, match=match):
        mc.fit(jax.random.key(0), x, y, 3, k, **args)
