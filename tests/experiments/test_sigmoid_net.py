"""experiments.sigmoid_net (SPEC E2): δ table, the report's swapped call, training over seeds."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import sigmoid_net as exp
from mljax.data import toy
from mljax.experiment import cli_main, execute

SEEDS = 16


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sigmoid_net")
    config = exp.Config(quick=True, out=str(out), seeds=SEEDS, quiet=True)
    metrics, run_dir = execute(exp, config)
    return metrics, run_dir


@pytest.mark.slow
def test_delta_table_matches_report_to_printed_precision(quick_run):
    metrics, _ = quick_run
    assert len(metrics["deltas"]) == 2
    for ours, printed in zip(metrics["deltas"], exp.REPORT_TABLE, strict=True):
        assert set(ours) == {"x", "t", *exp.TABLE_KEYS}
        assert ours["x"] == float(printed["x"]) and ours["t"] == float(printed["t"])
        for key in exp.TABLE_KEYS:
            value, text = ours[key], printed[key]
            # Half a unit in the report's last printed digit (3 significant digits at most).
            assert abs(value - float(text)) <= exp.half_last_digit(text) * (1 + 1e-9), key
        # SPEC's seed table (mljax.data.toy) holds the same numbers.
        spec = next(r for r in toy.SIGMOID_NET_DELTA_TABLE if r["x"] == ours["x"])
        for key in spec:
            assert float(printed.get(key, spec[key])) == pytest.approx(spec[key])
    assert all(metrics["deltas_agree_with_report"].values())


def test_delta_table_is_the_chain_rule():
    # Independent closed form: δ1 = (z1 - t) z1 (1 - z1), δh = zh (1 - zh) w(h→1) δ1,
    # δ5 = Σ_h δh w(5→h), from the report's Question 2.2.
    w = toy.SIGMOID_NET_WEIGHTS
    w_in = np.array([w["w52"], w["w53"], w["w54"]])
    w_out = np.array([w["w21"], w["w31"], w["w41"]])
    for row in exp.delta_table():
        z = 1 / (1 + np.exp(-w_in * row["x"]))
        z1 = 1 / (1 + np.exp(-z @ w_out))
        d1 = (z1 - row["t"]) * z1 * (1 - z1)
        dh = z * (1 - z) * w_out * d1
        np.testing.assert_allclose(
            [row["d1"], row["d2"], row["d3"], row["d4"], row["d5"]],
            [d1, *dh, dh @ w_in],
            rtol=1e-12,
            atol=1e-18,
        )
        assert row["a5"] == row["z5"] == row["x"]


@pytest.mark.slow
def test_gradcheck_swapped_fails_correct_passes(quick_run):
    metrics, _ = quick_run
    assert metrics["gradcheck_correct_max_rel_err"] <= 1e-10
    assert metrics["gradcheck_report_correct_call_max_rel_err"] <= 1e-10
    assert metrics["gradcheck_swapped_max_rel_err"] > 1e-2
    table = metrics["gradcheck_table"]["report_swapped_call"]
    # Only the input->hidden gradient goes through the swapped weights.
    assert max(table.values()) == metrics["gradcheck_swapped_max_rel_err"]
    assert min(table.values()) <= 1e-10


@pytest.mark.slow
def test_report_backward_pass_against_jax_grad():
    with jax.enable_x64(True):
        key = jax.random.key(3)
        params = exp.init_params(key, 3, jnp.float64)
        x = jnp.asarray(toy.SIGMOID_NET_TRAIN_X, jnp.float64)[:, None]
        t = jnp.asarray(toy.SIGMOID_NET_TRAIN_Y, jnp.float64)[:, None]
        ref = jax.grad(exp.summed_loss)(params, x, t)
        right = exp.report_gradient(params, x, t, swapped=False)
        wrong = exp.report_gradient(params, x, t, swapped=True)
        manual = jax.jit(exp.manual_gradient)(params, x, t)
    for tree in (right, manual):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert not np.allclose(wrong["layer_0"]["kernel"], ref["layer_0"]["kernel"], rtol=1e-3)
    np.testing.assert_allclose(wrong["layer_2"]["kernel"], ref["layer_2"]["kernel"], rtol=1e-12)


def test_numpy_port_of_swapped_call_rejects_shapes():
    # The report's NumPy code with its swapped call cannot run for a 1-3-1 net: the reason
    # report_backward_pass lays the received weights out in the shape it expects.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(11, 1))
    w_ih, w_ho = rng.uniform(size=(1, 3)), rng.uniform(size=(3, 1))
    delta = rng.normal(size=(11, 1))
    np.dot(delta, w_ho.T)  # the correct call's line runs
    with pytest.raises(ValueError):
        np.dot(delta, w_ih.T)  # the swapped call's line does not
    assert x.shape == (11, 1)


@pytest.mark.slow
def test_training_metrics(quick_run):
    metrics, run_dir = quick_run
    assert metrics["n_seeds"] == SEEDS
    for prefix in ("", "swapped_"):
        for epoch in (0, 900):
            s = metrics[f"{prefix}loss_epoch{epoch}"]
            assert {"mean", "std", "min", "max"} <= set(s)
            assert s["n"] == SEEDS and s["min"] <= s["mean"] <= s["max"]
    # Same initial weights, so the same epoch-0 loss; the reported 0.01722 lies in its range.
    assert metrics["loss_epoch0"] == metrics["swapped_loss_epoch0"]
    # The correct gradient reaches the report's 0.00661 (within 2%); the swapped one cannot.
    assert metrics["loss_epoch900"]["mean"] == pytest.approx(0.00661, rel=0.02)
    assert metrics["swapped_loss_epoch900"]["min"] > 1.5 * metrics["loss_epoch900"]["max"]
    assert metrics["swapped_share_of_seeds_printing_report_epoch900"] == 0.0
    for name in ("loss_curve.png", "predictions.png", "delta_table.md", "metrics.json",
                 "report.md", "config.json"):  # fmt: skip
        assert run_dir.file(name).exists(), name
    saved = json.loads(run_dir.file("metrics.json").read_text())
    for key in ("deltas", "gradcheck_correct_max_rel_err", "gradcheck_swapped_max_rel_err",
                "loss_epoch0", "loss_epoch900"):  # fmt: skip
        assert key in saved
    report = run_dir.file("report.md").read_text()
    assert "0.01722" in report and "FAILS" in report


def test_train_vmapped_equals_single_seed():
    x = jnp.asarray(toy.SIGMOID_NET_TRAIN_X, jnp.float32)[:, None]
    t = jnp.asarray(toy.SIGMOID_NET_TRAIN_Y, jnp.float32)[:, None]
    keys = jax.random.split(jax.random.key(0), 2)
    both = exp.train_seeds(keys, x, t, epochs=20, lr=0.1, hidden=3)
    one = jax.jit(lambda k: exp.train_both(k, x, t, epochs=20, lr=0.1, hidden=3))(keys[1])
    for variant in exp.VARIANTS:
        np.testing.assert_allclose(both[variant].losses[1], one[variant].losses, rtol=1e-5)
        assert bool(jnp.all(jnp.diff(one["correct"].losses) <= 1e-7))  # GD on a smooth loss


def test_help_and_bad_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(exp, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--seeds", "--epochs", "--lr", "--hidden", "--out"):
        assert option in out
    assert cli_main(exp, ["--epochs", "500"]) == 2
    assert "--epochs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--lr"):
        dataclasses.replace(exp.Config(), lr=-1.0).validate()
