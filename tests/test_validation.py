"""mljax.validation: each check accepts what its docstring allows and names the argument otherwise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mljax import validation as v


@pytest.mark.parametrize("good", [1, 7, np.int64(3)])
def test_positive_int_accepts(good):
    assert v.check_positive_int(good, "k") == int(good)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, 2.5, "3", None, np.array([2])])
def test_positive_int_refuses_with_name(bad):
    with pytest.raises(ValueError, match="k must be an int"):
        v.check_positive_int(bad, "k")


def test_check_int_bounds():
    assert v.check_int(5, "n", minimum=0, maximum=5) == 5
    with pytest.raises(ValueError, match="n must be an int <= 5; got 6"):
        v.check_int(6, "n", maximum=5)


def test_chunk_size():
    assert v.check_chunk_size(None, 128) == 128
    assert v.check_chunk_size(np.int32(7), 128) == 7
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="chunk_size must be None or an int >= 1"):
            v.check_chunk_size(bad, 128)


def test_matrix():
    x = v.check_matrix(np.arange(6).reshape(3, 2), "x")
    assert x.shape == (3, 2) and jnp.issubdtype(x.dtype, jnp.floating)
    for bad, match in (
        (np.zeros(4), "x must be 2-D"),
        (np.zeros((0, 2)), "at least one row"),
        (np.array([[1.0, np.nan]]), "x contains NaN"),
    ):
        with pytest.raises(ValueError, match=match):
            v.check_matrix(bad, "x")
    jax.jit(lambda a: v.check_matrix(a, "x"))(jnp.array([[np.nan]]))  # traced: no value check


def test_finite_skips_tracers_and_refuses_nan():
    v.check_finite(np.ones(3), "x")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        v.check_finite(np.array([1.0, np.inf]), "x")
    jax.jit(lambda a: v.check_finite(a, "x") or a)(jnp.array([np.nan]))  # traced: no check


@pytest.mark.parametrize(
    ("value", "kwargs", "ok"),
    [
        (0.0, {"minimum": 0.0}, True),
        (0.0, {"minimum": 0.0, "strict_minimum": True}, False),
        (1.0, {"maximum": 1.0, "strict_maximum": True}, False),
        (np.float32(0.5), {"minimum": 0.0, "maximum": 1.0}, True),
        (float("nan"), {}, False),
        (float("inf"), {"minimum": 0.0}, False),
        ("abc", {}, False),
        (True, {}, False),
        (np.array([1e-4, 1e-4]), {}, False),
        (1 + 2j, {}, False),
        (None, {"allow_none": True}, True),
        (None, {}, False),
    ],
)
def test_scalar(value, kwargs, ok):
    if ok:
        assert v.check_scalar(value, "tol", **kwargs) is value
    else:
        with pytest.raises(ValueError, match="tol must be a finite"):
            v.check_scalar(value, "tol", **kwargs)


def test_scalar_passes_tracers():
    out = jax.jit(lambda t: v.check_scalar(t, "tol", minimum=0.0))(-1.0)
    assert float(out) == -1.0


def test_sample_weight():
    np.testing.assert_array_equal(v.check_sample_weight(None, 3, jnp.float32), np.ones(3))
    with pytest.raises(ValueError, match=r"shape \(n,\) = \(3,\)"):
        v.check_sample_weight(np.ones(4), 3, jnp.float32)
    with pytest.raises(ValueError, match="finite and >= 0"):
        v.check_sample_weight(np.array([1.0, -1.0, 1.0]), 3, jnp.float32)
    with pytest.raises(ValueError, match="at least one positive"):
        v.check_sample_weight(np.zeros(3), 3, jnp.float32)
