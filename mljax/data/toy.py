"""Toy data: Gaussian blobs, the TensorFlow Playground sets, feature maps, the seed tables.

Every generator is a pure function of a PRNG key with static sizes, so it can be jitted
and vmapped over keys.

Laws:

* ``blobs``: scikit-learn's ``make_blobs``: ``centers`` centres uniform in ``center_box``
  (per coordinate), ``n // centers`` points per centre (the first ``n % centers`` centres
  one more), each point ``centre + std * N(0, I)``, shuffled.
* Playground (``playground/src/dataset.ts``), labels in {-1, +1}, half the points per class
  where the Playground does so:

  - ``circle``: radius 5; positives at r ~ U(0, 2.5), negatives at r ~ U(3.5, 5), angle
    ~ U(0, 2π); the label is whether the *noisy* point (noise ~ U(-5, 5)·noise per axis)
    lies within 2.5 of the origin, the stored point is the clean one.
  - ``gauss``: two Gaussians at (2, 2) (+1) and (-2, -2) (-1), variance
    0.5 + 7·noise (the Playground's linear map [0, 0.5] → [0.5, 4]).
  - ``xor``: x, y ~ U(-5, 5) pushed 0.3 away from the axes; label sign(x'·y') of the noisy
    point (noise ~ U(-5, 5)·noise).
  - ``spiral``: two arms, i = 0..n/2-1, r = 5i/(n/2), t = 1.75·2π·i/(n/2) + δ (δ = 0, π),
    point r(sin t, cos t) + U(-1, 1)·noise per axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mljax.validation import (
    check_allocation,
    check_finite,
    check_positive_int,
    check_scalar,
    is_concrete,
)

__all__ = [
    "FEATURE_NAMES",
    "PLAYGROUND_DATASETS",
    "SIGMOID_NET_DELTA_TABLE",
    "SIGMOID_NET_REPORTED_LOSS",
    "SIGMOID_NET_TRAIN_X",
    "SIGMOID_NET_TRAIN_Y",
    "SIGMOID_NET_WEIGHTS",
    "TWOLAYER_TOY_CORRECT_SCORES",
    "TWOLAYER_TOY_REPORTED_FINAL_LOSS",
    "TWOLAYER_TOY_REPORTED_REL_ERR",
    "PlaygroundSplit",
    "TwoLayerToy",
    "blobs",
    "circle",
    "features",
    "gauss",
    "playground",
    "playground_split",
    "spiral",
    "twolayer_toy",
    "xor",
]


PLAYGROUND_DATASETS = ("circle", "gauss", "xor", "spiral")
FEATURE_NAMES = ("x1", "x2", "x1^2", "x2^2", "x1*x2", "sin(x1)", "sin(x2)")


# ----------------------------------------------------------------------------- blobs


def blobs(
    key: jax.Array,
    n_samples: int = 4000,
    centers: int | jax.Array = 4,
    *,
    n_features: int = 2,
    cluster_std: float | jax.Array = 0.60,
    center_box: tuple[float, float] = (-10.0, 10.0),
    dtype=jnp.float32,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Isotropic Gaussian blobs with the law of scikit-learn's ``make_blobs``.

    Args:
        key: PRNG key.
        n_samples: total number of points (static).
        centers: number of centres (drawn uniformly in ``center_box``), or an array
            ``[k, n_features]`` of given centres.
        n_features: dimension (ignored when centres are given).
        cluster_std: standard deviation, scalar or one per centre ``[k]``.
        center_box: ``(low, high)`` of the uniform centre law.

    Returns:
        ``(x [n, d], labels [n] int32, centres [k, d])``.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    k_centers, k_noise, k_perm = jax.random.split(key, 3)
    if isinstance(centers, int | np.integer) and not isinstance(centers, bool):
        centers = check_positive_int(centers, "centers")
        n_features = check_positive_int(n_features, "n_features")
        check_allocation(centers * n_features, jnp.dtype(dtype).itemsize, f"centers={centers}")
        lo, hi = center_box
        check_scalar(lo, "center_box[0]")
        check_scalar(hi, "center_box[1]")
        if not lo < hi:
            raise ValueError(f"center_box must be (low, high) with low < high, got {center_box}")
        c = jax.random.uniform(k_centers, (centers, n_features), dtype, lo, hi)
    else:
        try:
            c = jnp.asarray(
                centers if not is_concrete(centers) else np.asarray(centers, float), dtype
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"centers must be an int or a [k, d] array, got {centers!r}") from e
        if c.ndim != 2:
            raise ValueError(f"centers must be an int or a [k, d] array, got shape {c.shape}")
        check_finite(c, "centers")
    k, d = c.shape
    check_allocation(
        n_samples * d, jnp.dtype(dtype).itemsize, f"n_samples={n_samples} points of {d} features"
    )
    if n_samples < k:
        raise ValueError(f"n_samples ({n_samples}) must be >= the number of centres ({k})")
    counts = np.full(k, n_samples // k)
    counts[: n_samples % k] += 1
    labels = jnp.asarray(np.repeat(np.arange(k), counts), jnp.int32)
    try:
        host = cluster_std if not is_concrete(cluster_std) else np.asarray(cluster_std, float)
        std = jnp.asarray(host, dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cluster_std must be a finite number >= 0, got {cluster_std!r}") from e
    if std.ndim > 1 or std.size not in (1, k):
        raise ValueError(f"cluster_std must be a scalar or [k] = [{k}], got shape {std.shape}")
    if is_concrete(std) and not np.all(np.isfinite(np.asarray(std)) & (np.asarray(std) >= 0)):
        raise ValueError(f"cluster_std must be finite and >= 0, got {cluster_std!r}")
    std = jnp.broadcast_to(std, (k,))
    x = c[labels] + std[labels, None] * jax.random.normal(k_noise, (n_samples, d), dtype)
    perm = jax.random.permutation(k_perm, n_samples)
    return x[perm], labels[perm], c


# ----------------------------------------------------------------------------- Playground


def _uniform(key, shape, lo, hi):
    return jax.random.uniform(key, shape, jnp.float32, lo, hi)


def _halves(n: int) -> int:
    n = check_positive_int(n, "n")
    check_allocation(2 * n, 4, f"a Playground set of {n} points")
    if n < 2 or n % 2:
        raise ValueError(f"n must be an even number >= 2 (half the points per class), got {n}")
    return n // 2


def circle(
    key: jax.Array, n: int = 500, noise: float | jax.Array = 0.0
) -> tuple[jax.Array, jax.Array]:
    """The Playground's ``circle`` set: ``(x [n, 2], y [n] in {-1, +1})``."""
    half = _halves(n)
    radius = 5.0
    kr1, kr2, ka, kn = jax.random.split(key, 4)
    r = jnp.concatenate(
        [_uniform(kr1, (half,), 0.0, radius * 0.5), _uniform(kr2, (half,), radius * 0.7, radius)]
    )
    angle = _uniform(ka, (n,), 0.0, 2 * math.pi)
    x = jnp.stack([r * jnp.sin(angle), r * jnp.cos(angle)], axis=1)
    noisy = x + _uniform(kn, (n, 2), -radius, radius) * noise
    y = jnp.where(jnp.linalg.norm(noisy, axis=1) < radius * 0.5, 1.0, -1.0)
    return x, y


