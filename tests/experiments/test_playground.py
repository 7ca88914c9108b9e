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
    data = pg.feature_data(sp, ("x1^2", "x2^2"))
    np.testing.assert_array_equal(np.asarray(data.x_train)[:, [0, 1, 4, 5, 6]], 0.0)
    np.testing.assert_allclose(
        np.asarray(data.x_train)[:, 2:4], toy.features(sp.x_train, ("x1^2", "x2^2")), rtol=1e-6
    )


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
    for png in ("decision_boundaries.png", "loss_curves.png", "activation_comparison.png"):
        assert (tmp_path / png).stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "circle" in report and "0.051" in report
