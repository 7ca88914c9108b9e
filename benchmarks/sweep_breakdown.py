"""Where the time of a vmapped sweep of small nets goes: ms per training step (all nets).

The Playground sweep of ``benchmarks.train`` (2-8-8-1 tanh nets, batch 10, SGD with L2; 4
learning rates × 4 L2 rates × seeds) run five ways on the same initial parameters and batch
orders, each removing one part of the engine's work:

1. ``sweep.sweep`` as ``benchmarks.train`` runs it (training loss evaluated every epoch);
2. the same without the per-epoch evaluation;
3. and without the exploding-loss test (``divergence_factor=None``);
4. ``jit(vmap(loop.make_train(task, cfg)))`` called directly (no sweep bookkeeping);
5. a plain ``jit(vmap(scan(grad)))`` SGD + L2 written from scratch: no masks, no
   divergence checks, no optax, no schedule, no history (it trains each net as the engine
   does, tested), with the epochs' batch orders drawn inside the program as the engine does;
6. the same with the batch orders drawn before the timed program: what remains is the
   arithmetic of the steps, and the difference to row 5 is the shuffling (one permutation
   of the points per net and epoch, :func:`mljax.data.batches.permutation`: a sort).

The differences between consecutive rows are what each part costs. Compile time is excluded
(one untimed call first); best of ``--repeats``.

    python -m benchmarks.sweep_breakdown [--quick] [--nets N] [--epochs E] [--repeats R] [--out FILE]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from benchmarks import train as bench_train
from benchmarks._cli import parse_or_none, write_rows
from mljax.experiment import markdown_table
from mljax.malloc_tuning import tune_for_command_line
from mljax.train import loop, sweep

VARIANTS = (
    "sweep.sweep (per-epoch train-loss evaluation, as benchmarks.train)",
    "sweep.sweep without per-epoch evaluation",
    "... and without the exploding-loss test",
    "jit(vmap(make_train)) without the sweep's bookkeeping",
    "plain jit(vmap(scan(grad))) SGD + L2",
    "plain, batch orders drawn before the timed program",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Ms per training step of the Playground sweep, part by part."""

    quick: bool = False
    """16 nets, 2 epochs on 40 points, one repeat (smoke tests)."""

    nets: int = 1024
    """Nets in the sweep (a multiple of 16: 4 learning rates × 4 L2 rates × seeds)."""

    epochs: int = 20
    """Epochs of 50 steps (500 points, batch 10)."""

    repeats: int = 2
    """Timed runs per variant; the best is kept."""

    out: str | None = None
    """JSON file for the rows (default: $MLJAX_RESULTS_DIR or results, then bench/sweep_breakdown.json)."""

    def validate(self) -> None:
        if self.nets < 16 or self.nets % 16:
            raise ValueError(f"--nets must be a positive multiple of 16, got {self.nets}")
        for name in ("epochs", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")


def _best(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile, warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def batch_orders(key, cfg: loop.TrainConfig, n: int):
    """``[epochs, steps, batch]`` row indices of every epoch of the run of ``key``, as the
    engine draws them (:func:`mljax.train.loop.epoch_order`)."""
    _, k_data, _ = loop.split_keys(key)
    return jax.vmap(lambda e: loop.epoch_order(cfg, k_data, e, n).indices)(jnp.arange(cfg.epochs))


def plain_train_fn(task, data: loop.Data, cfg: loop.TrainConfig):
    """Plain SGD with the penalty gradient ``l2 · W`` on kernels, from the engine's initial
    parameters and batch orders: ``(key, lr, l2[, orders]) -> params`` (vmap it); ``orders``
    (:func:`batch_orders`) drawn beforehand, or drawn inside as the engine does."""
    n = int(data.x_train.shape[0])

    def loss_fn(p, x, y):
        out, _ = task.apply(p, {}, x, train=True, rng=None, hparams=None)
        return jnp.mean(task.per_example_loss(out, y))

    def train(key, lr, l2, order=None):
        k_init, _, _ = loop.split_keys(key)
        params, _ = task.init(k_init)
        if order is None:
            order = batch_orders(key, cfg, n)

        def step(p, idx):
            g = jax.grad(loss_fn)(p, data.x_train[idx], data.y_train[idx])
            g = {k: {**v, "kernel": v["kernel"] + l2 * p[k]["kernel"]} if "kernel" in v else v
                 for k, v in g.items()}  # fmt: skip
            return jax.tree.map(lambda pi, gi: pi - lr * gi, p, g), None

        params, _ = jax.lax.scan(step, params, order.reshape(-1, cfg.batch_size))
        return params

    return train


def run(config: Config) -> list[dict]:
    run_cfg = bench_train.Config(
        playground_nets=16 if config.quick else config.nets,
        playground_epochs=2 if config.quick else config.epochs,
        playground_points=40 if config.quick else 500,
    )
    repeats = 1 if config.quick else config.repeats
    _, task, data, cfg, members = bench_train.playground_setup(run_cfg)
    root = jax.random.key(0)
    steps = cfg.epochs * (int(data.x_train.shape[0]) // cfg.batch_size)
    no_eval = dataclasses.replace(cfg, eval_train=False, monitor="train_batch_loss")
    no_check = dataclasses.replace(no_eval, divergence_factor=None)
    hp = sweep.stack_hyper(members)
    keys = jax.vmap(lambda s: jax.random.fold_in(root, s))(
        jnp.asarray([m.seed for m in members], jnp.uint32)
    )
    train_fn = jax.jit(jax.vmap(loop.make_train(task, no_check), in_axes=(None, 0, 0)))
    plain = jax.jit(jax.vmap(plain_train_fn(task, data, cfg)))
    n = int(data.x_train.shape[0])
    orders = jax.jit(jax.vmap(lambda k: batch_orders(k, cfg, n)))(keys)

    def via_sweep(c):
        return lambda: sweep.sweep(task, c, data, members, key=root, devices=None).params

    fns = (
        via_sweep(cfg),
        via_sweep(no_eval),
        via_sweep(no_check),
        lambda: train_fn(data, hp, keys).params,
        lambda: plain(keys, hp.learning_rate, hp.l2),
        lambda: plain(keys, hp.learning_rate, hp.l2, orders),
    )
    rows = []
    for name, fn in zip(VARIANTS, fns, strict=True):
        seconds = _best(fn, repeats)
        rows.append({"variant": name, "nets": len(members), "steps": steps,
                     "run_s": seconds, "ms_per_step": 1e3 * seconds / steps})  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_or_none(Config, argv, "sweep_breakdown", __doc__)
    if config is None:
        return 2
    rows = run(config)
    first = rows[0]["ms_per_step"]
    print(f"{rows[0]['nets']} nets, {rows[0]['steps']} steps")
    print("\n".join(markdown_table(
        ["variant", "ms per step (all nets)", "share of the sweep's time"],
        [[r["variant"], f"{r['ms_per_step']:.2f}", f"{r['ms_per_step'] / first:.0%}"] for r in rows],
    )))  # fmt: skip
    write_rows(rows, config.out, "sweep_breakdown")
    return 0


if __name__ == "__main__":
    tune_for_command_line()  # malloc settings for XLA's per-call buffers (mljax.malloc_tuning)
    raise SystemExit(main())
