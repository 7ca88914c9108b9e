"""experiments.playground: quick run end to end, the loss convention, cells, bad config."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import playground as pg
from mljax.data import toy
from mljax.experiment import execute
from mljax.train import loop, tasks


def test_registered():
    info = experiments.get("playground")
    assert (info.seed_file, info.section, info.spec) == ("003_7a64f05ef5897792.txt", "§1", "E5")
    assert info.load() is pg


def test_playground_loss_is_mean_half_squared_error_of_tanh_output():
    """The Playground's getLoss: mean over points of 0.5 (output - label)^2, tanh output."""
    task = tasks.layer_task(pg.network((3,), "relu"), (1, 7), loss="mean_squared_error")
    params, state = task.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (9, 7))
    y = jnp.where(x[:, 0] > 0, 1.0, -1.0)
    h = jax.nn.relu(x @ params["layer_0"]["kernel"] + params["layer_0"]["bias"])
    out = jnp.tanh(h @ params["layer_2"]["kernel"] + params["layer_2"]["bias"])[:, 0]
    ev = loop.evaluate(task, params, state, x, y, loop.Hyper())
    np.testing.assert_allclose(ev["loss"], np.mean(0.5 * (out - y) ** 2), rtol=1e-6)
    w = np.asarray(params["layer_0"]["kernel"])
    assert np.all(np.abs(w) <= 0.5)  # the Playground's U(-0.5, 0.5) init


def test_masked_features_equal_selected_features():
    """Zeroed feature columns leave the data term and its gradients unchanged."""
    sp = toy.playground_split("circle", jax.random.key(0), 40)
    data = pg.feature_data(sp, ("x1^2", "x2^2"), "tanh")
    np.testing.assert_array_equal(np.asarray(data.x_train)[:, [0, 1, 4, 5, 6]], 0.0)
    np.testing.assert_allclose(
        np.asarray(data.x_train)[:, 2:4], toy.features(sp.x_train, ("x1^2", "x2^2")), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(data.x_val)[:, 7], 1.0)  # tanh's code
    with pytest.raises(ValueError, match="activation must be one of"):
        pg.feature_data(sp, ("x1",), "gelu")


@pytest.mark.parametrize("activation", pg.ACTIVATIONS)
@pytest.mark.slow
def test_playground_task_equals_the_fixed_activation_network(activation):
    """The activation chosen by the code column: same init, outputs and gradients as
    layer_task(network(hidden, activation)) on the seven features."""
    hidden = (4, 3)
    mixed = pg.playground_task(hidden)
    fixed = tasks.layer_task(
        pg.network(hidden, activation), (1, 7), loss="mean_squared_error", bias_init=0.1
    )
    params, state = mixed.init(jax.random.key(2))
    ref_params, _ = fixed.init(jax.random.key(2))
    for u, v in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(u, v)
    sp = toy.playground_split("xor", jax.random.key(0), 40)
    data = pg.feature_data(sp, pg.ALL, activation)
    y = data.y_train
    out, _ = mixed.apply(params, state, data.x_train, train=True, rng=None, hparams=None)
    ref, _ = fixed.apply(params, state, data.x_train[:, :7], train=True, rng=None, hparams=None)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    mask = jnp.ones(y.shape[0], bool)
    hp = loop.Hyper()
    _, g, _ = loop.autodiff_grad_fn(mixed)(params, (data.x_train, y, mask), None, state, hp)
    _, g_ref, _ = fixed.manual_grad(params, (data.x_train[:, :7], y, mask), None, state, hp)
    for u, v in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)


