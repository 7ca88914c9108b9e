"""The machine's plain float32 matmul rate and memory read bandwidth through JAX, measured in
the benchmark's process."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a jitted ``[size, size] @ [size, size]`` float32 matmul."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best / 1e9


def memory_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Best GB/s of a jitted sum over a ``megabytes``-sized float32 array (one streaming read,
    far larger than the caches): the rate at which a pass over data in memory can run."""
    n = megabytes * 2**20 // 4
    a = jnp.ones((n,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 4.0 * n / best / 1e9
