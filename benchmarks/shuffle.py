"""The engine's shuffle: ``mljax.data.batches.permutation`` against ``jax.random.permutation``.

Every epoch of every member of a sweep draws one permutation of its training points (the
Playground sweep of ``benchmarks.train``: 1,024 nets × 200 epochs of 500 points). Both
functions return the same permutation, bit for bit (each row says whether they did here); a
case ``NETSxPOINTS`` times one jitted, vmapped call that draws ``NETS`` permutations of
``POINTS`` indices, best of ``--repeats``, compile time (first call minus a warm call) apart.
A row's ``agreement`` is the number of indices where the two differ (0: bit for bit).

    python -m benchmarks.shuffle [--quick] [--cases 1024x500 8x54000] [--repeats R] [--out FILE]
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._cli import parse_or_none, write_rows
from mljax.data.batches import permutation
from mljax.experiment import markdown_table
from mljax.malloc_tuning import tune_for_command_line

CASE = re.compile(r"^([1-9][0-9]*)x([1-9][0-9]*)$")


@dataclasses.dataclass(frozen=True)
class Config:
    """jax.random.permutation vs mljax.data.batches.permutation, vmapped over nets."""

    quick: bool = False
    """Tiny cases (16x40, 4x2000: one and two sort rounds), one repeat (smoke tests)."""

    cases: tuple[str, ...] = ("1024x500", "8x54000")
    """NETSxPOINTS: NETS permutations of POINTS indices in one call (default: the Playground
    sweep's epoch, and 8 members of an MNIST-sized epoch, where jax sorts in two rounds)."""

    repeats: int = 10
    """Timed calls per side; the best is kept."""

    out: str | None = None
    """JSON file for the rows (default: $MLJAX_RESULTS_DIR or results, then bench/shuffle.json)."""

    def validate(self) -> None:
        for case in self.cases:
            if not CASE.match(case):
                raise ValueError(
                    f"--cases takes NETSxPOINTS with positive integers (e.g. 1024x500), got {case!r}"
                )
        if not self.cases:
            raise ValueError("--cases must name at least one NETSxPOINTS case")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {self.repeats}")


def _timed(fn, keys, repeats: int) -> tuple[float, float, jax.Array]:
    """(best seconds of a warm call, compile seconds, result)."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(keys))
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(keys))
        best = min(best, time.perf_counter() - t)
    return best, max(first - best, 0.0), out


def run_case(nets: int, points: int, repeats: int) -> dict:
    keys = jax.random.split(jax.random.key(0), nets)
    theirs = jax.jit(jax.vmap(lambda k: jax.random.permutation(k, points).astype(jnp.int32)))
    ours = jax.jit(jax.vmap(lambda k: permutation(k, points)))
    jax_s, jax_compile, want = _timed(theirs, keys, repeats)
    ours_s, ours_compile, got = _timed(ours, keys, repeats)
    differ = int(np.sum(np.asarray(want) != np.asarray(got)))
    return {
        "case": f"{nets}x{points}",
        "ours_s": ours_s,
        "anchor": "jax.random.permutation",
        "anchor_s": jax_s,
        "ratio": jax_s / ours_s,
        "compile_s": ours_compile,
        "anchor_compile_s": jax_compile,
        "agreement": differ,  # indices that differ: 0 is bit for bit
        "identical": differ == 0,
        "nets": nets,
        "points": points,
        "repeats": repeats,
    }


def run(config: Config) -> list[dict]:
    cases = ("16x40", "4x2000") if config.quick else config.cases
    repeats = 1 if config.quick else config.repeats
    rows = []
    for case in cases:
        nets, points = map(int, CASE.match(case).groups())
        rows.append(run_case(nets, points, repeats))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_or_none(Config, argv, "shuffle", __doc__)
    if config is None:
        return 2
    rows = run(config)
    print("\n".join(markdown_table(
        ["nets × points", "jax.random.permutation ms", "batches.permutation ms", "ratio",
         "identical", "compile s (jax / ours)"],
        [[f"{r['nets']} × {r['points']}", f"{1e3 * r['anchor_s']:.1f}", f"{1e3 * r['ours_s']:.1f}",
          f"{r['ratio']:.2f}", "yes" if r["identical"] else f"NO ({r['agreement']} differ)",
          f"{r['anchor_compile_s']:.2f} / {r['compile_s']:.2f}"] for r in rows],
    )))  # fmt: skip
    print("(ratio = jax.random.permutation's time / ours; best of the timed calls, compile apart)")
    write_rows(rows, config.out, "shuffle")
    return 0


if __name__ == "__main__":
    tune_for_command_line()  # malloc settings for XLA's per-call buffers (mljax.malloc_tuning)
    raise SystemExit(main())
