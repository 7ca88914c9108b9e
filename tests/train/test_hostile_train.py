"""Hostile input to the trainers (issue #15): learning rates given as arrays, inputs with the
wrong number of features, labels outside ``[0, n_classes)`` or not integers, and losses that
explode while staying finite. Each is refused before tracing with a ``ValueError`` naming the
argument, or flagged as a divergence; hypothesis drives the same entry points with hostile
values (fixed array shapes: every new shape would recompile)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mljax.nn.layers import Dense
from mljax.train import loop, sweep, tasks

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_X = np.asarray(jax.random.normal(jax.random.key(1), (40, 3)), np.float32)
_Y = (_X[:, 0] - _X[:, 1] > 0).astype(np.int32)
DATA = loop.Data(_X[:32], _Y[:32], _X[32:], _Y[32:])
LINEAR = tasks.layer_task((Dense(2),), (1, 3))  # softmax cross-entropy, 2 classes
CFG = loop.TrainConfig(epochs=3, batch_size=8)


def _sweep(data, members, cfg=CFG, task=LINEAR):
    return sweep.sweep(task, cfg, data, members, devices=None)


# ----------------------------------------------------------------------------- learning rate


@pytest.mark.parametrize(
    "lr", [np.array([0.1, 0.2]), [0.1], np.array([[0.1]]), np.array(0.1 + 0j), "0.1", None]
)
def test_learning_rate_that_is_no_scalar_is_refused(lr):
    with pytest.raises(ValueError, match="learning_rate"):
        loop.train(LINEAR, CFG, DATA, loop.Hyper(learning_rate=lr))
    member = sweep.Member(0, 0, loop.Hyper(learning_rate=lr))
    with pytest.raises(ValueError, match="learning_rate"):
        _sweep(DATA, [member])


@pytest.mark.slow
def test_stacked_hyperparameters_still_sweep():
    """The sweep's own path passes [M] learning rates through vmap (no scalar check there)."""
    members = sweep.grid_members(1, {"learning_rate": [0.05, 0.2]})
    res = _sweep(DATA, members)
    hp = sweep.stack_hyper(members)
    assert hp.learning_rate.shape == (2,)
    fn = jax.jit(jax.vmap(loop.make_train(LINEAR, CFG), in_axes=(None, 0, None)))
    direct = fn(loop.as_data(DATA), hp, jax.random.fold_in(jax.random.key(0), 0))
    chex.assert_trees_all_close(direct.params, res.params, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("field", ["x_train", "x_val"])
def test_wrong_number_of_features_is_refused_before_training(field):
    bad = DATA._replace(**{field: np.zeros((getattr(DATA, field).shape[0], 5), np.float32)})
    with pytest.raises(ValueError, match=rf"{field} has shape \(\d+, 5\).*\(n, 3\)"):
        loop.train(LINEAR, CFG, bad)
    with pytest.raises(ValueError, match=field):
        _sweep(bad, sweep.grid_members(1))


def test_inputs_of_another_rank_are_refused():
    bad = DATA._replace(x_train=DATA.x_train.reshape(32, 3, 1))
    with pytest.raises(ValueError, match=r"x_train has shape \(32, 3, 1\)"):
        loop.train(LINEAR, CFG, bad)


# ----------------------------------------------------------------------------- labels


BAD_LABELS = {
    "minus one": (_Y[:32] - 1, r"\[0, 2\).*values in \[-1, "),
    "too large": (_Y[:32] * 5, r"\[0, 2\).*values in \[\d, 5\]"),
    "float": (_Y[:32].astype(np.float32), r"\[0, 2\).*dtype float32"),
    "fraction": (_Y[:32] + 0.5, r"dtype float"),
    "bool": (_Y[:32].astype(bool), r"dtype bool"),
    "2-D": (_Y[:32, None], r"shape \(n,\); got shape \(\d+, 1\)"),
}


@pytest.mark.parametrize("name", list(BAD_LABELS))
@pytest.mark.parametrize("field", ["y_train", "y_val"])
def test_bad_labels_are_refused_before_training(name, field):
    labels, match = BAD_LABELS[name]
    if field == "y_val":
        labels = labels[:8]
    bad = DATA._replace(**{field: labels})
    with pytest.raises(ValueError, match=rf"{field} must hold integer class labels.*{match}"):
        loop.train(LINEAR, CFG, bad)
    with pytest.raises(ValueError, match=field):
        _sweep(bad, sweep.grid_members(1))
    other = loop.Data(-DATA.x_train, DATA.y_train, -DATA.x_val, DATA.y_val)
    with pytest.raises(ValueError, match=field):  # one bad dataset of a multi-data sweep
        _sweep([other, bad], sweep.grid_members(1, data_indices=(0, 1)))


def test_regression_targets_are_not_label_checked():
    task = tasks.layer_task((Dense(1),), (1, 3), loss="mean_squared_error")
    data = loop.Data(DATA.x_train, DATA.x_train[:, :1] * 7.5 - 3)
    res = loop.train(task, dataclasses.replace(CFG, monitor="train_loss"), data)
    assert np.all(np.isfinite(np.asarray(res.history["train_loss"])))


@SETTINGS
@given(
    labels=st.lists(st.integers(-3, 4), min_size=32, max_size=32),
    dtype=st.sampled_from(["int32", "int64", "uint8", "float32", "bool"]),
)
@pytest.mark.slow
def test_property_labels_in_range_train_finite_else_valueerror(labels, dtype):
    y = np.asarray(labels)
    cfg = dataclasses.replace(CFG, epochs=1, monitor="train_loss")
    if dtype == "bool" or dtype == "uint8":
        y = np.abs(y)
    y = y.astype(dtype)
    data = loop.Data(DATA.x_train, y)
    ok = dtype.startswith(("int", "uint")) and y.min() >= 0 and y.max() < 2
    if not ok:
        with pytest.raises(ValueError, match="y_train must hold integer class labels"):
            loop.train(LINEAR, cfg, data)
        return
    res = loop.train(LINEAR, cfg, data)
    assert not bool(res.diverged)
    assert np.all(np.isfinite(np.asarray(res.history["train_loss"])))


@SETTINGS
@given(d=st.integers(0, 6), rank=st.integers(1, 3))
@pytest.mark.slow
def test_property_feature_shapes(d, rank):
    shape = (32, d) if rank == 2 else ((32,) if rank == 1 else (32, d, 1))
    x = np.resize(DATA.x_train, shape).astype(np.float32)
    cfg = dataclasses.replace(CFG, epochs=1, monitor="train_loss")
    if shape == (32, 3):
        res = loop.train(LINEAR, cfg, loop.Data(x, DATA.y_train))
        assert np.all(np.isfinite(np.asarray(res.history["train_loss"])))
    else:
        with pytest.raises(ValueError, match=r"x_train has shape .*\(n, 3\)"):
            loop.train(LINEAR, cfg, loop.Data(x, DATA.y_train))


# ----------------------------------------------------------------------------- divergence

HUGE = loop.Hyper(learning_rate=1e6, momentum=0.0)


@pytest.mark.slow
def test_finite_exploding_loss_is_a_divergence():
    """Cross-entropy of a linear model with learning rate 1e6: losses of 1e5 and more, all
    finite; only the non-finite test let it run to the end with ``diverged = False``."""
    res = loop.train(LINEAR, CFG, DATA, HUGE)
    assert bool(res.diverged)
    assert int(res.diverged_step) >= 1
    for leaf in jax.tree.leaves(res.params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    # The same run without the factor is finite throughout and never flagged.
    old = loop.train(LINEAR, dataclasses.replace(CFG, divergence_factor=None), DATA, HUGE)
    assert not bool(old.diverged)
    losses = np.asarray(old.history["train_batch_loss"])
    assert np.all(np.isfinite(losses)) and losses.max() > 1e5


@pytest.mark.slow
def test_python_loop_flags_the_same_divergence():
    res = loop.train(LINEAR, dataclasses.replace(CFG, strategy="python"), DATA, HUGE)
    scan = loop.train(LINEAR, CFG, DATA, HUGE)
    assert bool(res.diverged) and int(res.diverged_step) == int(scan.diverged_step)
    chex.assert_trees_all_close(res.params, scan.params, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_exploding_sweep_member_is_flagged_and_isolated():
    members = sweep.grid_members(2, {"learning_rate": [0.1, 1e6]}, base=HUGE)
    res = _sweep(DATA, members)
    lrs = np.array([m.hyper.learning_rate for m in members])
    np.testing.assert_array_equal(res.diverged, lrs == 1e6)
    assert [r["diverged"] for r in res.rows] == list(lrs == 1e6)
    for i, m in enumerate(members):
        single = loop.train(
            LINEAR, CFG, DATA, m.hyper, key=jax.random.fold_in(jax.random.key(0), m.seed)
        )
        assert bool(single.diverged) == bool(res.diverged[i])
        assert int(single.diverged_step) == int(res.diverged_step[i])
        # Parameters bit for bit; the vmapped evaluation of this model's history may differ
        # by one float32 ulp from the single run's, with or without a divergent member.
        chex.assert_trees_all_equal(jax.tree.map(lambda a, i=i: a[i], res.params), single.params)
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], res.history), single.history, rtol=1e-6
        )
    # The same grid without the exploding member: the others are unchanged.
    calm = _sweep(DATA, [m for m in members if m.hyper.learning_rate != 1e6])
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[lrs != 1e6], res.params), calm.params)