def gauss(
    key: jax.Array, n: int = 500, noise: float | jax.Array = 0.0
) -> tuple[jax.Array, jax.Array]:
    """The Playground's ``gauss`` set (two Gaussians): ``(x [n, 2], y [n] in {-1, +1})``."""
    half = _halves(n)
    variance = 0.5 + (4.0 - 0.5) * jnp.asarray(noise, jnp.float32) / 0.5
    centres = jnp.concatenate([jnp.full((half, 2), 2.0), jnp.full((half, 2), -2.0)])
    x = centres + jnp.sqrt(variance) * jax.random.normal(key, (n, 2), jnp.float32)
    y = jnp.concatenate([jnp.ones(half), -jnp.ones(half)])
    return x, y


def xor(
    key: jax.Array, n: int = 500, noise: float | jax.Array = 0.0
) -> tuple[jax.Array, jax.Array]:
    """The Playground's ``xor`` set: ``(x [n, 2], y [n] in {-1, +1})``."""
    n = check_positive_int(n, "n")
    check_allocation(2 * n, 4, f"a Playground set of {n} points")
    kx, kn = jax.random.split(key)
    x = _uniform(kx, (n, 2), -5.0, 5.0)
    x = x + jnp.where(x > 0, 0.3, -0.3)
    noisy = x + _uniform(kn, (n, 2), -5.0, 5.0) * noise
    y = jnp.where(noisy[:, 0] * noisy[:, 1] >= 0, 1.0, -1.0)
    return x, y


