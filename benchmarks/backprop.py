"""Training-step time: manual backprop rules (`mljax.nn.backprop`) vs `jax.grad`.

One SGD step ``w ← w - lr · ∇ mean softmax cross-entropy`` on the seed-004 MLP (c)
(784-256-256-10) and CNN (d) (conv3×3×16-pool-conv3×3×16-pool-dense256-10), batch 200,
float32, both jitted. Ours: the gradient from the manual rules; anchor: ``jax.grad`` of the
same flax model. Compile time (``jit(...).lower(...).compile()``) is timed apart from the
steady-state step time (median over repeats of a block of steps). ``agreement`` is the
largest relative error between the two gradient trees at the benchmark's parameters
(max|a - b| / max(|a| + |b|) per leaf, float32). Target: ratio (anchor time / our time)
≥ 0.9.

``python -m benchmarks.backprop [--quick] [--out FILE]``
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from benchmarks._cli import parse_or_none, write_rows
from mljax.experiment import markdown_table
from mljax.malloc_tuning import tune_for_command_line
from mljax.nn import backprop, losses, models

ANCHOR = "jax.grad"


@dataclasses.dataclass(frozen=True)
class Config:
    """Manual backprop vs jax.grad training-step time on the seed-004 MLP (c) and CNN (d)."""

    quick: bool = False
    """Tiny run (batch 8, few steps) for smoke tests."""

    out: str | None = None
    """JSON file for the result rows (default: $MLJAX_RESULTS_DIR or results, then bench/backprop.json)."""

    batch: int = 200
    """Batch size (the seed-004 protocol: 200)."""

    steps: int = 20
    """Steps per timed block."""

    repeats: int = 7
    """Timed blocks per function (alternating ours / anchor); the median is reported."""

    models: tuple[str, ...] = ("mlp_c", "cnn_d")
    """Which models to time: mlp_c (784-256-256-10) and/or cnn_d (the conv net (d))."""

    def validate(self) -> None:
        for name, value in (("batch", self.batch), ("steps", self.steps),
                            ("repeats", self.repeats)):  # fmt: skip
            if value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(
                f"--models must be a non-empty subset of {tuple(MODELS)}, got {self.models}"
            )

    def effective(self) -> Config:
        if not self.quick:
            return self
        return dataclasses.replace(self, batch=8, steps=2, repeats=2)


MODELS: dict[str, Callable[[], tuple]] = {"mlp_c": models.mnist_mlp2, "cnn_d": models.mnist_cnn}
LR = 0.1


def make_steps(layers, x, y):
    """The two jitted SGD steps ``params -> params`` (manual rules, jax.grad)."""
    net = models.build(layers)

    def loss_fn(params):
        return losses.softmax_cross_entropy(net.apply({"params": params}, x), y)

    def manual_step(params):
        g = backprop.grads(layers, params, x, y).grads
        return jax.tree.map(lambda w, d: w - LR * d, params, g)

    def autodiff_step(params):
        g = jax.grad(loss_fn)(params)
        return jax.tree.map(lambda w, d: w - LR * d, params, g)

    def manual_grad(params):
        return backprop.grads(layers, params, x, y).grads

    return manual_step, autodiff_step, manual_grad, jax.grad(loss_fn)


def compile_timed(fn, *args):
    """``(compiled, seconds)`` for ``jax.jit(fn)`` at ``args``."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_steps(steps_fns, params, *, steps: int, repeats: int) -> list[float]:
    """Median seconds per step of each function over ``repeats`` blocks of ``steps`` steps.

    The blocks of the functions alternate, so that a load change on a shared machine hits
    all of them alike.
    """
    for step in steps_fns:
        jax.block_until_ready(step(params))  # warm-up
    times: list[list[float]] = [[] for _ in steps_fns]
    for _ in range(repeats):
        for i, step in enumerate(steps_fns):
            start = time.perf_counter()
            p = params
            for _ in range(steps):
                p = step(p)
            jax.block_until_ready(p)
            times[i].append((time.perf_counter() - start) / steps)
    return [statistics.median(t) for t in times]


def max_relative_error(a, b) -> float:
    """Largest per-leaf max|a - b| / max(|a| + |b|) over two trees of the same structure."""
    errs = jax.tree.map(
        lambda u, v: jnp.max(jnp.abs(u - v)) / jnp.maximum(jnp.max(jnp.abs(u) + jnp.abs(v)), 1e-30),
        a,
        b,
    )
    return float(max(jax.tree.leaves(errs)))


def bench_model(name: str, config: Config) -> dict:
    layers = MODELS[name]()
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(kx, (config.batch, 28, 28, 1), jnp.float32)
    y = jax.random.randint(ky, (config.batch,), 0, 10)
    params = models.build(layers).init(kp, x[:1])["params"]
    manual_step, autodiff_step, manual_grad, autodiff_grad = make_steps(layers, x, y)
    manual, manual_compile = compile_timed(manual_step, params)
    anchor, anchor_compile = compile_timed(autodiff_step, params)
    agreement = max_relative_error(jax.jit(manual_grad)(params), jax.jit(autodiff_grad)(params))
    ours_s, anchor_s = time_steps(
        [manual, anchor], params, steps=config.steps, repeats=config.repeats
    )
    return {
        "case": f"seed004 {name}, batch {config.batch}, SGD step",
        "ours_s": ours_s,
        "anchor": ANCHOR,
        "anchor_s": anchor_s,
        "ratio": anchor_s / ours_s,
        "compile_s": manual_compile,
        "anchor_compile_s": anchor_compile,
        "agreement": agreement,
    }


def format_table(rows: Sequence[dict]) -> str:
    header = ["case", "ours (manual) s/step", "anchor", "anchor s/step", "ratio",
              "compile s (ours / anchor)", "max rel. grad diff"]  # fmt: skip
    body = [
        [
            r["case"],
            f"{r['ours_s'] * 1e3:.2f} ms",
            r["anchor"],
            f"{r['anchor_s'] * 1e3:.2f} ms",
            f"{r['ratio']:.2f}",
            f"{r['compile_s']:.2f} / {r['anchor_compile_s']:.2f}",
            f"{r['agreement']:.1e}",
        ]
        for r in rows
    ]
    return "\n".join(markdown_table(header, body, align="lrlrrrr"))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_or_none(Config, argv, "backprop", __doc__)
    if config is None:
        return 2
    run = config.effective()
    rows = [bench_model(name, run) for name in run.models]
    print(format_table(rows))
    print(f"(ratio = {ANCHOR} time / manual time; target ≥ 0.9. Device: {jax.devices()[0]})")
    write_rows(rows, config.out, "backprop")
    return 0


if __name__ == "__main__":
    tune_for_command_line()  # malloc settings for XLA's per-call buffers (mljax.malloc_tuning)
    raise SystemExit(main())
