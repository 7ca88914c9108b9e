"""experiments.nn_vs_cnn (SPEC E8): parameter counts by hand, a sweep setting equal to its
single runs, a diverged member flagged while the others equal their single runs, selection of
the best setting and of uncertain examples, config checks, and a tiny quick run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import nn_vs_cnn as e8
from mljax.experiment import cli_main
from mljax.train import loop, tasks


def test_param_counts_by_hand():
    pc = e8.param_counts()
    # NN 784-16-8-10: d·f + f per dense layer.
    assert pc["nn"] == 784 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10 == 12_786
    # CNN: 5×5×1×8 + 8, 5×5×8×16 + 16; 28 → pool 3 → 9 → pool 2 → 4, so 4·4·16·10 + 10.
    assert pc["cnn"] == 5 * 5 * 8 + 8 + 5 * 5 * 8 * 16 + 16 + 4 * 4 * 16 * 10 + 10 == 5_994
    # The report's models at 48×48×1 → 7 give the report's counts.
    assert pc["ours_at_48x48x7"] == {"nn": 37_079, "cnn": 10_599} == pc["seed"]


def test_uncertain_indices_and_bad_input():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.59, 0.41, 0.0], [0.6, 0.4, 0.0]])
    np.testing.assert_array_equal(e8.uncertain_indices(probs), [1, 2])  # 0.6 itself is not < 0.6
    with pytest.raises(ValueError, match="probs"):
        e8.uncertain_indices(probs[0])
    with pytest.raises(ValueError, match="threshold"):
        e8.uncertain_indices(probs, 0.0)


def test_best_row_skips_settings_with_a_diverged_seed():
    rows = [
        {"setting": "a", "val_acc_mean": 0.9, "diverged": 0.5},
        {"setting": "b", "val_acc_mean": 0.8, "diverged": 0.0},
        {"setting": "c", "val_acc_mean": None, "diverged": 1.0},
        {"setting": "d", "val_acc_mean": 0.7, "diverged": 0.0},
    ]
    assert e8.best_row(rows)["setting"] == "b"
    assert e8.best_row(rows[2:3]) is None


def _tiny_data(n=40, n_val=20, n_test=30):
    k = jax.random.split(jax.random.key(3), 3)
    x = jax.random.uniform(k[0], (n + n_val + n_test, 28, 28, 1))
    y = jax.random.randint(k[1], (n + n_val + n_test,), 0, 10)
    data = loop.Data(x[:n], y[:n], x[n : n + n_val], y[n : n + n_val])
    return data, (x[n + n_val :], y[n + n_val :])


@pytest.mark.slow
def test_sweep_rows_equal_single_runs_and_diverged_member_is_flagged():
    """lr × momentum sweep of the NN with a diverging rate (1e4): its members are flagged, every
    other setting's row equals the statistics of its seeds trained alone by loop.train."""
    data, test = _tiny_data()
    cfg = e8.Config(seeds=2, nn_epochs=2, n_train=40, n_val=20, n_test=30)
    grid = e8.Grids((0.05, 1e4), (0.9,), (10,), ((16, 8),), ((8, 16),))
    key = jax.random.key(7)
    out = e8._run_sweep("lr_momentum", "nn", cfg, grid, data, test, key)
    by = {r["setting"]: r for r in out.rows}
    assert set(by) == {"lr=0.05, momentum=0.9", "lr=10000, momentum=0.9"}
    task = tasks.layer_task(e8.network("nn", (16, 8)), e8.INPUT_SHAPE)
    tcfg = e8._train_config(2, 40)  # batch 100 is cut to the 40 training examples
    row = by["lr=10000, momentum=0.9"]
    assert row["diverged"] == 1.0 and row["val_acc_mean"] is None
    row = by["lr=0.05, momentum=0.9"]
    assert row["diverged"] == 0.0 and row["seeds"] == 2
    val, acc, params = [], [], []
    for s in range(2):
        res = loop.train(task, tcfg, data, loop.Hyper(0.05, 0.9), key=jax.random.fold_in(key, s))
        val.append(float(res.history["val_accuracy"][-1]))
        logits, _ = task.apply(res.params, {}, test[0], train=False, rng=None, hparams=None)
        acc.append(float(jnp.mean(jnp.argmax(logits, -1) == test[1])))
        params.append(res.params)
    np.testing.assert_allclose(row["val_acc_mean"], np.mean(val), atol=1e-6)
    np.testing.assert_allclose(row["val_acc_std"], np.std(val), atol=1e-6)
    np.testing.assert_allclose(row["test_acc_mean"], np.mean(acc), atol=1e-6)
    # test_accuracy: members vmapped or one by one give the hand-computed accuracies.
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
    for vmapped in (True, False):
        np.testing.assert_allclose(
            e8.test_accuracy(task, stacked, *test, vmapped=vmapped), acc, atol=1e-6
        )


