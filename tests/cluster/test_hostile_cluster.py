"""Hostile input to k-means and GMM (issue #15): every call ends in a ``ValueError`` whose
message names the argument, or a finite, correct result; never an error from inside JAX,
LAPACK or NumPy, a process abort, or a silent NaN.

Shapes are fixed (each new shape recompiles); the property tests vary values, not sizes.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mljax.cluster import gmm, kmeans
from mljax.cluster._checks import _spread_screen, check_no_overflow

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KEY = jax.random.key(0)


def _params():
    return gmm.GMMParams(
        np.array([0.5, 0.5], "f4"),
        np.zeros((2, 2), "f4"),
        np.stack([np.eye(2)] * 2).astype("f4"),
    )


def _blobs(n=40, d=2, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, d).astype("f4")
    x[: n // 2] -= 10.0
    x[n // 2 :] += 10.0
    truth = np.repeat([0, 1], [n // 2, n - n // 2])
    return x, truth


def _same_partition(labels, truth):
    labels = np.asarray(labels)
    return np.array_equal(labels, truth) or np.array_equal(labels, 1 - truth)


# ----------------------------------------------------------------------------- gmm.sample


@pytest.mark.parametrize(
    ("n", "match"),
    [(10**12, "n = 1,000,000,000,000 would need"), (-1, "n must be an int >= 0"),
     (2.5, "n must be an int"), (True, "n must be an int"), ("3", "n must be an int")],
)  # fmt: skip
def test_sample_refuses_bad_n(n, match):
    with pytest.raises(ValueError, match=match):
        gmm.sample(KEY, _params(), n)


def test_sample_zero_and_valid_n():
    x, z = gmm.sample(KEY, _params(), 0)
    assert x.shape == (0, 2) and z.shape == (0,)
    x, z = gmm.sample(KEY, _params(), np.int64(7))
    assert x.shape == (7, 2) and np.all(np.isfinite(x))


def test_sample_refuses_non_pd_covariance():
    p = _params()._replace(covariances=-_params().covariances)
    with pytest.raises(ValueError, match="params.covariances must be positive definite"):
        gmm.sample(KEY, p, 5)


# ----------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.slow
def test_gmm_fit_half_precision_computes_in_float32(dtype):
    x, truth = _blobs()
    res = gmm.fit(KEY, jnp.asarray(x, dtype), 2)
    assert res.params.means.dtype == jnp.float32
    assert np.isfinite(float(res.log_likelihood))
    assert _same_partition(gmm.predict(jnp.asarray(x, dtype), res.params), truth)
    ref = gmm.fit(KEY, jnp.asarray(jnp.asarray(x, dtype), jnp.float32), 2)
    np.testing.assert_allclose(res.log_likelihood, ref.log_likelihood, rtol=1e-5)


def test_kmeans_fit_half_precision_still_accepted():
    x, truth = _blobs()
    res = kmeans.fit(KEY, jnp.asarray(x, jnp.float16), 2)
    assert _same_partition(res.labels, truth)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("fn", [gmm.e_step, gmm.predict, gmm.predict_proba, gmm.score_samples])
def test_gmm_kernels_refuse_other_dimension(fn):
    with pytest.raises(ValueError, match="params.means has d = 2 features but x has d = 3"):
        fn(np.zeros((5, 3), "f4"), _params())


@pytest.mark.parametrize("fn", [gmm.e_step, gmm.predict])
def test_gmm_kernels_refuse_1d_means(fn):
    p = _params()._replace(means=np.zeros(2, "f4"))
    with pytest.raises(ValueError, match=r"params.means must be 2-D"):
        fn(np.zeros((5, 2), "f4"), p)


@pytest.mark.parametrize(
    ("x", "c", "match"),
    [(np.zeros((0, 2), "f4"), np.zeros((2, 2), "f4"), "x must have at least one row"),
     (np.zeros((5, 2), "f4"), np.zeros((0, 2), "f4"), "centroids must have shape"),
     (np.zeros((5, 2), "f4"), np.full((2, 2), np.nan, "f4"), "centroids contains NaN"),
     (np.zeros((5, 2), "f4"), np.zeros((2, 2), "c8"), "centroids must be real")],
)  # fmt: skip
@pytest.mark.parametrize("fn", [kmeans.predict, kmeans.transform])
def test_kmeans_predict_refuses(fn, x, c, match):
    with pytest.raises(ValueError, match=match):
        fn(x, c)


def test_m_step_refuses_zero_components():
    with pytest.raises(ValueError, match="log_resp must have shape .* k >= 1"):
        gmm.m_step(np.zeros((5, 2), "f4"), np.zeros((5, 0), "f4"))


# ----------------------------------------------------------------------------- kmeans.fit args


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"tol": "abc"}, "tol must be"), ({"tol": np.array([1e-4, 1e-4])}, "tol must be"),
     ({"init": None}, "init must be one of"), ({"tol": -1.0}, "tol must be"),
     ({"tol": float("nan")}, "tol must be")],
)  # fmt: skip
def test_kmeans_fit_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmeans.fit(KEY, _blobs()[0], 2, **kwargs)


# ----------------------------------------------------------------------------- complex input


@pytest.mark.parametrize("fit", [kmeans.fit, gmm.fit])
def test_fit_refuses_complex(fit):
    x = _blobs()[0]
    with pytest.raises(ValueError, match="x must be real"):
        fit(KEY, x + 1j, 2)
    with pytest.raises(ValueError, match="sample_weight must be real"):
        fit(KEY, x, 2, sample_weight=np.ones(len(x)) + 0j)


def test_gmm_kernels_refuse_complex():
    with pytest.raises(ValueError, match="x must be real"):
        gmm.e_step(np.zeros((5, 2), "c8"), _params())
    with pytest.raises(ValueError, match="log_resp must be real"):
        gmm.m_step(np.zeros((5, 2), "f4"), np.zeros((5, 2), "c8"))


# ----------------------------------------------------------------------------- overflow


@pytest.mark.parametrize(("fit", "scale"), [(kmeans.fit, 1e20), (gmm.fit, 1e30), (gmm.fit, 1e20)])
def test_fit_refuses_data_that_overflow_float32(fit, scale):
    with pytest.raises(ValueError, match="x overflows float32"):
        fit(KEY, _blobs()[0] * np.float32(scale), 2)


@pytest.mark.parametrize("fit", [kmeans.fit, gmm.fit])
def test_fit_refuses_weights_that_overflow_float32(fit):
    x = _blobs()[0]
    with pytest.raises(ValueError, match="sample_weight sums to .* overflows float32"):
        fit(KEY, x, 2, sample_weight=np.full(len(x), 3e38, "f4"))


@pytest.mark.parametrize("fraction", [1e-3, 0.01, 0.1, 0.5, 0.9, 1.1, 2.0, 50.0])
@pytest.mark.parametrize("fit", [kmeans.fit, gmm.fit])
def test_overflow_decision_is_the_closed_form_on_either_side_of_the_bound(fit, fraction):
    """Data scaled so that the bound ``4 · sum(w) · max ||x_n - mean||²`` (float64, numpy) is
    ``fraction`` of float32's largest value: refused exactly when it is >= 1. Fractions above
    1/32 defeat the one-pass screen, so the exact host check decides there."""
    x = _blobs()[0].astype(np.float64)
    w = np.linspace(0.5, 2.0, len(x))
    bound = 4.0 * w.sum() * np.max(np.sum((x - w @ x / w.sum()) ** 2, axis=1))
    xs = (x * np.sqrt(fraction * float(np.finfo(np.float32).max) / bound)).astype("f4")
    ws = w.astype("f4")
    x64, w64 = xs.astype(np.float64), ws.astype(np.float64)
    mean = w64 @ x64 / w64.sum()
    exact = 4.0 * w64.sum() * np.max(np.sum((x64 - mean) ** 2, axis=1))
    if exact < float(np.finfo(np.float32).max):
        check_no_overflow(jnp.asarray(xs), jnp.asarray(ws), "test")
        res = fit(KEY, xs, 2, sample_weight=ws, max_iter=3)
        fitted = (res.centroids, res.inertia) if fit is kmeans.fit else res.params
        chex.assert_tree_all_finite(fitted)
    else:
        with pytest.raises(ValueError, match="x overflows float32"):
            fit(KEY, xs, 2, sample_weight=ws)


def test_overflow_screen_accepts_ordinary_data_and_lets_nan_through_to_its_message():
    x = _blobs()[0]
    assert float(_spread_screen(jnp.asarray(x))) == pytest.approx(
        np.max(np.sum((x.astype(np.float64) - x[0]) ** 2, axis=1)), rel=1e-5
    )
    bad = x.copy()
    bad[7, 1] = np.nan
    assert float(_spread_screen(jnp.asarray(bad))) == np.inf
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        check_no_overflow(jnp.asarray(bad), jnp.ones(len(x)), "test")


@pytest.mark.parametrize("scale", [1e-10, 1e10, 1e15])
@pytest.mark.slow
def test_fit_large_but_representable_scales_are_correct(scale):
    x, truth = _blobs()
    xs = x * np.float32(scale)
    km = kmeans.fit(KEY, xs, 2)
    assert _same_partition(km.labels, truth) and np.isfinite(float(km.inertia))
    res = gmm.fit(KEY, xs, 2, reg_covar=0.0)
    assert np.all(np.isfinite(res.params.covariances))
    assert _same_partition(gmm.predict(xs, res.params), truth)


# ----------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("means", np.full((2, 2), np.nan, "f4"), "params.means contains NaN"),
     ("covariances", -np.stack([np.eye(2)] * 2).astype("f4"), "positive definite"),
     ("covariances", np.stack([np.ones((2, 2))] * 2).astype("f4"), "positive definite"),
     ("weights", np.array([-0.5, 1.5], "f4"), "params.weights must be >= 0"),
     ("weights", np.array([0.0, 0.0], "f4"), "params.weights must be >= 0"),
     ("weights", np.array([0.5, 0.5, 0.0], "f4"), r"params.weights must have shape")],
)  # fmt: skip
@pytest.mark.parametrize("fn", [gmm.e_step, gmm.predict, gmm.score])
def test_gmm_kernels_refuse_invalid_params(fn, field, value, match):
    p = _params()._replace(**{field: value})
    with pytest.raises(ValueError, match=match):
        fn(np.zeros((5, 2), "f4"), p)


@pytest.mark.parametrize(
    ("log_resp", "kwargs", "match"),
    [(np.full((5, 2), np.nan, "f4"), {}, "log_resp contains NaN"),
     (np.full((5, 2), np.inf, "f4"), {}, "log_resp contains NaN or \\+inf"),
     (np.zeros((5, 2), "f4"), {"reg_covar": -1.0}, "reg_covar must be"),
     (np.zeros((5, 2), "f4"), {"reg_covar": float("nan")}, "reg_covar must be"),
     (np.zeros((5, 2), "f4"), {"min_variance": -1.0}, "min_variance must be")],
)  # fmt: skip
def test_m_step_refuses_invalid(log_resp, kwargs, match):
    x = np.random.RandomState(0).randn(5, 2).astype("f4")
    with pytest.raises(ValueError, match=match):
        gmm.m_step(x, log_resp, **kwargs)


def test_m_step_accepts_minus_inf_log_resp():
    x = np.random.RandomState(0).randn(6, 2).astype("f4")
    log_resp = np.log(np.array([[1, 0]] * 3 + [[0, 1]] * 3, "f4"))
    p = gmm.m_step(x, log_resp)
    np.testing.assert_allclose(p.means, [x[:3].mean(0), x[3:].mean(0)], rtol=1e-5, atol=1e-6)


def test_traced_params_are_not_checked_and_give_nan():
    """Documented behaviour under jit: value checks are skipped, the result is NaN."""
    bad = _params()._replace(means=jnp.full((2, 2), jnp.nan))
    ll = jax.jit(lambda p: gmm.e_step(jnp.zeros((5, 2)), p)[0])(bad)
    assert np.isnan(float(ll))


# ----------------------------------------------------------------------------- properties

HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(max_magnitude=10),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=2, max_size=2),
)


def _ok_or_named(fn, name):
    """Runs ``fn``: a ValueError/TypeError naming ``name``, or returns the result."""
    try:
        return fn()
    except (ValueError, TypeError) as err:
        assert name in str(err), f"message does not name {name!r}: {err}"
        return None


# Counts: every accepted count is a new output shape, hence a new compilation, so the integers
# drawn are a fixed few on each side of the boundaries instead of any integer.
HOSTILE_COUNT = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.sampled_from([-(10**20), -(2**31), -1, 0, 1, 3, 2**31, 2**63, 10**20]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(max_magnitude=10),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=2, max_size=2),
)


@SETTINGS
@given(n=HOSTILE_COUNT)
@pytest.mark.slow
def test_property_sample_n(n):
    out = _ok_or_named(lambda: gmm.sample(KEY, _params(), n), "n")
    if out is not None:
        assert out[0].shape == (int(n), 2) and np.all(np.isfinite(out[0]))


@SETTINGS
@given(tol=HOSTILE)
@pytest.mark.slow
def test_property_kmeans_tol(tol):
    x, truth = _blobs()
    out = _ok_or_named(lambda: kmeans.fit(KEY, x, 2, tol=tol), "tol")
    if out is not None:
        assert _same_partition(out.labels, truth) and np.isfinite(float(out.inertia))


@SETTINGS
@given(reg=HOSTILE)
@pytest.mark.slow
def test_property_m_step_reg_covar(reg):
    x, truth = _blobs()
    log_resp = np.log(np.eye(2, dtype="f4")[truth])
    out = _ok_or_named(lambda: gmm.m_step(x, log_resp, reg_covar=reg), "reg_covar")
    if out is not None:
        assert np.all(np.isfinite(out.covariances))


@SETTINGS
@given(
    value=st.floats(allow_nan=True, allow_infinity=True, width=32),
    row=st.integers(0, 1),
    col=st.integers(0, 1),
    field=st.sampled_from(["means", "covariances_diag", "weights"]),
)
@pytest.mark.slow
def test_property_e_step_params(value, row, col, field):
    p = _params()
    means, cov, w = p.means.copy(), p.covariances.copy(), p.weights.copy()
    if field == "means":
        means[row, col] = value
    elif field == "covariances_diag":
        cov[row, col, col] = value
    else:
        w[row] = value
    p = gmm.GMMParams(w, means, cov)
    x = np.random.RandomState(0).randn(8, 2).astype("f4")
    out = _ok_or_named(lambda: gmm.e_step(x, p), "params.")
    if out is not None:
        assert np.isfinite(float(out[0])) and not np.any(np.isnan(out[1]))


@SETTINGS
@given(scale=st.floats(min_value=1e-30, max_value=1e38), log_w=st.floats(-30, 38))
def test_property_scale_and_weights(scale, log_w):
    """Scaled data and weights: refused as overflowing float32, or the two blobs found with
    finite inertia."""
    x, truth = _blobs()
    xs = (x.astype(np.float64) * scale).astype("f4")
    w = np.full(len(x), 10.0**log_w, "f4")
    if not np.all(np.isfinite(xs)) or not np.all(w > 0) or not np.all(np.isfinite(w)):
        return  # not representable in float32: covered by check_matrix / check_sample_weight
    try:
        res = kmeans.fit(KEY, xs, 2, sample_weight=w)
    except ValueError as err:
        assert "overflows float32" in str(err), err
        return
    assert np.isfinite(float(res.inertia))
    if scale > 1e-20:  # below, the blobs' offsets are subnormal
        assert _same_partition(res.labels, truth)


def test_nan_data_are_refused_when_only_the_weights_are_traced():
    """Inside jit with the weights traced and the data concrete, the overflow bound cannot be
    formed, but NaN data are still refused with the data's message."""
    bad = _blobs()[0].copy()
    bad[3, 0] = np.nan
    bad = jnp.asarray(bad)  # a concrete array closed over by the jitted function

    @jax.jit
    def fit_with(w):
        return kmeans.fit(KEY, bad, 2, sample_weight=w).inertia

    with pytest.raises(ValueError, match="x contains NaN or inf"):
        fit_with(jnp.ones(len(bad)))