def spiral(
    key: jax.Array, n: int = 500, noise: float | jax.Array = 0.0
) -> tuple[jax.Array, jax.Array]:
    """The Playground's two-arm ``spiral`` set: ``(x [n, 2], y [n] in {-1, +1})``."""
    half = _halves(n)
    i = jnp.arange(half, dtype=jnp.float32)
    r = i / half * 5.0
    t = 1.75 * i / half * 2 * math.pi
    t = jnp.concatenate([t, t + math.pi])
    r = jnp.concatenate([r, r])
    x = (
        jnp.stack([r * jnp.sin(t), r * jnp.cos(t)], axis=1)
        + _uniform(key, (n, 2), -1.0, 1.0) * noise
    )
    y = jnp.concatenate([jnp.ones(half), -jnp.ones(half)])
    return x, y


_GENERATORS = {"circle": circle, "gauss": gauss, "xor": xor, "spiral": spiral}


class PlaygroundSplit(NamedTuple):
    """A Playground dataset split into train and test (labels in {-1, +1})."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


def playground(
    name: str, key: jax.Array, n: int = 500, noise: float | jax.Array = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Generates the Playground set ``name`` (one of :data:`PLAYGROUND_DATASETS`)."""
    if name not in _GENERATORS:
        raise ValueError(
            f"unknown Playground dataset {name!r}; allowed: {', '.join(PLAYGROUND_DATASETS)}"
        )
    if is_concrete(noise):
        value = np.asarray(noise)
        real = np.issubdtype(value.dtype, np.number) and not np.iscomplexobj(value)
        if value.ndim or not real or not 0 <= value <= 0.5:
            raise ValueError(f"noise must lie in [0, 0.5] (the Playground's range), got {noise!r}")
    return _GENERATORS[name](key, n, noise)