def test_registered():
    info = experiments.get("nn_vs_cnn")
    assert info.spec == "E8" and info.load() is e8


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(e8, ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--dataset", "--n-train", "--sweeps", "--models", "--cnn-seeds", "--cnn-epochs",
                "--nn-batch-epochs", "--cnn-strategy", "--quick"):  # fmt: skip
        assert opt in text


@pytest.mark.parametrize(
    "args",
    [
        ["--n-train", "5"],
        ["--n-val", "0"],
        ["--n-train", "59500", "--n-val", "1000"],
        ["--n-test", "0"],
        ["--nn-epochs", "0"],
        ["--cnn-batch-epochs", "0"],
        ["--cnn-seeds", "0"],
        ["--sweeps"],
        ["--models", "nn", "nn"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_option_is_an_error(args, capsys):
    assert cli_main(e8, [*args, "--quick"]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.realdata("fashion_mnist")
def test_quick_run_nn_lr_momentum(tmp_path):
    out = tmp_path / "e8"
    args = ["--quick", "--models", "nn", "--sweeps", "lr_momentum", "--out", str(out), "--quiet"]
    assert cli_main(e8, args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["param_counts"]["nn"] == 12_786
    rows = m["lr_momentum"]["nn"]
    assert len(rows) == 4  # quick grid: lr {0.01, 1} × momentum {0, 0.9}
    for r in rows:
        assert {"setting", "val_acc_mean", "val_acc_std", "diverged"} <= set(r)
        assert 0 <= r["diverged"] <= 1
    assert m["best"]["nn"]["setting"].startswith("lr_momentum: ")
    assert 0 < m["best"]["nn"]["test_acc_mean"] <= 1
    for fig in ("curves_lr_momentum_nn.png", "first_layer.png"):
        assert (out / fig).stat().st_size > 1000
    assert "37,079" in (out / "report.md").read_text()


def _row(setting, val, *, diverged=0.0, **cols):
    return {
        "setting": setting,
        "val_acc_mean": val,
        "val_acc_std": 0.01,
        "diverged": diverged,
        "at_chance": 0.0,
        "val_acc_gain_last_tenth": cols.pop("gain", 0.0),
        "val_loss_mean": cols.pop("loss", 1.0),
        "train_acc_mean": val,
        "train_loss_mean": 1.0,
        "test_acc_mean": val,
        "test_acc_std": 0.01,
        "seeds": 2,
        "epochs": 10,
        **cols,
    }


def _metrics(nn_lrs):
    """Synthetic metrics: NN validation accuracy per learning rate (momentum 0)."""
    rows = [
        _row(f"lr={lr:g}, momentum=0", v, learning_rate=lr, momentum=0.0, gain=0.02)
        for lr, v in nn_lrs.items()
    ]
    meta = {
        "dataset": "fashion_mnist", "n_train": 3400, "n_val": 1000, "n_test": 10000,
        "seeds": {"nn": 2, "cnn": 2}, "epochs": {"nn": 10, "cnn": 5},
        "batch_epochs": {"nn": 2, "cnn": 1}, "timing_s": {}, "strategy": {},
    }  # fmt: skip
    return {
        "param_counts": e8.param_counts(),
        "lr_momentum": {"nn": rows},
        "best": {},
        "uncertain": {},
        "_meta": meta,
    }


def test_report_states_a_difference_only_where_the_run_shows_one():
    agree = _metrics({0.001: 0.7, 0.01: 0.8, 0.1: 0.75})
    assert "NN learning rate" not in e8.report_notes(agree)
    differ = _metrics({0.001: 0.7, 0.01: 0.75, 0.1: 0.8})
    notes = e8.report_notes(differ)
    assert "the report found its default 0.01 best; we find 0.1" in notes
    assert "still rose by 2.0 points" in notes  # the gain of the default's curve, as measured
    row = next(r for r in e8.report_rows(differ) if "learning rate (momentum 0)" in r.figure)
    assert row.ours == "best 0.1"
    # A setting where a seed diverged is never the best.
    diverging = _metrics({0.01: 0.75})
    diverging["lr_momentum"]["nn"].append(
        _row("lr=1, momentum=0", 0.9, diverged=0.5, learning_rate=1.0, momentum=0.0)
    )
    row = next(r for r in e8.report_rows(diverging) if "learning rate (momentum 0)" in r.figure)
    assert row.ours == "best 0.01" and "50% of seeds diverged" in row.note
