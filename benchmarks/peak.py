"""The machine's plain float32 matmul rate through JAX, measured in the benchmark's process."""

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