def playground_split(
    name: str,
    key: jax.Array,
    n: int = 500,
    noise: float | jax.Array = 0.0,
    train_fraction: float = 0.7,
) -> PlaygroundSplit:
    """Generates a Playground set and splits it by a permutation drawn from ``key``.

    The split is deterministic given ``key``: the first ``round(train_fraction · n)`` points
    of the permutation train, the rest test (70/30 by default, as in SPEC E5).
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    k_data, k_split = jax.random.split(key)
    x, y = playground(name, k_data, n, noise)
    n_train = round(train_fraction * n)
    if not 1 <= n_train <= n - 1:
        raise ValueError(f"train_fraction {train_fraction} leaves an empty split for n = {n}")
    perm = jax.random.permutation(k_split, n)
    tr, te = perm[:n_train], perm[n_train:]
    return PlaygroundSplit(x[tr], y[tr], x[te], y[te])


def features(x: jax.Array, names: Sequence[str]) -> jax.Array:
    """The Playground's input features of ``x [n, 2]``: a ``[n, len(names)]`` array.

    Args:
        x: points ``[..., 2]``.
        names: a selection of :data:`FEATURE_NAMES` (``x1, x2, x1^2, x2^2, x1*x2, sin(x1),
            sin(x2)``), in the order wanted.
    """
    if len(names) == 0:
        raise ValueError(f"names must select at least one of {FEATURE_NAMES}")
    bad = [n for n in names if n not in FEATURE_NAMES]
    if bad:
        raise ValueError(f"unknown feature(s) {bad}; allowed: {', '.join(FEATURE_NAMES)}")
    if x.shape[-1] != 2:
        raise ValueError(f"x must have 2 columns (x1, x2), got shape {x.shape}")
    x1, x2 = x[..., 0], x[..., 1]
    table = {
        "x1": x1,
        "x2": x2,
        "x1^2": x1 * x1,
        "x2^2": x2 * x2,
        "x1*x2": x1 * x2,
        "sin(x1)": jnp.sin(x1),
        "sin(x2)": jnp.sin(x2),
    }
    return jnp.stack([table[n] for n in names], axis=-1)


# ----------------------------------------------------------------------------- seed tables

# Seed 002, Question 2 (SPEC E2): the network: input neuron 5 (identity), hidden 2, 3, 4
# (sigmoid), output 1 (sigmoid), no biases. Keys are "w<from><to>".
SIGMOID_NET_WEIGHTS = {"w52": -3.0, "w53": 2.0, "w54": -10.0, "w21": 3.0, "w31": -4.0, "w41": -1.0}

# The report's forward/backward table, as printed (3 significant digits).
# a: pre-activations, z: activations, d: dLoss/da; loss 0.5 (z1 - t)^2.
SIGMOID_NET_DELTA_TABLE = (
    {
        "x": 0.0,
        "t": 0.5,
        "a1": -1.0,
        "a2": 0.0,
        "a3": 0.0,
        "a4": 0.0,
        "z1": 0.269,
        "z2": 0.5,
        "z3": 0.5,
        "z4": 0.5,
        "d1": -0.045,
        "d2": -0.034,
        "d3": 0.045,
        "d4": 0.011,
        "d5": 0.080,
    },
    {
        "x": 1.0,
        "t": 0.1,
        "a1": -3.38,
        "a2": -3.0,
        "a3": 2.0,
        "a4": -10.0,
        "z1": 0.033,
        "z2": 0.047,
        "z3": 0.88,
        "z4": 4.5e-5,
        "d1": -0.0021,
        "d2": -0.00029,
        "d3": 0.00090,
        "d4": 9.7e-8,
        "d5": 0.0027,
    },
)

# Seed 002, Question 2 training set for the 1-3-1 sigmoid net (no biases, w ~ U(0, 1),
# full-batch GD, lr 0.1, 1000 epochs, gradient summed over samples).
SIGMOID_NET_TRAIN_X = (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
SIGMOID_NET_TRAIN_Y = (
    0.7312,
    0.7339,
    0.7438,
    0.7832,
    0.8903,
    0.9820,
    0.8114,
    0.5937,
    0.5219,
    0.5049,
    0.5002,
)
SIGMOID_NET_REPORTED_LOSS = {0: 0.01722, 900: 0.00661}  # mean of 0.5 err^2, by epoch


class TwoLayerToy(NamedTuple):
    """Seed 001's toy problem for the two-layer net (affine-ReLU-affine-softmax).

    Attributes:
        x: ``[5, 4]`` inputs; y: ``[5]`` labels in {0, 1, 2}.
        w1 ``[4, 10]``, b1 ``[10]``, w2 ``[10, 3]``, b2 ``[3]``: the initial parameters.
        reg: the L2 strength of the report's loss check.
        correct_scores: ``[5, 3]`` softmax probabilities the report prints as correct.
    """

    x: np.ndarray
    y: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    reg: float
    correct_scores: np.ndarray


TWOLAYER_TOY_CORRECT_SCORES = np.array(
    [
        [0.3644621, 0.22911264, 0.40642526],
        [0.47590629, 0.17217039, 0.35192332],
        [0.43035767, 0.26164229, 0.30800004],
        [0.41583127, 0.2983228, 0.28584593],
        [0.36328815, 0.32279939, 0.31391246],
    ]
)
# The report's gradient check (manual vs numerical, max relative error per parameter) and
# final SGD loss on the toy data.
TWOLAYER_TOY_REPORTED_REL_ERR = {
    "W1": 6.257855e-09,
    "b1": 1.250659e-09,
    "W2": 3.440708e-09,
    "b2": 3.865060e-11,
}
TWOLAYER_TOY_REPORTED_FINAL_LOSS = 0.01714960793873205


def twolayer_toy(dtype=np.float64) -> TwoLayerToy:
    """Seed 001's toy problem, rebuilt exactly as its notebook does with NumPy's legacy RNG.

    ``RandomState(0)``: ``W1 = 0.1·randn(4, 10)``, ``W2 = 0.1·randn(10, 3)``, zero biases;
    ``RandomState(1)``: ``X = 10·randn(5, 4)``; ``y = [0, 1, 2, 2, 1]``. The resulting
    softmax scores equal the report's ``correct scores`` (a test checks it).
    """
    rs = np.random.RandomState(0)
    w1 = 1e-1 * rs.randn(4, 10)
    w2 = 1e-1 * rs.randn(10, 3)
    x = 10 * np.random.RandomState(1).randn(5, 4)
    return TwoLayerToy(
        x=x.astype(dtype),
        y=np.array([0, 1, 2, 2, 1], np.int32),
        w1=w1.astype(dtype),
        b1=np.zeros(10, dtype),
        w2=w2.astype(dtype),
        b2=np.zeros(3, dtype),
        reg=0.05,
        correct_scores=TWOLAYER_TOY_CORRECT_SCORES.astype(dtype),
    )
