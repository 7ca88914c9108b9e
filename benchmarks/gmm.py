"""GMM EM: mljax.cluster.gmm vs scikit-learn GaussianMixture and gmmx, per iteration.

Every method starts from the same parameters (weights, means, covariances / precisions) on the
same float32 data and runs the same fixed number of EM iterations (tol = 0). Times are
seconds per iteration of a warm (already compiled) run, best of ``--repeats``; our compile time
is the first call minus a warm call. scikit-learn is run in float32 and, where it refuses
("ill-defined empirical covariance"), in float64 (noted in the row). Agreement is the absolute
difference of the final mean log-likelihood from a float64 reference (scikit-learn in float64
from the same start, same iterations). The restart case compares our vmapped ``n_init = 8``
(``random_from_data`` starts) with scikit-learn's ``n_init = 8``; gmmx has no restarts.

``ours_gflops`` is the matmul work our EM iteration issues (flop model in :func:`matmul_flops`)
divided by our time; ``peak_gflops`` is a plain float32 ``[2048, 2048]`` matmul in the same
process, so their ratio says how far from matmul-bound the iteration runs. ``ours_gbs`` is one
read of ``x`` per EM iteration (of all restarts) over our time, beside ``peak_gbs``, a streaming
read of 512 MB in the same process (:func:`benchmarks.peak.memory_bandwidth_gbs`).

Usage: ``python -m benchmarks.gmm [--quick] [--out FILE] [--iters N] [--repeats R]
[--case SUBSTRING ...]``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._cli import parse_or_none, select_cases, write_rows
from benchmarks.peak import matmul_peak_gflops, memory_bandwidth_gbs
from mljax.cluster import gmm
from mljax.malloc_tuning import tune_for_command_line

CASES = [
    # name, covariance_type, n, d, k, n_init
    ("full 100k×2 K=4", "full", 100_000, 2, 4, 1),
    ("full 100k×16 K=8", "full", 100_000, 16, 8, 1),
    ("full 200k×32 K=16", "full", 200_000, 32, 16, 1),
    ("diag 200k×32 K=16", "diag", 200_000, 32, 16, 1),
    ("restarts n_init=8 full 100k×16 K=8", "full", 100_000, 16, 8, 8),
]
QUICK_CASES = [
    ("full 2k×2 K=3", "full", 2_000, 2, 3, 1),
    ("diag 2k×4 K=3", "diag", 2_000, 4, 3, 1),
    ("restarts n_init=2 full 2k×2 K=3", "full", 2_000, 2, 3, 2),
]


@dataclasses.dataclass(frozen=True)
class Config:
    """GMM EM per iteration: mljax vs scikit-learn GaussianMixture and gmmx, same start."""

    quick: bool = False
    """Tiny sizes (2k points) for smoke tests."""

    out: str | None = None
    """JSON file for the result rows (default: $MLJAX_RESULTS_DIR or results, then bench/gmm.json)."""

    iters: int | None = None
    """EM iterations per fit, tol = 0 (default 30; --quick 5)."""

    repeats: int | None = None
    """Warm timed fits per side; the best is kept (default 2; --quick 1)."""

    case: tuple[str, ...] = ()
    """Run only the cases whose name contains one of these strings (default: all)."""

    def validate(self) -> None:
        for name in ("iters", "repeats"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        self.cases()

    def cases(self) -> list[tuple]:
        return select_cases(QUICK_CASES if self.quick else CASES, self.case)


def make_data(n, d, k, seed=0):
    """Blobs with random anisotropic covariances, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4.0
    mix = rng.normal(size=(k, d, d)) / np.sqrt(d)
    z = rng.integers(0, k, n)
    x = centres[z] + np.einsum("nde,ne->nd", mix[z], rng.normal(size=(n, d)))
    return x.astype(np.float32)


