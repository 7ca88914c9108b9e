"""Smoke test of benchmarks.sweep_breakdown --quick (no timing assertions): the rows against
sizes the test computes itself and a stopwatch around the whole run."""

import json

import numpy as np
import pytest
from _independent import assert_timed_calls_fit, timed_main

from benchmarks import sweep_breakdown as bench


@pytest.mark.slow
def test_quick_writes_one_row_per_variant(tmp_path, capsys):
    out = tmp_path / "s.json"
    rc, wall = timed_main(bench.main, ["--quick", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == list(bench.VARIANTS)
    # 16 nets; 40 points at batch 10 for 2 epochs: 4 steps an epoch, 8 in all.
    assert all(r["nets"] == 16 and r["steps"] == 8 for r in rows)
    for r in rows:
        np.testing.assert_allclose(r["ms_per_step"] * 8, 1e3 * r["run_s"], rtol=1e-12)
    # Each variant: one untimed call, then one timed call (--quick).
    assert_timed_calls_fit([(r["run_s"], 2) for r in rows], wall)
    assert "| plain jit(vmap(scan(grad))) SGD + L2 |" in capsys.readouterr().out


def test_plain_training_is_sgd_with_a_kernel_penalty():
    """The plain variant's training equals the engine's on the same keys, batches and
    hyperparameters (one net, no evaluation): it is a fair floor for the engine's step."""
    import dataclasses

    import jax

    from benchmarks import train as bench_train
    from mljax.train import loop

    _, task, data, cfg, members = bench_train.playground_setup(
        bench_train.Config(playground_nets=16, playground_epochs=2, playground_points=40)
    )
    member = members[5]  # lr and l2 both non-zero
    assert float(member.hyper.l2) > 0
    key = jax.random.fold_in(jax.random.key(0), member.seed)
    plain = jax.jit(bench.plain_train_fn(task, data, cfg))
    ours = loop.train(task, dataclasses.replace(cfg, eval_train=False, monitor="train_batch_loss"),
                      data, member.hyper, key=key)  # fmt: skip
    got = plain(key, member.hyper.learning_rate, member.hyper.l2)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), got, ours.params
    )


def test_bad_option_is_an_error(capsys):
    assert bench.main(["--nets", "20"]) == 2
    assert "--nets must be a positive multiple of 16" in capsys.readouterr().err