@pytest.mark.parametrize("factor", [0.5, 1.0, -3.0, float("nan"), float("inf"), "big", True])
def test_divergence_factor_is_checked(factor):
    with pytest.raises(ValueError, match="divergence_factor"):
        loop.TrainConfig(divergence_factor=factor)


@SETTINGS
@given(
    lr=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3, 1e6, 1e12, 1e30]),
        st.none(),
        st.booleans(),
        st.text(max_size=3),
        st.lists(st.floats(0.01, 1.0), min_size=1, max_size=2).map(np.asarray),
    )
)
@pytest.mark.slow
def test_property_learning_rate(lr):
    """A ValueError naming ``learning_rate``, or a run whose parameters are finite and whose
    losses are finite and bounded unless it is flagged as diverged."""
    valid = isinstance(lr, float) and np.isfinite(lr) and lr > 0
    if not valid:
        with pytest.raises(ValueError, match="learning_rate"):
            loop.train(LINEAR, CFG, DATA, loop.Hyper(learning_rate=lr))
        return
    res = loop.train(LINEAR, CFG, DATA, loop.Hyper(learning_rate=lr, momentum=0.0))
    for leaf in jax.tree.leaves(res.params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    if not bool(res.diverged):
        losses = np.asarray(res.history["train_batch_loss"])
        assert np.all(np.isfinite(losses))


# ----------------------------------------------------------------------------- sweep grid


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"grid": {"learning_rate": [np.array([0.1, 0.2])]}}, r"grid\['learning_rate'\]"),
        ({"grid": {"learning_rate": 0.1}}, r"grid\['learning_rate'\] must be a list"),
        ({"grid": {"learning_rate": ["abc"]}}, r"grid\['learning_rate'\]: learning_rate"),
        ({"grid": {"learning_rate": [None]}}, r"grid\['learning_rate'\]: learning_rate"),
        ({"grid": {"momentum": [float("nan")]}}, r"grid\['momentum'\]: momentum"),
        ({"seeds": True}, "seeds"),
        ({"seeds": 2.5}, "seeds"),
        ({"seeds": [1.5]}, r"seeds\[i\] must be an int"),
        ({"seeds": [-1]}, r"seeds\[i\] must be an int >= 0"),
        ({"seeds": [2**40]}, r"seeds\[i\] must be an int <= 4294967295"),
        ({"data_indices": (0.5,)}, r"data_indices\[i\] must be an int"),
    ],
)
def test_grid_members_refuses_hostile_values(kwargs, match):
    kwargs = {"seeds": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        sweep.grid_members(**kwargs)


@pytest.mark.parametrize(
    "member, match",
    [
        (sweep.Member(-1, 0, loop.Hyper()), r"members\[0\].seed must be an int >= 0"),
        (sweep.Member(2**33, 0, loop.Hyper()), r"members\[0\].seed must be an int <= "),
        (sweep.Member(0.5, 0, loop.Hyper()), r"members\[0\].seed must be an int"),
        (sweep.Member(0, True, loop.Hyper()), r"members\[0\].data_index must be an int"),
        ((0, 0, loop.Hyper()), r"members\[0\] must be a sweep.Member"),
    ],
)
def test_sweep_refuses_hostile_members(member, match):
    with pytest.raises(ValueError, match=match):
        _sweep(DATA, [member])
