"""Mini-batching that stays on device, and a deterministic train/validation split.

An epoch is a seeded permutation of ``[0, n)`` cut into batches of static size. Without
``drop_remainder`` the last batch is padded with index 0 and a ``False`` mask, so every
example is used exactly once per epoch and shapes stay static under ``jit``; losses should
be averaged with the mask (:func:`masked_mean`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "EpochBatches",
    "epoch_batches",
    "masked_mean",
    "num_batches",
    "permutation",
    "stable_argsort",
    "train_val_split",
]


class EpochBatches(NamedTuple):
    """Indices and validity mask of one epoch's batches.

    Attributes:
        indices: ``[num_batches, batch_size]`` int32 example indices.
        mask: ``[num_batches, batch_size]`` bool, ``False`` for padding.
    """

    indices: jax.Array
    mask: jax.Array


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """Batches per epoch (a static Python int)."""
    _check_sizes(n, batch_size)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def _check_sizes(n: int, batch_size: int) -> None:
    if int(n) < 1:
        raise ValueError(f"number of examples must be >= 1, got {n}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(batch_size) > int(n):
        raise ValueError(f"batch_size {batch_size} is larger than the number of examples {n}")


def epoch_batches(
    key: jax.Array, n: int, batch_size: int, *, drop_remainder: bool = False
) -> EpochBatches:
    """One epoch's batches from a seeded permutation; ``n`` and ``batch_size`` are static.

    Args:
        key: PRNG key for this epoch (fold in the epoch number for successive epochs).
        n: number of examples.
        batch_size: examples per batch.
        drop_remainder: drop the last ``n % batch_size`` examples of the permutation
            (a different subset each epoch) instead of padding the last batch.

    Returns:
        :class:`EpochBatches`.
    """
    nb = num_batches(n, batch_size, drop_remainder=drop_remainder)
    perm = permutation(key, n)
    total = nb * batch_size
    if total <= n:
        idx = perm[:total]
        mask = jnp.ones((total,), dtype=bool)
    else:
        pad = total - n
        idx = jnp.concatenate([perm, jnp.zeros((pad,), jnp.int32)])
        mask = jnp.concatenate([jnp.ones((n,), bool), jnp.zeros((pad,), bool)])
    return EpochBatches(idx.reshape(nb, batch_size), mask.reshape(nb, batch_size))


def permutation(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.permutation(key, n)``, bit for bit, as int32, in a third to a half of its
    time on CPU (``python -m benchmarks.shuffle``).

    JAX shuffles ``arange(n)`` by a stable sort on random 32-bit keys (two rounds from
    n = 1,626 on). XLA's CPU sort of keys with a value operand is about 5x slower than its
    sort of the keys alone, so each round here sorts the keys alone, finds every key's rank by
    binary search and scatters the indices (:func:`stable_argsort`). ``n`` is static.
    """
    n = int(n)
    # jax.random's own number of rounds (tjablin@'s heuristic, exponent 3).
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
    x = jnp.arange(n, dtype=jnp.int32)
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        x = x[stable_argsort(jax.random.bits(subkey, (n,), jnp.uint32))]
    return x


def stable_argsort(keys: jax.Array) -> jax.Array:
    """Stable ascending argsort of a 1-D unsigned-integer array (ties in index order): the
    order of ``lax.sort_key_val(keys, arange(n))``, from a sort of ``keys`` alone.

    Each key's rank is the number of smaller keys (a binary search in the sorted keys), plus,
    for keys that occur more than once, the number of equal keys before it: a loop that hands
    each group of equal keys its next slot, lowest index first, and runs once per extra
    occurrence (not at all when the keys are distinct, as random 32-bit keys nearly always are).
    """
    n = keys.shape[0]
    idx = jnp.arange(n, dtype=jnp.int32)
    first = jnp.searchsorted(lax.sort(keys), keys, side="left").astype(jnp.int32)
    group_size = jnp.zeros(n, jnp.int32).at[first].add(1)

    def place_next(carry):
        rank, pending, placed = carry
        lowest = jnp.full(n, n, jnp.int32).at[first].min(jnp.where(pending, idx, n))
        take = pending & (lowest[first] == idx)
        rank = jnp.where(take, first + placed[first], rank)
        placed = placed.at[first].add(take.astype(jnp.int32))
        return rank, pending & ~take, placed

    rank, _, _ = lax.while_loop(
        lambda carry: jnp.any(carry[1]),
        place_next,
        (first, group_size[first] > 1, jnp.zeros(n, jnp.int32)),
    )
    return jnp.zeros(n, jnp.int32).at[rank].set(idx, unique_indices=True)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values [b, ...]`` over the examples whose ``mask [b]`` is True."""
    m = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim)).astype(values.dtype)
    count = jnp.maximum(jnp.sum(mask), 1).astype(values.dtype)
    return jnp.sum(values * m) / (count * (values.size // max(mask.size, 1)))


def train_val_split(
    n: int, val_size: int | float, *, seed: int = 0, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of ``range(n)`` into train and validation indices.

    Args:
        n: number of examples.
        val_size: number of validation examples (int) or their fraction in (0, 1) (float).
        seed: the split depends on this seed only.
        labels: optional ``[n]`` labels; if given the split is stratified (each class keeps
            its share in the validation set, up to rounding).

    Returns:
        ``(train_idx, val_idx)``: sorted int64 arrays partitioning ``range(n)``.
    """
    if n < 2:
        raise ValueError(f"need at least 2 examples to split, got {n}")
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"val_size as a fraction must lie in (0, 1), got {val_size}")
        n_val = round(n * val_size)
    else:
        n_val = int(val_size)
    if not 1 <= n_val <= n - 1:
        raise ValueError(
            f"val_size must leave at least one example on each side: got {n_val} "
            f"validation examples of {n}"
        )
    rng = np.random.default_rng(seed)
    if labels is None:
        val = rng.permutation(n)[:n_val]
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        classes, counts = np.unique(labels, return_counts=True)
        # Largest-remainder allocation so the class shares sum exactly to n_val.
        exact = counts * n_val / n
        alloc = np.floor(exact).astype(int)
        extra = n_val - alloc.sum()
        alloc[np.argsort(-(exact - alloc), kind="stable")[:extra]] += 1
        val = np.concatenate(
            [
                rng.permutation(np.flatnonzero(labels == c))[:a]
                for c, a in zip(classes, alloc, strict=True)
            ]
        )
    val = np.sort(val)
    train = np.setdiff1d(np.arange(n), val)
    return train, val
