"""k-means: mljax (JAX, Lloyd) vs scikit-learn KMeans(algorithm="lloyd"), side by side.

Both start from the same centroids and run a fixed number of iterations (tol = 0 and data
without a fixed point within that many steps; the iterations actually run are checked), in
float32. Times are per Lloyd iteration, best of ``--repeats``; our compile time is reported
apart (first call minus a warm call). Agreement: relative inertia difference.
The n_init = 8 case times 8 restarts (ours vmapped; scikit-learn's n_init loop) per iteration.

    python -m benchmarks.kmeans [--quick] [--out FILE] [--repeats N] [--case SUBSTRING ...]
                                [--chunks ROWS ...] [--parts]

``--chunks`` also times our iteration at each given chunk size (rows read per pass of the
chunked loop; 0 is the default, :func:`mljax.cluster.kmeans.auto_chunk_size`) for every
single-restart case: the "ms per iteration against chunk size" table of benchmarks/README.md,
with each chunk's size in bytes against the L2 cache size the OS reports.

``--parts`` also times the parts of our assignment pass, one added at a time, at the default
chunk, for every single-restart case: the distance product alone (each chunk's ``[c, k]``
scores ``||c_j||²/2 - x·c_j``, a matmul or elementwise for narrow rows, summed so they are
used), then their row minimum, then the first-index argmin (labels), then
the whole pass with the cluster sums (``kmeans._assign``), against the time per iteration that
the ``TARGET_RATIO`` (#14: 1.5x scikit-learn) allows, and, with the product alone unchunked,
the lower bound that the product puts on any of our iterations.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans

from benchmarks._cli import parse_or_none, select_cases, write_rows
from benchmarks.peak import matmul_peak_gflops, memory_bandwidth_gbs
from mljax.cluster import kmeans
from mljax.cluster._chunks import fold_chunks, put_rows
from mljax.experiment import markdown_table
from mljax.malloc_tuning import tune_for_command_line

# name, n, d, k, iterations, n_init
CASES = [
    ("200k×2 K=8", 200_000, 2, 8, 20, 1),
    ("200k×32 K=32", 200_000, 32, 32, 20, 1),
    ("60k×784 K=10", 60_000, 784, 10, 20, 1),
    ("n_init=8, 200k×32 K=32", 200_000, 32, 32, 10, 8),
]
QUICK_CASES = [("2k×4 K=3", 2000, 4, 3, 5, 1), ("n_init=2, 2k×4 K=3", 2000, 4, 3, 5, 2)]
TARGET_RATIO = 1.5
"""#14's target for one run: scikit-learn's time per iteration / ours (``--parts`` compares)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """k-means per Lloyd iteration: mljax vs scikit-learn KMeans(lloyd), same start."""

    quick: bool = False
    """Tiny sizes (2k × 4, K = 3; one repeat) for smoke tests."""

    out: str | None = None
    """JSON file for the result rows (default: $MLJAX_RESULTS_DIR or results, then bench/kmeans.json)."""

    repeats: int = 3
    """Timed fits per side; the best is kept (--quick: 1)."""

    case: tuple[str, ...] = ()
    """Run only the cases whose name contains one of these strings (default: all)."""

    chunks: tuple[int, ...] = ()
    """Also time our Lloyd iteration at these chunk sizes (rows; 0 = the default chunk) for every single-restart case (default: none)."""

    parts: bool = False
    """Also time the parts of our assignment pass (distance product, row minimum, argmin, cluster sums) for every single-restart case, against the time the 1.5x target allows."""

    def validate(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {self.repeats}")
        if any(c < 0 for c in self.chunks):
            raise ValueError(f"--chunks must be >= 0 (0: the default chunk), got {self.chunks}")
        self.cases()

    def cases(self) -> list[tuple]:
        return select_cases(QUICK_CASES if self.quick else CASES, self.case)


def _data(n, d, k, seed=0):
    # Overlapping Gaussian blobs (centre spread 2/sqrt(d) against unit noise, in any d):
    # Lloyd keeps moving for all the fixed iterations, so neither side stops early.
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0 / np.sqrt(d), size=(k, d))
    x = centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    return x.astype(np.float32)


