"""Sweeps: members equal single runs, divergence isolation, chunking, datasets, sharding."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mljax.nn.layers import Activation, Dense, Dropout
from mljax.train import loop, sweep, tasks

ROOT = Path(__file__).resolve().parents[2]
X = jax.random.normal(jax.random.key(1), (60, 2))
Y = jnp.where(X[:, 0] * X[:, 1] > 0, 1.0, -1.0)
DATA = loop.Data(X[:40], Y[:40], X[40:], Y[40:])
TASK = tasks.layer_task((Dense(6), Activation("relu"), Dense(1)), (1, 2), loss="mean_squared_error")
CFG = loop.TrainConfig(epochs=6, batch_size=10, optimizer="momentum")


def _equal(a, b):
    chex.assert_trees_all_equal(a, b)


@pytest.fixture(scope="module")
def with_divergent():
    """lr 30 diverges on this problem; 0.05 and 0.2 do not."""
    members = sweep.grid_members(2, {"learning_rate": [0.05, 30.0, 0.2], "l2": [0.0, 0.01]})
    return members, sweep.sweep(TASK, CFG, DATA, members, devices=None)


@pytest.mark.slow
def test_divergent_members_are_frozen_and_others_bit_identical(with_divergent):
    members, res = with_divergent
    assert res.strategy == "vmap"
    lrs = np.array([m.hyper.learning_rate for m in members])
    np.testing.assert_array_equal(res.diverged, lrs == 30.0)
    assert np.all(res.diverged_step[res.diverged] >= 0)
    assert np.all(res.epochs_run[res.diverged] < CFG.epochs)
    for leaf in jax.tree.leaves(res.params):
        assert np.all(np.isfinite(leaf))  # frozen at the last finite step
    # Every other member equals training it alone, outside any sweep (one compiled program
    # serves all the single runs).
    for i in np.flatnonzero(~res.diverged):
        m = members[i]
        key = jax.random.fold_in(jax.random.key(0), m.seed)
        single = loop.train(TASK, CFG, DATA, m.hyper, key=key)
        assert not bool(single.diverged)
        _equal(
            jax.tree.map(lambda a, i=i: a[i], (res.params, res.history)),
            (single.params, single.history),
        )


@pytest.mark.slow
def test_chunking_gives_the_same_results(with_divergent):
    members, res = with_divergent
    chunked = sweep.sweep(TASK, CFG, DATA, members, chunk_size=5, devices=None)
    _equal(res.params, chunked.params)
    np.testing.assert_array_equal(res.best_epoch, chunked.best_epoch)


@pytest.mark.slow
def test_tidy_rows(with_divergent):
    members, res = with_divergent
    assert len(res.rows) == len(members) == 12
    row = res.rows[5]
    assert row["seed"] == members[5].seed
    assert row["learning_rate"] == pytest.approx(members[5].hyper.learning_rate)
    assert row["l2"] == pytest.approx(members[5].hyper.l2)
    assert row["best_val_loss"] == pytest.approx(float(np.nanmin(res.history["val_loss"][5])))
    assert row["diverged"] == bool(res.diverged[5])


@pytest.mark.slow
def test_same_shape_datasets_are_swept_as_traced_data():
    other = loop.Data(-X[:40], Y[:40], -X[40:], Y[40:])
    members = sweep.grid_members([0, 1], data_indices=(0, 1), base=loop.Hyper(learning_rate=0.1))
    res = sweep.sweep(TASK, CFG, [DATA, other], members, devices=None, data_names=["a", "b"])
    assert [r["data"] for r in res.rows] == ["a", "a", "b", "b"]
    for i, m in enumerate(members):
        key = jax.random.fold_in(jax.random.key(0), m.seed)
        single = loop.train(TASK, CFG, [DATA, other][m.data_index], m.hyper, key=key)
        _equal(jax.tree.map(lambda a, i=i: a[i], res.params), single.params)


DROP_LAYERS = (Dense(8), Activation("relu"), Dropout(0.0), Dense(1))
DROP_TASK = tasks.layer_task(
    DROP_LAYERS, (1, 2), loss="mean_squared_error", dropout_from_hyper=True
)
DROP_CFG = loop.TrainConfig(epochs=2, batch_size=10, optimizer="momentum")
DROP_RATES = [0.0, 0.3, 0.6]


@pytest.fixture(scope="module")
def dropout_sweep():
    base = loop.Hyper(learning_rate=0.1)
    members = sweep.grid_members(2, {"dropout_rate": DROP_RATES}, base=base)
    return members, sweep.sweep(DROP_TASK, DROP_CFG, DATA, members, devices=None)


@pytest.mark.slow
def test_dropout_rate_sweep_equals_each_rate_alone(dropout_sweep):
    """Traced, vmapped dropout rates: every member equals its own single run bit for bit."""
    members, res = dropout_sweep
    assert [r["dropout_rate"] for r in res.rows] == pytest.approx([0, 0, 0.3, 0.3, 0.6, 0.6])
    for i, m in enumerate(members):
        key = jax.random.fold_in(jax.random.key(0), m.seed)
        single = loop.train(DROP_TASK, DROP_CFG, DATA, m.hyper, key=key)
        for u, v in zip(
            jax.tree.leaves((res.params, res.history)),
            jax.tree.leaves((single.params, single.history)),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(u)[i], np.asarray(v))
    # The rate is used: same seed, different rates, different parameters.
    k = res.params["layer_0"]["kernel"]
    assert not np.allclose(k[0], k[2]) and not np.allclose(k[2], k[4])


@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.slow
def test_traced_dropout_rate_equals_the_static_rate(dropout_sweep, rate):
    """Rate 0 is no dropout (a static Dropout(0.0) is inactive); 0.3 equals Dropout(0.3)."""
    members, res = dropout_sweep
    layers = (*DROP_LAYERS[:2], Dropout(rate), DROP_LAYERS[3])
    static = tasks.layer_task(layers, (1, 2), loss="mean_squared_error")
    i = next(j for j, m in enumerate(members) if m.hyper.dropout_rate == rate and m.seed == 1)
    hp = members[i].hyper._replace(dropout_rate=0.0)
    key = jax.random.fold_in(jax.random.key(0), 1)
    ref = loop.train(static, DROP_CFG, DATA, hp, key=key)
    for u, v in zip(jax.tree.leaves(res.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_allclose(np.asarray(u)[i], np.asarray(v), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_sequential_strategy_agrees_with_vmap(with_divergent):
    """The Python loop per member (strategy "sequential") gives the vmapped members' runs."""
    members, vm = with_divergent
    idx = [i for i, m in enumerate(members) if m.hyper.learning_rate == 0.2]
    seq = sweep.sweep(TASK, CFG, DATA, [members[i] for i in idx], strategy="sequential")
    assert seq.strategy == "sequential"
    chex.assert_trees_all_close(
        jax.tree.map(lambda a: a[idx], (vm.params, vm.history)),
        (seq.params, seq.history),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sweep.grid_members(2, {"learning_rate": []}), "is empty"),
        (lambda: sweep.grid_members(2, {"lr": [0.1]}), "unknown hyperparameter"),
        (lambda: sweep.grid_members([], {"learning_rate": [0.1]}), "at least one seed"),
        (lambda: sweep.sweep(TASK, CFG, DATA, []), "members is empty"),
        (
            lambda: sweep.sweep(
                TASK, CFG, DATA, sweep.grid_members(1, {"learning_rate": [0.1, -0.1]})
            ),
            r"learning_rate must be a finite number in \(0",
        ),
        (
            lambda: sweep.sweep(TASK, CFG, [DATA, loop.Data(X, Y, X, Y)], sweep.grid_members(1)),
            "must share shapes",
        ),
        (
            lambda: sweep.sweep(TASK, CFG, DATA, sweep.grid_members(1), strategy="pmap"),
            "strategy must be one of",
        ),
        (
            lambda: sweep.sweep(TASK, CFG, DATA, sweep.grid_members(1), chunk_size=0),
            "chunk_size must be None or an int >= 1",
        ),
        (
            lambda: sweep.sweep(TASK, CFG, [DATA, DATA], sweep.grid_members(1), data_names=["a"]),
            "data_names has 1 names for 2 datasets",
        ),
        (
            lambda: sweep.sweep(
                DROP_TASK, CFG, DATA, sweep.grid_members(1, {"dropout_rate": [0.2, 1.0]})
            ),
            r"dropout_rate must be a finite number in \[0.0, 1.0\)",
        ),
        (
            lambda: sweep.sweep(
                DROP_TASK, CFG, DATA, sweep.grid_members(1, {"dropout_rate": [-0.1]})
            ),
            r"dropout_rate must be a finite number in \[0.0, 1.0\)",
        ),
        (
            lambda: sweep.sweep(TASK, CFG, DATA, sweep.grid_members(1, {"dropout_rate": [0.2]})),
            "ignores Hyper.dropout_rate",
        ),
        (
            lambda: loop.train(TASK, CFG, DATA, loop.Hyper(dropout_rate=0.5)),
            "ignores Hyper.dropout_rate",
        ),
        (
            lambda: tasks.layer_task((Dense(2),), (1, 2), dropout_from_hyper=True),
            "needs at least one Dropout layer",
        ),
    ],
    ids=[
        "empty-values",
        "unknown-field",
        "no-seeds",
        "no-members",
        "bad-lr",
        "shapes",
        "strategy",
        "chunk-size",
        "data-names",
        "dropout-1",
        "dropout-negative",
        "dropout-ignored-sweep",
        "dropout-ignored-train",
        "dropout-no-layer",
    ],
)
def test_bad_input_is_a_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