def start_params(x, k, covariance_type, seed=1):
    """Means at k data points, the data covariance for every component, equal weights."""
    rng = np.random.default_rng(seed)
    x64 = x.astype(np.float64)
    means = x64[rng.choice(len(x), k, replace=False)]
    if covariance_type == "full":
        cov = np.tile(np.cov(x64.T, bias=True).reshape(1, x.shape[1], x.shape[1]), (k, 1, 1))
        prec = np.linalg.inv(cov)
    else:
        cov = np.tile(x64.var(axis=0), (k, 1))
        prec = 1.0 / cov
    return np.full(k, 1.0 / k), means, cov, prec


def timed(fn, repeats):
    """(first-call seconds, best warm seconds, last result)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return first, best, out


def run_sklearn(x, k, covariance_type, iters, start, n_init, repeats):
    """(seconds per fit, dtype used, fitted model); float64 if float32 is refused."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    w, m, _, prec = start

    def model(dtype):
        if n_init > 1:
            return GaussianMixture(
                k, covariance_type=covariance_type, max_iter=iters, tol=0.0, n_init=n_init,
                init_params="random_from_data", random_state=0,
            )  # fmt: skip
        return GaussianMixture(
            k, covariance_type=covariance_type, max_iter=iters, tol=0.0,
            weights_init=w, means_init=m.astype(dtype), precisions_init=prec.astype(dtype),
            init_params="random_from_data", random_state=0,
        )  # fmt: skip

    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)
        try:
            best, fitted = np.inf, None
            for _ in range(repeats):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    t0 = time.perf_counter()
                    fitted = model(dtype).fit(xd)
                    best = min(best, time.perf_counter() - t0)
            return best, np.dtype(dtype).name, fitted
        except ValueError:
            continue
    raise RuntimeError("scikit-learn failed in float32 and float64")


def run_gmmx(x, k, covariance_type, iters, start, repeats):
    from gmmx import EMFitter, GaussianMixtureModelJax

    w, m, cov, _ = start
    model = GaussianMixtureModelJax.from_squeezed(
        means=jnp.asarray(m, jnp.float32),
        covariances=jnp.asarray(cov, jnp.float32),
        weights=jnp.asarray(w, jnp.float32),
        covariance_type=covariance_type,
    )
    fitter = EMFitter(max_iter=iters, tol=0.0)
    xj = jnp.asarray(x)
    first, best, res = timed(lambda: fitter.fit(xj, model), repeats)
    ll = float(jnp.mean(jax.nn.logsumexp(res.gmm.log_prob(xj), axis=1)))
    return first - best, best, ll


