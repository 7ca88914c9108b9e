"""Row-chunked passes over ``[n, d]`` data read in place (shared by k-means and GMM).

Chunk ``i`` of ``c`` rows starts at ``min(i c, n - c)`` and is read with
``lax.dynamic_slice``: the last chunk is shifted back to end at row ``n`` instead of being
padded, and its rows that the previous chunk already covered get weight 0 (or, for per-row
outputs, are written again with the same values). So no padded or centred copy of ``x`` is
made and a pass's live temporaries are ``O(c × ...)`` whatever ``n``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def n_chunks(n: int, c: int) -> int:
    return -(-n // c)


def fold_chunks(x, w, c0, c: int, body, init):
    """Folds ``body(carry, xc, wc, start)`` over the row chunks of ``x``.

    Args:
        x: ``[n, d]`` data; w: ``[n]`` weights; c0: ``[d]`` subtracted from every chunk.
        c: rows per chunk (static, ``1 <= c <= n``).
        body: ``(carry, xc [c, d] centred, wc [c] masked weights, start) -> carry``.
        init: initial carry.
    """
    n = x.shape[0]
    if not 1 <= c <= n:
        raise ValueError(f"chunk size must satisfy 1 <= c <= n = {n}; got {c}")
    rows = jnp.arange(c)

    def step(i, carry):
        start = jnp.minimum(i * c, n - c)
        xc = lax.dynamic_slice_in_dim(x, start, c, axis=0) - c0[None]
        wc = lax.dynamic_slice_in_dim(w, start, c, axis=0)
        wc = jnp.where(start + rows >= i * c, wc, jnp.zeros((), wc.dtype))
        return body(carry, xc, wc, start)

    return lax.fori_loop(0, n_chunks(n, c), step, init)


def put_rows(out, start, values):
    """Writes ``values [c, ...]`` into ``out [n, ...]`` at row ``start`` (overlap rewrites)."""
    return lax.dynamic_update_slice_in_dim(out, values.astype(out.dtype), start, axis=0)