SHARDED = textwrap.dedent(
    """
    import sys
    import chex
    chex.set_n_cpu_devices(4)  # simulated devices, before JAX starts its backend
    import jax, jax.numpy as jnp, numpy as np
    from mljax.config import enable_compilation_cache
    from mljax.nn.layers import Activation, Dense
    from mljax.train import loop, sweep, tasks
    enable_compilation_cache()
    assert jax.device_count() == 4, jax.devices()
    x = jax.random.normal(jax.random.key(1), (60, 2)); y = jnp.where(x[:, 0] * x[:, 1] > 0, 1.0, -1.0)
    task = tasks.layer_task((Dense(6), Activation("relu"), Dense(1)), (1, 2), loss="mean_squared_error")
    cfg = loop.TrainConfig(epochs=6, batch_size=10, optimizer="momentum")
    data = loop.Data(x[:40], y[:40], x[40:], y[40:])
    members = sweep.grid_members(2, {"learning_rate": [0.05, 30.0, 0.2], "l2": [0.0, 0.01]})
    sharded = sweep.sweep(task, cfg, data, members, chunk_size=5)  # chunks of 8: 8 + 4 padded
    assert sharded.devices == 4, sharded.devices
    leaves = jax.tree.leaves((sharded.params, sharded.history, sharded.diverged))
    np.savez(sys.argv[1], *leaves)
    """
)