def _best_time(fn, repeats):
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def l2_cache_bytes() -> int | None:
    """The first CPU's L2 cache size from Linux's sysfs (None where it is not reported)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            with open(f"{base}/{entry}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{base}/{entry}/size") as f:
                text = f.read().strip().upper()
            scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
            return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return None
    return None


def chunk_rows_case(name, n, d, k, iters, chunks, repeats):
    """ms per Lloyd iteration of one case at each chunk size (0: the default chunk)."""
    x = _data(n, d, k)
    c0 = x[np.random.default_rng(1).choice(n, k, replace=False)]
    l2 = l2_cache_bytes()
    rows = []
    for requested in chunks:
        c = min(requested or kmeans.auto_chunk_size(n, k, d), n)

        def ours(c=c):
            r = kmeans.fit(jax.random.key(0), x, k, init=c0, max_iter=iters, tol=0.0, chunk_size=c)
            r.inertia.block_until_ready()
            return r

        r = ours()
        per = _best_time(ours, repeats) / int(r.n_iter)
        x_bytes = c * d * x.itemsize
        rows.append({
            "case": name, "chunk_rows": c, "default": requested == 0 or c == kmeans.auto_chunk_size(n, k, d),
            "x_chunk_bytes": x_bytes, "dist_chunk_bytes": c * k * x.itemsize,
            "l2_bytes": l2, "ours_s": per,
        })  # fmt: skip
    return rows


def pass_parts(x, centroids, chunk):
    """Jitted functions of ``x`` for the parts of our assignment pass, each adding one part to
    the previous (name, fn); chunk 0: the product unchunked."""
    n = x.shape[0]
    w = jnp.ones((n,), x.dtype)
    mean = jnp.mean(x, axis=0)
    cen = centroids - mean[None]
    half = 0.5 * jnp.sum(cen * cen, axis=1)
    c = min(chunk, n)

    def product(x):  # the scores (a matmul, or elementwise for narrow rows), summed
        if chunk == 0:
            return jnp.sum(kmeans._scores(x - mean[None], cen, half))
        return fold_chunks(
            x, w, mean, c, lambda a, xc, wc, st: a + wc @ kmeans._scores(xc, cen, half).sum(1),
            jnp.zeros((), x.dtype),
        )  # fmt: skip

    def row_min(x):
        def body(out, xc, wc, st):
            return put_rows(out, st, jnp.min(kmeans._scores(xc, cen, half), axis=1))

        return fold_chunks(x, w, mean, c, body, jnp.zeros((n,), x.dtype))

    def argmin(x):
        def body(out, xc, wc, st):
            lab, m = kmeans._first_argmin(kmeans._scores(xc, cen, half))
            return put_rows(out[0], st, lab), put_rows(out[1], st, m)

        init = (jnp.zeros((n,), jnp.int32), jnp.zeros((n,), x.dtype))
        return fold_chunks(x, w, mean, c, body, init)

    def with_sums(x):
        return kmeans._assign(x, w, mean, cen, c, with_sums=True)

    fns = [("product", product)] if chunk == 0 else [
        ("product", product), ("+ row minimum", row_min), ("+ argmin (labels)", argmin),
        ("+ cluster sums (whole pass)", with_sums),
    ]  # fmt: skip
    return [(name, jax.jit(fn)) for name, fn in fns]


def parts_case(name, n, d, k, sk_s, repeats):
    """ms of each part of our assignment pass (default chunk, and the product unchunked)."""
    x = jnp.asarray(_data(n, d, k))
    c0 = x[np.random.default_rng(1).choice(n, k, replace=False)]
    chunk = kmeans.auto_chunk_size(n, k, d)
    rows = []
    for rows_per_chunk in (chunk, 0):
        for part, fn in pass_parts(x, c0, rows_per_chunk):
            jax.block_until_ready(fn(x))
            t = _best_time(lambda fn=fn: jax.block_until_ready(fn(x)), max(repeats, 5))
            rows.append({
                "case": name, "part": part, "chunk_rows": rows_per_chunk or n, "ours_s": t,
                "product_gflops": 2 * n * d * k / t / 1e9 if part == "product" else None,
                "anchor_s": sk_s, "target_s": sk_s / TARGET_RATIO,
            })  # fmt: skip
    return rows


def matmul_flops(n, d, k):
    """Matmul flops of one of our Lloyd iterations: the distance product (a matmul, or as many
    elementwise multiply-adds up to ``kmeans.ELEMENTWISE_SCORES_MAX_D`` features), plus the
    one-hot matmul of the cluster sums for wide rows (narrow rows use a scatter-add)."""
    return 2 * n * d * k * (2 if d >= kmeans.SCATTER_MAX_D else 1)


def run_case(name, n, d, k, iters, n_init, repeats, peak=None, peak_gbs=None):
    x = _data(n, d, k)
    rng = np.random.default_rng(1)
    c0 = x[rng.choice(n, k, replace=False)]
    key = jax.random.key(0)

    if n_init == 1:

        def ours():
            r = kmeans.fit(key, x, k, init=c0, max_iter=iters, tol=0.0)
            r.inertia.block_until_ready()
            return r

        def theirs():
            return KMeans(k, init=c0, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(x)
    else:
        # Restarts: ours vmapped over split keys, scikit-learn's n_init loop; same init law.
        def ours():
            r = kmeans.fit(key, x, k, init="random", n_init=n_init, max_iter=iters, tol=0.0)
            r.inertia.block_until_ready()
            return r

        def theirs():
            return KMeans(
                k, init="random", n_init=n_init, max_iter=iters, tol=0.0, algorithm="lloyd",
                random_state=0,
            ).fit(x)  # fmt: skip

    t0 = time.perf_counter()
    r = ours()
    first = time.perf_counter() - t0
    ours_s = _best_time(ours, repeats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = theirs()
        sk_s = _best_time(theirs, repeats)
    our_iters, sk_iters = int(r.n_iter), int(sk.n_iter_)
    per_ours = ours_s / (our_iters * n_init)
    per_sk = sk_s / (sk_iters * n_init)
    agreement = abs(float(r.inertia) - sk.inertia_) / sk.inertia_
    return {
        "case": name,
        "ours_s": per_ours,
        "anchor": "scikit-learn KMeans(lloyd)",
        "anchor_s": per_sk,
        "ratio": per_sk / per_ours,
        "compile_s": max(first - ours_s, 0.0),
        "agreement": agreement,
        "iterations": [our_iters, sk_iters],
        "ours_gflops": matmul_flops(n, d, k) / per_ours / 1e9,
        "peak_gflops": peak,
        # One read of x per Lloyd iteration of all restarts, over the time of that iteration.
        "ours_gbs": n * d * x.itemsize / (per_ours * n_init) / 1e9,
        "peak_gbs": peak_gbs,
    }


def _mib(b) -> str:
    return "unknown" if b is None else f"{b / 2**20:.2g} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_or_none(Config, argv, "kmeans", __doc__)
    if config is None:
        return 2
    peak, peak_gbs = matmul_peak_gflops(), memory_bandwidth_gbs()
    repeats = 1 if config.quick else config.repeats
    rows = [run_case(*c, repeats=repeats, peak=peak, peak_gbs=peak_gbs) for c in config.cases()]
    header = ["case", "ours ms/it", "sklearn ms/it", "ratio", "compile s", "inertia rel. diff",
              "iterations (ours, sklearn)", "our matmul GFLOP/s (peak)",
              "x read GB/s (peak)"]  # fmt: skip
    body = [
        [r["case"], f"{1e3 * r['ours_s']:.2f}", f"{1e3 * r['anchor_s']:.2f}", f"{r['ratio']:.2f}",
         f"{r['compile_s']:.2f}", f"{r['agreement']:.1e}", f"{r['iterations']}",
         f"{r['ours_gflops']:.1f} ({r['peak_gflops']:.0f})",
         f"{r['ours_gbs']:.1f} ({r['peak_gbs']:.1f})"]
        for r in rows
    ]  # fmt: skip
    print("\n".join(markdown_table(header, body)))
    if config.chunks:
        chunk_rows = [
            row
            for name, n, d, k, iters, n_init in config.cases()
            if n_init == 1
            for row in chunk_rows_case(name, n, d, k, iters, config.chunks, repeats)
        ]
        l2 = l2_cache_bytes()
        print(f"\nms per Lloyd iteration against chunk size (L2 cache: {_mib(l2)}; * = default)")
        print("\n".join(markdown_table(
            ["case", "chunk rows", "x chunk (×L2)", "distances chunk", "ms/it"],
            [[r["case"], f"{r['chunk_rows']}{' *' if r['default'] else ''}",
              f"{_mib(r['x_chunk_bytes'])}" + (f" ({r['x_chunk_bytes'] / l2:.2g})" if l2 else ""),
              _mib(r["dist_chunk_bytes"]), f"{1e3 * r['ours_s']:.2f}"] for r in chunk_rows],
        )))  # fmt: skip
        rows = rows + chunk_rows
    if config.parts:
        cases = config.cases()
        part_rows = [
            row
            for (name, n, d, k, iters, n_init), r in zip(cases, rows[: len(cases)], strict=True)
            if n_init == 1
            for row in parts_case(name, n, d, k, r["anchor_s"], repeats)
        ]
        print(
            f"\nParts of our assignment pass, ms (each adds one part; the {TARGET_RATIO}x target "
            "allows scikit-learn's ms/it / 1.5 for a whole iteration)"
        )
        print("\n".join(markdown_table(
            ["case", "part", "chunk rows", "ms", "product GFLOP/s (peak)", "target ms/it"],
            [[r["case"], r["part"], f"{r['chunk_rows']}", f"{1e3 * r['ours_s']:.2f}",
              f"{r['product_gflops']:.0f} ({peak:.0f})" if r["product_gflops"] else "",
              f"{1e3 * r['target_s']:.2f}"] for r in part_rows],
        )))  # fmt: skip
        rows = rows + part_rows
    write_rows(rows, config.out, "kmeans")
    return 0


if __name__ == "__main__":
    tune_for_command_line()  # malloc settings for XLA's per-call buffers (mljax.malloc_tuning)
    raise SystemExit(main())