def reference_ll(x, k, covariance_type, iters, start):
    """Float64 scikit-learn from the same start: final mean log-likelihood."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    w, m, _, prec = start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = GaussianMixture(
            k, covariance_type=covariance_type, max_iter=iters, tol=0.0, weights_init=w,
            means_init=m, precisions_init=prec, init_params="random_from_data",
        ).fit(x.astype(np.float64))  # fmt: skip
    return float(ref.score(x.astype(np.float64)))


def matmul_flops(covariance_type, n, d, k, n_init=1):
    """Matmul flops of one of our EM iterations (one restart): the E pass, and the covariance
    pass, which recomputes the E-step's log-probabilities first unless ``fit`` keeps the
    ``[n, k]`` responsibilities (n·k·n_init <= ``gmm.KEEP_RESP_ELEMENTS``)."""
    e_passes = 1 if n * k * n_init <= gmm.KEEP_RESP_ELEMENTS else 2
    if covariance_type in ("full", "tied"):
        e = 2 * n * d * (k * d if covariance_type == "full" else d)
        return e_passes * e + 2 * n * k * d * d  # E pass(es), sum_n u_n x_nᵀ
    e = 2 * 2 * n * d * k if covariance_type == "diag" else 2 * n * d * k
    second = 2 * n * k * k * d if k <= 32 else 2 * n * k * d  # block trick keeps k×
    return e_passes * e + second


def bench_case(name, covariance_type, n, d, k, n_init, iters, repeats, peak, peak_gbs=None):
    x = make_data(n, d, k)
    start = start_params(x, k, covariance_type)
    rows = []
    key = jax.random.key(0)
    if n_init > 1:
        init = "random_from_data"
    else:
        init = gmm.GMMParams(
            jnp.asarray(start[0], jnp.float32),
            jnp.asarray(start[1], jnp.float32),
            jnp.asarray(start[2], jnp.float32),
        )

    def ours():
        return gmm.fit(
            key, x, k, covariance_type=covariance_type, init=init, n_init=n_init,
            max_iter=iters, tol=0.0,
        )  # fmt: skip

    first, best, res = timed(ours, repeats)
    ours_ll = float(res.log_likelihood)
    ours_it = best / iters
    gflops = n_init * matmul_flops(covariance_type, n, d, k, n_init) / ours_it / 1e9
    gbs = x.nbytes / ours_it / 1e9  # one read of x per iteration of all restarts
    compile_s = max(first - best, 0.0)

    sk_s, sk_dtype, sk_model = run_sklearn(x, k, covariance_type, iters, start, n_init, repeats)
    if n_init > 1:
        # Different random starts: compare the two best-of-8 log-likelihoods.
        ref = float(sk_model.score(x.astype(np.float64)))
        agree_sk = f"ours {ours_ll:.5f} vs sklearn best-of-{n_init} {ref:.5f}"
    else:
        ref = reference_ll(x, k, covariance_type, iters, start)
        sk_ll = float(sk_model.score(x.astype(np.float64)))
        agree_sk = f"|Δll| ours {abs(ours_ll - ref):.2e}, sklearn-{sk_dtype} {abs(sk_ll - ref):.2e}"
    rows.append(
        {
            "case": name,
            "ours_s": ours_it,
            "anchor": f"sklearn GaussianMixture ({sk_dtype})",
            "anchor_s": sk_s / iters,
            "ratio": sk_s / iters / ours_it,
            "compile_s": compile_s,
            "agreement": agree_sk,
            "ours_gflops": gflops,
            "peak_gflops": peak,
            "ours_gbs": gbs,
            "peak_gbs": peak_gbs,
        }
    )
    if n_init == 1:
        gx_compile, gx_s, gx_ll = run_gmmx(x, k, covariance_type, iters, start, repeats)
        gx_note = "NaN" if not np.isfinite(gx_ll) else f"{abs(gx_ll - ref):.2e}"
        rows.append(
            {
                "case": name,
                "ours_s": ours_it,
                "anchor": "gmmx 0.7 (float32)",
                "anchor_s": gx_s / iters,
                "ratio": gx_s / iters / ours_it,
                "compile_s": compile_s,
                "agreement": f"|Δll| ours {abs(ours_ll - ref):.2e}, gmmx {gx_note}; "
                f"gmmx compile {gx_compile:.2f}s",
                "ours_gflops": gflops,
                "peak_gflops": peak,
                "ours_gbs": gbs,
                "peak_gbs": peak_gbs,
            }
        )
    return rows


def markdown(rows):
    lines = [
        "| case | ours ms/it | anchor | anchor ms/it | speed-up | our compile s | our matmul "
        "GFLOP/s (peak) | x read GB/s (peak) | agreement |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['ours_s'] * 1e3:.2f} | {r['anchor']} | "
            f"{r['anchor_s'] * 1e3:.2f} | {r['ratio']:.2f}× | {r['compile_s']:.2f} | "
            f"{r['ours_gflops']:.1f} ({r['peak_gflops']:.0f}) | "
            f"{r['ours_gbs']:.1f} ({r['peak_gbs']:.1f}) | {r['agreement']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_or_none(Config, argv, "gmm", __doc__)
    if config is None:
        return 2
    iters = config.iters or (5 if config.quick else 30)
    repeats = config.repeats or (1 if config.quick else 2)
    rows = []
    peak, peak_gbs = matmul_peak_gflops(), memory_bandwidth_gbs()
    for case in config.cases():
        rows.extend(bench_case(*case, iters=iters, repeats=repeats, peak=peak, peak_gbs=peak_gbs))
    print(f"GMM EM, {iters} iterations, tol=0, float32 data; devices: {jax.devices()}")
    print(markdown(rows))
    write_rows(rows, config.out, "gmm")
    return 0


if __name__ == "__main__":
    tune_for_command_line()  # malloc settings for XLA's per-call buffers (mljax.malloc_tuning)
    raise SystemExit(main())