@pytest.mark.slow
def test_sharded_sweep_equals_one_device(with_divergent, tmp_path):
    """The with_divergent sweep on 4 simulated CPU devices (a subprocess: the device count is
    fixed when JAX starts) equals it on one device, bit for bit."""
    members, single = with_divergent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "sharded.npz"
    done = subprocess.run(
        [sys.executable, "-c", SHARDED, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        sharded = [f[f"arr_{i}"] for i in range(len(f.files))]
    expected = jax.tree.leaves((single.params, single.history, single.diverged))
    chex.assert_trees_all_equal(sharded, [np.asarray(a) for a in expected])
    assert 0 < int(single.diverged.sum()) < len(members)  # both kinds of member were compared


def _count_train_steps(task, n):
    """``task`` whose training-mode forward pass (traced only inside the training step) may
    be traced at most ``n`` times in this process (chex.assert_max_traces)."""

    @chex.assert_max_traces(n=n)
    def forward(params, state, x, rng, hparams):
        return task.apply(params, state, x, train=True, rng=rng, hparams=hparams)

    def apply(params, state, x, *, train, rng, hparams):
        if train:
            return forward(params, state, x, rng, hparams)
        return task.apply(params, state, x, train=False, rng=rng, hparams=hparams)

    return dataclasses.replace(task, apply=apply)


@pytest.mark.slow
def test_vmapped_members_compile_once_across_chunks_and_calls():
    """Two chunks of two members, then a second sweep: the member program is traced once."""
    counting = _count_train_steps(TASK, n=1)
    cfg = dataclasses.replace(CFG, epochs=2)
    members = sweep.grid_members(2, {"learning_rate": [0.05, 0.2]})
    res = sweep.sweep(counting, cfg, DATA, members, chunk_size=2, devices=None)
    again = sweep.sweep(counting, cfg, DATA, members[:2], chunk_size=2, devices=None)
    _equal(jax.tree.map(lambda a: a[:2], res.params), again.params)


@pytest.mark.slow
def test_sequential_members_reuse_the_compiled_step():
    """The Python loop's step is traced (hence compiled) once, not once per member; an equal
    task (same functions) reuses it, a task with other functions compiles its own."""
    traces = []

    def forward(params, state, x, rng, hparams):
        traces.append(x.shape)  # runs at trace time only
        return TASK.apply(params, state, x, train=True, rng=rng, hparams=hparams)

    counted = chex.assert_max_traces(forward, n=2)

    def apply(params, state, x, *, train, rng, hparams):
        if train:
            return counted(params, state, x, rng, hparams)
        return TASK.apply(params, state, x, train=False, rng=rng, hparams=hparams)

    counting = dataclasses.replace(TASK, apply=apply)
    cfg = dataclasses.replace(CFG, epochs=2)
    members = sweep.grid_members(3, {"learning_rate": [0.05, 0.2]})
    first = sweep.sweep(counting, cfg, DATA, members[:1], strategy="sequential")
    assert len(traces) == 1
    rest = sweep.sweep(counting, cfg, DATA, members, strategy="sequential")
    assert len(traces) == 1  # five more members, no new trace
    # ... and reuse changes nothing: member 0 is the same run both times.
    _equal(jax.tree.map(lambda a: a[:1], rest.params), first.params)
    sweep.sweep(
        dataclasses.replace(TASK, apply=apply), cfg, DATA, members[:1], strategy="sequential"
    )
    assert len(traces) == 1  # an equal task: the same cache entry
    sweep.sweep(
        dataclasses.replace(TASK, apply=lambda *a, **k: apply(*a, **k)),
        cfg,
        DATA,
        members[:1],
        strategy="sequential",
    )
    assert len(traces) == 2  # other functions: compiled anew


# ----------------------------------------------------------------------------- group_stats


def _manual(values, ddof):
    """Reference mean / std / count of the finite values by the statistics module."""
    finite = [float(v) for v in values if np.isfinite(v)]
    mean = statistics.fmean(finite) if finite else math.nan
    if len(finite) > ddof:
        var = sum((v - mean) ** 2 for v in finite) / (len(finite) - ddof)
        std = math.sqrt(var)
    else:
        std = math.nan
    return mean, std, len(finite)


def _rows():
    rng = np.random.default_rng(0)
    rows = []
    for i, (lr, l2, seed) in enumerate(itertools.product([0.1, 0.3], [0.0, 0.01], range(4))):
        v = float(rng.normal(lr * 10 + l2 * 100, 1.0))
        if i in (5, 6, 7):
            v = [math.nan, math.inf][i % 2]  # lr 0.1, l2 0.01: one finite value left
        rows.append({"learning_rate": lr, "l2": l2, "seed": seed, "data": "a", "metric": v})
    return rows


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("by", [("learning_rate", "l2"), ("learning_rate",), ("seed",), ()])
def test_group_stats_of_a_scalar_match_manual_grouping(by, ddof):
    rows = _rows()
    gs = sweep.group_stats(rows, by, "metric", ddof=ddof)
    expected_keys = list(dict.fromkeys(tuple(r[c] for c in by) for r in rows))
    assert gs.keys == expected_keys and gs.by == by
    for g, key in enumerate(gs.keys):
        vals = [r["metric"] for r in rows if tuple(r[c] for c in by) == key]
        mean, std, n = _manual(vals, ddof)
        np.testing.assert_allclose(gs.mean[g], mean, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(gs.std[g], std, rtol=1e-12, equal_nan=True)
        assert gs.count[g] == n and gs.size[g] == len(vals)
    if by == ("learning_rate", "l2"):
        g = gs.keys.index((0.1, 0.01))
        assert gs.count[g] == 1 and (np.isnan(gs.std[g]) == (ddof == 1))
        assert gs.rows()[g]["size"] == 4 and gs.label(g) == "learning_rate=0.1, l2=0.01"


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.slow
def test_group_stats_of_history_curves_are_nan_aware(with_divergent, ddof):
    """Per epoch over seeds and l2; diverged members (NaN after their stop) drop out."""
    members, res = with_divergent
    gs = sweep.group_stats(res, "learning_rate", "val_loss", ddof=ddof)
    lrs = [m.hyper.learning_rate for m in members]
    assert [k[0] for k in gs.keys] == pytest.approx([0.05, 30.0, 0.2])
    assert gs.mean.shape == (3, CFG.epochs)
    for g, (lr,) in enumerate(gs.keys):
        curves = res.history["val_loss"][[i for i, v in enumerate(lrs) if v == lr]]
        for e in range(CFG.epochs):
            mean, std, n = _manual(curves[:, e], ddof)
            np.testing.assert_allclose(gs.mean[g, e], mean, rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(gs.std[g, e], std, rtol=1e-12, equal_nan=True)
            assert gs.count[g, e] == n
    diverged = gs.keys.index((30.0,))
    assert gs.count[diverged, -1] < 4  # frozen members stopped early
    assert np.all(gs.count[[0, 2]] == 4)
    # Scalar columns of the same result: the final validation loss per rate.
    final = sweep.group_stats(res, ["learning_rate", "l2"], "final_val_loss")
    assert len(final.keys) == 6 and np.all(final.size == 2)


@pytest.mark.slow
def test_curves_with_bands_draws_group_stats(with_divergent):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mljax.train import figures

    _, res = with_divergent
    gs = sweep.group_stats(res, "learning_rate", "val_loss")
    fig, ax = plt.subplots()
    lines = figures.curves_with_bands(ax, gs)
    assert [ln.get_label() for ln in lines] == [
        "learning_rate=0.05",
        "learning_rate=30",
        "learning_rate=0.2",
    ]
    for g, ln in enumerate(lines):
        np.testing.assert_array_equal(ln.get_ydata(), gs.mean[g])
    plt.close(fig)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([], "seed", "metric"), {}, "no rows"),
        ((_rows(), "momentum", "metric"), {}, "unknown column"),
        ((_rows(), "seed", "accuracy"), {}, "unknown metric"),
        ((_rows(), "seed", "data"), {}, "must be numeric"),
        ((_rows(), "seed", "metric"), {"ddof": -1}, "ddof must be"),
        (([{"a": 1, "m": [1.0, 2.0]}, {"a": 1, "m": [1.0]}], "a", "m"), {}, "must be numeric"),
    ],
    ids=["empty", "column", "metric", "string-metric", "ddof", "ragged-curves"],
)
def test_group_stats_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sweep.group_stats(*args, **kwargs)