def test_cells_cover_the_report_tables():
    full = pg.cells(False)
    assert all(c in full for c in pg.REPORT_CELLS)
    assert {c.activation for c in full} == set(pg.ACTIVATIONS)
    assert {c.reg for c in full} == set(pg.REGS)
    assert {c.dataset for c in full} == set(toy.PLAYGROUND_DATASETS)
    assert len({c.name for c in full if c.dataset == "xor"}) == len(
        [c for c in full if c.dataset == "xor"]
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "--epochs"),
        ({"noise": 0.7}, "--noise"),
        ({"learning_rate": 0.0}, "--learning-rate"),
        ({"batch_size": 400}, "--batch-size"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pg.Config(**kwargs).validate()


@pytest.mark.slow
def test_quick_run(tmp_path, monkeypatch):
    # The sigmoid cells of quick mode (two compiled groups) keep the smoke test short;
    # `reproduce --quick` runs the whole quick grid.
    quick_cells = pg.cells(True)
    monkeypatch.setattr(
        pg, "cells", lambda quick: [c for c in quick_cells if c.activation == "sigmoid"]
    )
    config = dataclasses.replace(pg.Config(quick=True, quiet=True, out=str(tmp_path)), seeds=2)
    _metrics, _run_dir = execute(pg, config)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for d in toy.PLAYGROUND_DATASETS:
        assert saved[d], d
        for _name, m in saved[d].items():
            assert set(m) >= {
                "test_loss_mean",
                "test_loss_std",
                "train_loss_mean",
                "epochs",
                "seed_reported_test_loss",
            }
            assert 0.0 <= m["test_loss_mean"] <= 2.0
    assert saved["_meta"]["strategy"] == ["vmap"]
    # Easy sets are learnt in 60 epochs: gauss with (x1, x2) far below chance (0.5).
    gauss = saved["gauss"]["x1,x2 | sigmoid 5-5 | none"]
    assert gauss["test_loss_mean"] < 0.05 and gauss["seed_reported_test_loss"] == 0.0
    for d in toy.PLAYGROUND_DATASETS:
        for m in saved[d].values():
            never, reached = m["never_reached_0.01_fraction"], m["reached_0.01_fraction"]
            assert never == pytest.approx(1.0 - reached) and m["seeds"] == 2
            med = m["epochs_to_test_loss_0.01_median"]
            # 2 seeds: the median is the mean of both, so one never-reaching seed makes it ∞.
            assert (med is None) == (never >= 0.5) and (med is None or 1 <= med <= 60)
    comparison = saved["_activation_comparison"]
    assert set(comparison["report"]) == set(toy.PLAYGROUND_DATASETS)
    gauss_sig = comparison["report"]["gauss"]["sigmoid"]
    cell = saved["gauss"]["x1,x2 | sigmoid 5-5 | none"]
    assert gauss_sig["median"] == cell["epochs_to_test_loss_0.01_median"]
    assert gauss_sig["reached_fraction"] == cell["reached_0.01_fraction"]
    for png in ("decision_boundaries.png", "loss_curves.png", "activation_comparison.png"):
        assert (tmp_path / png).stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "circle" in report and "0.051" in report
    assert "activation comparison, gauss (report features)" in report


def test_epochs_to_target_is_the_first_epoch_at_or_below_the_target():
    curves = np.array(
        [
            [0.5, 0.02, 0.01, 0.001],  # first <= 0.01 at epoch 3
            [0.5, 0.4, 0.3, 0.2],  # never
            [0.005, np.nan, np.nan, np.nan],  # epoch 1, then stopped
            [0.5, np.nan, np.nan, np.nan],  # stopped before reaching it
        ]
    )
    expected = []
    for row in curves:
        hits = [e + 1 for e, v in enumerate(row) if v <= 0.01]
        expected.append(hits[0] if hits else np.inf)
    np.testing.assert_array_equal(pg.epochs_to_target(curves, 0.01), expected)
    with pytest.raises(ValueError, match="curves must be"):
        pg.epochs_to_target(np.zeros(3))


def _notes_metrics(stuck_l1: float, stuck_free: float) -> dict:
    def cell(stuck, reported=None):
        return {
            "stuck_at_chance_fraction": stuck,
            "test_loss_mean": 0.5 if stuck else 0.02,
            "test_loss_std": 0.01,
            "epochs": 1000,
            "first_layer_abs_weight_mean": 0.001 if stuck else 0.3,
            "reached_0.01_fraction": 0.0,
        }

    l1 = next(c for c in pg.REPORT_CELLS if c.dataset == "spiral" and c.reg == "L1")
    free = pg.Cell("spiral", pg.ALL, "sigmoid", "none", pg.BEST["spiral"][1])
    return {"spiral": {l1.name: cell(stuck_l1), free.name: cell(stuck_free)}, "_meta": {"seeds": 8}}


def test_report_notes_blame_the_penalty_only_when_the_unpenalised_net_escapes():
    note = pg.report_notes(_notes_metrics(stuck_l1=1.0, stuck_free=0.0))
    assert "spiral, all features, L1 0.01" in note and "0.001" in note and "0.3" in note
    assert "L2" not in note  # no L2 cell in these metrics
    assert pg.report_notes(_notes_metrics(stuck_l1=1.0, stuck_free=1.0)) == ""
    assert pg.report_notes(_notes_metrics(stuck_l1=0.0, stuck_free=0.0)) == ""
    # Some but not all seeds stuck: the note says so instead of "never left".
    partial = pg.report_notes(_notes_metrics(stuck_l1=0.75, stuck_free=0.0))
    assert "75% of 8 seeds" in partial and "these seeds do not leave the plateau" in partial
    assert "no seed leaves" in note


def test_xor_note_counts_the_stuck_seeds_it_measured():
    xor = next(
        c
        for c in pg.REPORT_CELLS
        if c.dataset == "xor" and c.hidden == (5, 5) and c.reported == 0.5
    )

    def metrics(stuck):
        cell = {
            "stuck_at_chance_fraction": stuck,
            "test_loss_mean": 0.1,
            "test_loss_std": 0.01,
            "epochs": 300,
            "reached_0.01_fraction": 0.5,
        }
        return {"xor": {xor.name: cell}, "_meta": {"seeds": 8, "epochs": 300}}

    all_leave = pg.report_notes(metrics(0.0))
    assert "all leave it" in all_leave and "none of 8 here" in all_leave
    some_stuck = pg.report_notes(metrics(0.25))
    assert "25% of our 8 initialisations stay on it" in some_stuck
    assert "all leave it" not in some_stuck and "none of 8" not in some_stuck


def _same_metrics(one, two, path="") -> None:
    """Equal JSON trees, bit for bit, except the wall time (not compared)."""
    if isinstance(one, dict):
        assert set(one) == set(two), path
        for k in one:
            if k != "wall_time_s":
                _same_metrics(one[k], two[k], f"{path}/{k}")
    elif isinstance(one, list):
        assert len(one) == len(two), path
        for i, (a, b) in enumerate(zip(one, two, strict=True)):
            _same_metrics(a, b, f"{path}[{i}]")
    else:
        assert one == two, path


@pytest.mark.slow
def test_two_processes_give_the_one_process_metrics(tmp_path, launch, free_port, cluster_options):
    """`python -m experiments.playground --quick` as two processes on 127.0.0.1 writes the
    metrics.json of the same run in one process, bit for bit but the wall time; process 1
    writes nothing.

    Each device compiles the sweep for half the members. The evaluated losses are summed in
    an order that does not depend on that batch (``loop.fixed_order_sum``); with ``jnp.sum``
    22 of the 34 train-set loss means of this run differed by up to 2.3e-7 relative."""
    argv = ["--quick", "--quiet"]
    procs = [
        launch(
            [
                "-m",
                "experiments.playground",
                *argv,
                "--out",
                tmp_path / f"p{i}",
                *cluster_options(free_port, 2, i),
            ],
            f"p{i}",
        )
        for i in range(2)
    ]
    # Meanwhile, here, in one process on one device: all members per call.
    execute(pg, pg.Config(quick=True, quiet=True, out=str(tmp_path / "one")))
    for p in procs:
        assert p.wait(300) == 0, "\n".join(q.output()[-3000:] for q in procs)
    assert not (tmp_path / "p1").exists()
    two = json.loads((tmp_path / "p0" / "metrics.json").read_text())
    _same_metrics(json.loads((tmp_path / "one" / "metrics.json").read_text()), two)
