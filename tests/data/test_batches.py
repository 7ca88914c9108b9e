"""Batching: every example exactly once per epoch; seeds change the order; the split helper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mljax.data.batches import epoch_batches, masked_mean, num_batches, train_val_split


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
