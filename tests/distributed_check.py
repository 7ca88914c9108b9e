"""A tiny experiment run through the real experiment CLI by tests/test_distributed.py.

``python tests/distributed_check.py --out DIR [--rounds R] [cluster options]`` runs an
8-member sweep (two seeds × four learning rates, one of which diverges) ``R`` times, prints
``round i done`` after each and a SHA-256 digest of the last sweep's stacked results, and
writes ``sweep.npz`` (those results) into the run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mljax.config import CommonConfig
from mljax.experiment import ReportRow, cli_main
from mljax.nn.layers import Activation, Dense
from mljax.train import loop, sweep, tasks

NAME = "distributed_check"
TASK = tasks.layer_task((Dense(6), Activation("relu"), Dense(1)), (1, 2), loss="mean_squared_error")
CFG = loop.TrainConfig(epochs=6, batch_size=10, optimizer="momentum")
LEARNING_RATES = (0.05, 30.0, 0.2, 0.1)  # 30 diverges on this problem


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    """Sweep check for multi-process runs."""

    rounds: int = 1
    """Sweeps run one after another (many: a long run for the kill test)."""


def data() -> loop.Data:
    x = np.asarray(jax.random.normal(jax.random.key(1), (60, 2)))
    y = np.where(x[:, 0] * x[:, 1] > 0, 1.0, -1.0).astype(np.float32)
    return loop.Data(
        jnp.asarray(x[:40]), jnp.asarray(y[:40]), jnp.asarray(x[40:]), jnp.asarray(y[40:])
    )


def members() -> list[sweep.Member]:
    return sweep.grid_members(2, {"learning_rate": list(LEARNING_RATES)})


def run_sweep(devices="all") -> sweep.SweepResult:
    return sweep.sweep(TASK, CFG, data(), members(), key=jax.random.key(0), devices=devices)


def result_leaves(res: sweep.SweepResult) -> list[np.ndarray]:
    """Every member's final and best parameters, history and flags, as host arrays."""
    tree = (res.params, res.best_params, res.history, res.best_epoch, res.diverged)
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def digest(leaves: list[np.ndarray]) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in leaves)).hexdigest()


def run(config: Config, run_dir) -> dict:
    for i in range(config.rounds):
        res = run_sweep()
        print(f"process {jax.process_index()}: round {i} done", flush=True)
    leaves = result_leaves(res)
    print(f"process {jax.process_index()}: digest {digest(leaves)}", flush=True)
    buf = io.BytesIO()
    np.savez(buf, *leaves)
    run_dir.write_bytes("sweep.npz", buf.getvalue())
    return {"devices": res.devices, "members": len(res.members), "digest": digest(leaves)}


def report_rows(metrics: dict) -> list[ReportRow]:
    return [ReportRow("sweep digest", "—", metrics["digest"], f"{metrics['devices']} devices")]


if __name__ == "__main__":
    raise SystemExit(cli_main(sys.modules[__name__]))
