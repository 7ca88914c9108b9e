"""Batching: every example exactly once per epoch; seeds change the order; the split helper."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mljax.data.batches import (
    epoch_batches,
    masked_mean,
    num_batches,
    permutation,
    stable_argsort,
    train_val_split,
)


@pytest.mark.parametrize("n,bs", [(10, 3), (12, 4), (7, 7), (1000, 128)])
@pytest.mark.parametrize("jit", [False, True])
def test_each_example_exactly_once(n, bs, jit):
    fn = jax.jit(epoch_batches, static_argnums=(1, 2)) if jit else epoch_batches
    b = fn(jax.random.key(3), n, bs)
    assert b.indices.shape == (num_batches(n, bs), bs)
    used = np.asarray(b.indices)[np.asarray(b.mask)]
    np.testing.assert_array_equal(np.sort(used), np.arange(n))


def test_drop_remainder_uses_full_batches_of_distinct_examples():
    b = epoch_batches(jax.random.key(0), 10, 3, drop_remainder=True)
    assert b.indices.shape == (3, 3) and bool(b.mask.all())
    assert len(np.unique(np.asarray(b.indices))) == 9


def test_seeds_give_different_orders_and_vmap():
    keys = jax.random.split(jax.random.key(0), 4)
    bs = jax.vmap(lambda k: epoch_batches(k, 50, 10).indices)(keys)
    orders = {tuple(np.asarray(o).ravel()) for o in bs}
    assert len(orders) == 4
    np.testing.assert_array_equal(bs[0], epoch_batches(keys[0], 50, 10).indices)


# n = 1,626 is the first size that jax shuffles in two sort rounds.
@pytest.mark.parametrize("n", [1, 2, 7, 500, 1625, 1626, 54_000])
def test_permutation_is_jax_random_permutation_bit_for_bit(n):
    for key in (*jax.random.split(jax.random.key(n), 3), jax.random.PRNGKey(n)):
        want = jax.random.permutation(key, n)
        chex.assert_trees_all_equal(permutation(key, n), want)
    keys = jax.random.split(jax.random.key(1), 4)
    chex.assert_trees_all_equal(
        jax.jit(jax.vmap(lambda k: permutation(k, n)))(keys),
        jax.vmap(lambda k: jax.random.permutation(k, n))(keys),
    )


def _sort_key_val_order(keys):
    return lax.sort_key_val(keys, jnp.arange(keys.shape[-1], dtype=jnp.int32), -1)[1]


@pytest.mark.parametrize("high", [1, 2, 5, 50, 2**32])
@pytest.mark.parametrize("n", [1, 2, 10, 300])
def test_stable_argsort_breaks_ties_by_index_as_sort_key_val(high, n):
    # Few distinct values: groups of equal keys up to all n (high 1).
    keys = jnp.asarray(np.random.default_rng(n).integers(0, high, n).astype(np.uint32))
    want = _sort_key_val_order(keys)
    chex.assert_trees_all_equal(stable_argsort(keys), want)
    chex.assert_trees_all_equal(jax.jit(stable_argsort)(keys), want)


def test_stable_argsort_vmapped_members_with_and_without_ties():
    rng = np.random.default_rng(0)
    keys = jnp.asarray(rng.integers(0, 4, (6, 50)).astype(np.uint32))
    keys = keys.at[0].set(jnp.arange(50, dtype=jnp.uint32)[::-1])  # distinct, reversed
    chex.assert_trees_all_equal(
        jax.jit(jax.vmap(stable_argsort))(keys), jax.vmap(_sort_key_val_order)(keys)
    )


def test_masked_mean_matches_mean_of_real_examples():
    b = epoch_batches(jax.random.key(1), 10, 4)
    values = jnp.arange(10.0)[b.indices] ** 2
    total = sum(masked_mean(values[i], b.mask[i]) * b.mask[i].sum() for i in range(3))
    np.testing.assert_allclose(total / 10, np.mean(np.arange(10.0) ** 2), rtol=1e-6)


def test_batch_size_errors():
    with pytest.raises(ValueError, match="batch_size 11 is larger than the number of examples 10"):
        epoch_batches(jax.random.key(0), 10, 11)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        num_batches(10, 0)


def test_train_val_split_deterministic_partition_and_stratified():
    tr, va = train_val_split(100, 0.2, seed=5)
    assert len(va) == 20 and len(tr) == 80
    np.testing.assert_array_equal(np.sort(np.r_[tr, va]), np.arange(100))
    _tr2, va2 = train_val_split(100, 0.2, seed=5)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, train_val_split(100, 0.2, seed=6)[1])
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    _, va = train_val_split(100, 10, seed=0, labels=labels)
    np.testing.assert_array_equal(np.bincount(labels[va]), [4, 3, 2, 1])
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\)"):
        train_val_split(100, 1.5)
    with pytest.raises(ValueError, match="at least one example on each side"):
        train_val_split(100, 100)
