"""Property tests: the public entry points driven with hostile values.

Every call must end in one of two ways: a ``ValueError`` (``TypeError`` where only the type
is wrong) whose message names the argument, or a finite, correct result. Never another
exception from deep inside JAX, NumPy or pickle, never a hang, never a silent NaN.

Shapes are fixed where a JAX program is compiled (each new shape would recompile), and the
number of examples is kept small: the point is the variety of values, not of sizes.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mljax import metrics
from mljax.config import CommonConfig, parse
from mljax.data import images, toy

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values a user can type or pass by mistake: wrong types, non-finite floats, huge and negative
# numbers, fractions where an int is meant, containers.
HOSTILE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    # Small ints (each valid size compiles once) and sizes no machine holds.
    st.integers(min_value=-3, max_value=12),
    st.sampled_from([2**40, 2**62, 2**70, -(2**70)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(max_magnitude=1e3),
    st.text(max_size=5),
    st.lists(st.integers(-3, 3), max_size=3),
)


def _ends_well(call, *names):
    """Runs ``call``: returns its result, or None after a ValueError / TypeError that names
    one of ``names``; any other exception fails the test."""
    try:
        return call()
    except (ValueError, TypeError) as e:
        message = str(e)
        assert any(name in message for name in names), f"message names none of {names}: {e}"
        return None


# ----------------------------------------------------------------------------- data files


@SETTINGS
@given(st.binary(max_size=64), st.booleans())
def test_read_idx_on_arbitrary_bytes(tmp_path_factory, payload, gz):
    path = tmp_path_factory.mktemp("idx") / ("f.gz" if gz else "f")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    try:
        arr = images.read_idx(path)
    except ValueError as e:
        assert str(path) in str(e)
        return
    assert isinstance(arr, np.ndarray)


@SETTINGS
@given(st.integers(0, 5), st.integers(0, 2**32 - 1), st.binary(max_size=32))
def test_read_idx_with_lying_headers(tmp_path_factory, ndim, dim, body):
    """Headers that declare more (or less) than the file holds: a ValueError naming the file."""
    header = bytes([0, 0, 0x08, ndim]) + b"".join(struct.pack(">I", dim) for _ in range(ndim))
    path = tmp_path_factory.mktemp("idx") / "f.gz"
    path.write_bytes(gzip.compress(header + body))
    try:
        arr = images.read_idx(path)
    except ValueError as e:
        assert str(path) in str(e)
        return
    assert arr.size * arr.itemsize == len(body)


@SETTINGS
@given(
    st.recursive(
        st.one_of(
            st.none(), st.integers(), st.floats(), st.text(max_size=4), st.binary(max_size=4)
        ),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.sampled_from([b"data", b"labels", "data", "x"]), children),
        ),
        max_leaves=6,
    )
)
def test_cifar_reader_on_arbitrary_pickles(tmp_path_factory, obj):
    path = tmp_path_factory.mktemp("cifar") / "test_batch"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match=str(path)):
        images.read_cifar_python_batch(path)


# ----------------------------------------------------------------------------- generators


@SETTINGS
@given(HOSTILE_SCALARS, HOSTILE_SCALARS)
def test_blobs_sizes(n_samples, centers):
    out = _ends_well(
        lambda: toy.blobs(jax.random.key(0), n_samples, centers, n_features=2),
        "n_samples",
        "centers",
    )
    if out is not None:
        x, labels, _ = out
        assert x.shape == (n_samples, 2) and np.all(np.isfinite(np.asarray(x)))
        assert set(np.unique(np.asarray(labels))) <= set(range(centers))


@SETTINGS
@given(HOSTILE_SCALARS)
def test_blobs_cluster_std(std):
    out = _ends_well(lambda: toy.blobs(jax.random.key(0), 8, 2, cluster_std=std), "cluster_std")
    if out is not None:
        assert np.all(np.isfinite(np.asarray(out[0])))


@SETTINGS
@given(st.sampled_from(toy.PLAYGROUND_DATASETS), HOSTILE_SCALARS)
def test_playground_noise(name, noise):
    out = _ends_well(lambda: toy.playground(name, jax.random.key(0), 20, noise), "noise")
    if out is not None:
        x, y = out
        assert np.all(np.isfinite(np.asarray(x))) and set(np.unique(np.asarray(y))) <= {-1, 1}


# ----------------------------------------------------------------------------- metrics


@SETTINGS
@given(
    st.lists(
        st.one_of(st.integers(-3, 5), st.floats(allow_nan=True, allow_infinity=True)),
        min_size=0,
        max_size=6,
    )
)
@pytest.mark.slow
def test_adjusted_rand_index_labels(labels):
    out = _ends_well(
        lambda: metrics.adjusted_rand_index(np.asarray(labels), np.asarray(labels)),
        "labels_true",
        "labels_pred",
        "n_true",
    )
    if out is not None:
        assert float(out) == pytest.approx(1.0) or len(set(labels)) <= 1


# ----------------------------------------------------------------------------- command line


@SETTINGS
@given(
    st.sampled_from(["--seed", "--seeds"]),
    st.one_of(st.integers(-(2**80), 2**80).map(str), st.sampled_from(["nan", "1.5", "", "x"])),
)
def test_common_options(option, value):
    try:
        config = parse(CommonConfig, [option, value])
    except ValueError as e:
        assert option in str(e)
        return
    except SystemExit as e:  # tyro refused the type: usage error, exit code 2
        assert e.code == 2
        return
    assert 0 <= config.seed <= 2**32 - 1 and config.seeds >= 1


@SETTINGS
@given(st.sampled_from(["file", "file/below", "missing/deep/dir", "."]))
def test_out_option(tmp_path_factory, where):
    root = tmp_path_factory.mktemp("out")
    (root / "file").write_text("x")
    target = Path(root / where)
    try:
        parse(CommonConfig, ["--out", str(target)])
    except ValueError as e:
        assert "--out" in str(e) and where.startswith("file")
        return
    assert not where.startswith("file")
