"""Training engine: a jitted optax step, epoch loops, evaluation and early stopping.

One step on a mini-batch B (mask m marks real rows, padding is False) computes

    L(θ)  = Σ_i m_i ℓ(f_θ(x_i), y_i) / Σ_i m_i                  (data loss, masked mean)
    g     = ∇_θ L  +  λ₁ sign(W) + λ₂ W                         (penalties on kernels W only)
    θ     ← θ + optax_update(g; lr_t, momentum, weight decay)

where the penalty term is the gradient of λ₁ Σ|W| + (λ₂/2) Σ W² (the TensorFlow Playground's
and the weight-decay convention; for a λ Σ W² penalty without the ½ pass λ₂ = 2λ;
:mod:`mljax.nn.losses` documents both conventions). The
gradient ∇_θ L comes from a pluggable ``grad_fn(params, batch, rng, state, hparams) ->
(loss, grads, new_state)``: ``jax.grad`` of the task's loss ("autodiff") or the manual
backprop rules of :mod:`mljax.nn.backprop` ("manual"); both see the same dropout keys.

The optimiser is ``optax.inject_hyperparams`` over sgd / momentum / nesterov / adam with an
optional decoupled weight decay ``θ ← θ - lr_t · wd · W``, so learning rate, momentum and
weight decay are traced values that a sweep can vmap over. A schedule multiplies the traced
base rate: ``lr_t = lr · s(t)`` with ``s`` from optax (constant, cosine, exponential per epoch,
step, warmup-cosine).

Randomness: one root key is split into (init, data, dropout); epoch e shuffles with
``fold_in(data_key, e)`` and step t draws dropout masks from ``fold_in(dropout_key, t)``, so a
run is a pure function of its key and resuming at step t reproduces the rest bit for bit.

Divergence: a step whose loss or gradients are not finite, or whose loss explodes while
staying finite, ``L_t > divergence_factor · max(|L_0|, 1)`` with ``L_0`` the run's first step
loss (``TrainConfig.divergence_factor``, default 1e4; None: only non-finite values count), is
not applied; the run is frozen (parameters of the last accepted step), flagged ``diverged``
and stops. The test is per run (per sweep member: ``L_0`` is the member's own), so a
diverging member never changes another.

Two execution strategies with identical maths:

* ``"scan"``: the whole run is one compiled program (``lax.while_loop`` over epochs,
  ``lax.scan`` over batches), the fast path for matmul-only nets and for vmapped sweeps;
* ``"python"``: a Python loop over a jitted step (compiled once per task, config and data
  shapes, then reused; the batch is picked inside the jit so dispatch never waits). XLA on
  CPU runs convolutions inside ``scan``/``while_loop`` several times slower than the same
  step jitted alone (measured with jax 0.10.2 on our 2-core CPU, seed-004 CNN (d), batch
  200: 319 ms/step in ``scan`` vs 72 ms/step in the Python loop, same parameters to 6e-8;
  the MLP 784-256-256-10 ran 3.7 vs 3.8 ms/step), so ``"auto"`` picks ``"python"`` for
  models with convolutions and ``"scan"`` otherwise; ``TrainResult.strategy`` says which
  ran. Checkpointing also uses this loop.

Who owns compiled code: :func:`make_train` returns the pure ``train_fn(data, hp, key)`` of
the scan strategy and the caller applies ``jit`` / ``vmap`` itself (purejaxrl style; e.g.
``jax.jit(jax.vmap(make_train(task, cfg), in_axes=(None, 0, 0)))`` trains a batch of
hyperparameters and keys). :func:`train` keeps the programs it compiles in bounded LRU caches
keyed by the (hashable, frozen) task, config and data shapes: at most
:data:`COMPILED_CACHE_SIZE` entries each, so a long session that trains many models does not
keep every one alive, and a repeated call (a sequential sweep) reuses the compiled step.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from mljax.data.batches import epoch_batches, num_batches
from mljax.progress import progress
from mljax.validation import check_int, check_positive_int, check_scalar, is_concrete

__all__ = [
    "COMPILED_CACHE_SIZE",
    "GRAD_SOURCES",
    "HYPER_FIELDS",
    "HYPER_RANGES",
    "MODES",
    "OPTIMIZERS",
    "SCHEDULES",
    "STRATEGIES",
    "Data",
    "EarlyStop",
    "Hyper",
    "LoopState",
    "StepTiming",
    "Task",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "as_data",
    "autodiff_grad_fn",
    "check_hyper",
    "check_inputs",
    "check_monitor",
    "check_task_hyper",
    "data_spec",
    "default_decay_mask",
    "epoch_order",
    "evaluate",
    "fixed_order_sum",
    "get_grad_fn",
    "history_keys",
    "init_loop_state",
    "init_state",
    "lr_multiplier",
    "make_optimizer",
    "make_step",
    "make_train",
    "masked_mean_loss",
    "penalty_grads",
    "pick_strategy",
    "split_keys",
    "time_steps",
    "train",
    "train_python",
]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
SCHEDULES = ("constant", "cosine", "exponential", "step", "warmup_cosine")
GRAD_SOURCES = ("autodiff", "manual")
STRATEGIES = ("auto", "scan", "python")
MODES = ("min", "max")
COMPILED_CACHE_SIZE = 16  # compiled programs kept per cache (least recently used dropped)


# ----------------------------------------------------------------------------- data types


class Data(NamedTuple):
    """Arrays of one dataset, kept on device.

    Attributes:
        x_train: ``[n, ...]`` inputs; y_train: ``[n, ...]`` targets.
        x_val, y_val: optional validation set evaluated after every epoch (``val_*`` history;
            early stopping watches it).
        x_test, y_test: optional held-out set also evaluated after every epoch (``test_*``
            history), for test curves beside the validation curves; it never changes training.
    """

    x_train: Any
    y_train: Any
    x_val: Any = None
    y_val: Any = None
    x_test: Any = None
    y_test: Any = None


class Hyper(NamedTuple):
    """Numeric hyperparameters: traced scalars, so a sweep vmaps over them.

    Attributes:
        learning_rate: base rate (> 0), multiplied by the schedule.
        momentum: momentum / Nesterov coefficient, Adam's β₁; ignored by plain "sgd".
        weight_decay: decoupled decay θ ← θ - lr_t·wd·W on kernels.
        l1: λ₁ of the λ₁ Σ|W| penalty (gradient λ₁ sign W), kernels only.
        l2: λ₂ of the (λ₂/2) Σ W² penalty (gradient λ₂ W), kernels only; the seed
            reports' λ Σ W² (no ½, gradient 2λW) is ``l2 = 2λ`` (both conventions are
            written out in :mod:`mljax.nn.losses`).
        dropout_rate: in [0, 1); used by tasks with ``uses_dropout_rate`` (e.g.
            ``tasks.layer_task(..., dropout_from_hyper=True)``) as every Dropout layer's
            rate; a nonzero value on any other task is refused (:func:`check_task_hyper`).
    """

    learning_rate: Any = 0.01
    momentum: Any = 0.9
    weight_decay: Any = 0.0
    l1: Any = 0.0
    l2: Any = 0.0
    dropout_rate: Any = 0.0

    def as_arrays(self, dtype=jnp.float32) -> Hyper:
        """Every field as a ``dtype`` array (traced values in the compiled programs)."""
        return Hyper(*(jnp.asarray(v, dtype) for v in self))


HYPER_FIELDS = Hyper._fields


# Allowed range of each Hyper field (keyword arguments of validation.check_scalar).
HYPER_RANGES = {
    "learning_rate": {"minimum": 0.0, "strict_minimum": True},
    "momentum": {"minimum": 0.0, "maximum": 1.0, "strict_maximum": True},
    "weight_decay": {"minimum": 0.0},
    "l1": {"minimum": 0.0},
    "l2": {"minimum": 0.0},
    "dropout_rate": {"minimum": 0.0, "maximum": 1.0, "strict_maximum": True},
}


def check_hyper(hp: Hyper) -> None:
    """Raises ``ValueError`` for a concrete field outside :data:`HYPER_RANGES` or not finite
    (traced values pass: see :func:`mljax.validation.check_scalar`)."""
    for name, bounds in HYPER_RANGES.items():
        check_scalar(getattr(hp, name), name, **bounds)


@dataclasses.dataclass(frozen=True)
class Task:
    """What to train: a model, its loss and its metrics (all pure functions).

    Attributes:
        init: ``key -> (params, state)``; ``state`` holds e.g. batch-norm statistics
            (``{}`` if none).
        apply: ``(params, state, x, *, train, rng, hparams) -> (outputs, new_state)``.
        per_example_loss: ``(outputs [n, ...], y [n, ...]) -> [n]``.
        metrics: ``(outputs, y) -> {name: [n]}`` per-example metrics (e.g. ``correct``),
            averaged over the evaluation set; may be None.
        manual_grad: optional ``(params, batch, rng, state, hparams) -> (loss, grads,
            new_state)`` with hand-derived gradients of the masked-mean loss (batches
            are full: padding is refused for this source).
        has_conv: whether the model convolves (decides the "auto" strategy).
        decay_mask: ``params -> bool tree``, which leaves the penalties and weight decay
            touch (default: leaves named ``kernel``).
        uses_dropout_rate: whether ``apply`` / ``manual_grad`` read ``hparams.dropout_rate``
            (a traced rate a sweep can vmap over); if False a nonzero rate is refused.
        input_shape: one example's shape with a batch axis (e.g. ``(1, 784)``) the model is
            built for, or None; named in the error when :func:`check_inputs` finds that
            ``apply`` cannot take ``x_train`` / ``x_val`` (tried on shapes only, before
            training).
        integer_labels: the loss takes integer class labels (softmax cross-entropy):
            :func:`check_inputs` requires ``y_train`` / ``y_val`` of an integer dtype with
            values in ``[0, n_classes)``, ``n_classes`` the model output's last axis.
    """

    init: Callable
    apply: Callable
    per_example_loss: Callable
    metrics: Callable | None = None
    manual_grad: Callable | None = None
    has_conv: bool = False
    decay_mask: Callable | None = None
    uses_dropout_rate: bool = False
    input_shape: tuple | None = None
    integer_labels: bool = False


def check_task_hyper(task: Task, hp: Hyper) -> None:
    """Raises ``ValueError`` for a concrete nonzero ``dropout_rate`` on a task that ignores it
    (it would be silently dropped; traced values pass)."""
    value = hp.dropout_rate
    if task.uses_dropout_rate or not is_concrete(value):
        return
    if np.any(np.asarray(value, dtype=np.float64) != 0):
        raise ValueError(
            f"dropout_rate={value!r} but this task ignores Hyper.dropout_rate (its Dropout "
            "layers use their static rates); build it with "
            "tasks.layer_task(..., dropout_from_hyper=True) to sweep dropout rates"
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static settings of a run (sizes and choices; anything numeric to sweep is in Hyper).

    Attributes:
        epochs: maximum number of epochs.
        batch_size: examples per step.
        optimizer: one of OPTIMIZERS.
        schedule: one of SCHEDULES (a multiplier of the base learning rate).
        decay_rate: exponential: factor per epoch; step: factor every ``step_epochs``.
        step_epochs: epochs between step-schedule drops.
        warmup_epochs: warmup_cosine's linear warmup.
        final_lr_fraction: cosine / warmup_cosine end value as a fraction of the base rate.
        drop_remainder: drop the last partial batch of each epoch instead of padding it.
        grad_source: "autodiff" (jax.grad) or "manual" (the task's manual_grad).
        eval_train: also evaluate the whole training set (eval mode) after each epoch.
        eval_batch_size: chunk size of evaluation passes.
        monitor: history key early stopping and best-parameter tracking watch.
        mode: "min" or "max" for the monitored value.
        patience: stop after this many epochs without improvement (None: never stop early).
        min_delta: an improvement must exceed this.
        strategy: "scan", "python" or "auto" (python for convolutional models).
        stop_on_divergence: freeze and stop a run whose loss diverges (NaN/inf, or above
            ``divergence_factor`` times its initial loss).
        divergence_factor: a finite step loss ``L_t > divergence_factor · max(|L_0|, 1)``
            (``L_0``: the run's first step loss) also counts as divergence (a loss that
            explodes while staying finite, e.g. 1e5 ... 1e29 for a far too large learning
            rate); a number > 1, or None to flag only NaN/inf.
    """

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    schedule: str = "constant"
    decay_rate: float = 0.96
    step_epochs: int = 10
    warmup_epochs: int = 1
    final_lr_fraction: float = 0.0
    drop_remainder: bool = False
    grad_source: str = "autodiff"
    eval_train: bool = True
    eval_batch_size: int = 2048
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int | None = None
    min_delta: float = 0.0
    strategy: str = "auto"
    stop_on_divergence: bool = True
    divergence_factor: float | None = 1e4

    def __post_init__(self):
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("grad_source", GRAD_SOURCES),
            ("strategy", STRATEGIES),
            ("mode", MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "step_epochs"):
            check_positive_int(getattr(self, name), name)
        if self.patience is not None:
            check_positive_int(self.patience, "patience")
        check_int(self.warmup_epochs, "warmup_epochs", minimum=0)
        check_scalar(self.decay_rate, "decay_rate", minimum=0.0, maximum=1.0, strict_minimum=True)
        check_scalar(self.final_lr_fraction, "final_lr_fraction", minimum=0.0, maximum=1.0)
        check_scalar(self.min_delta, "min_delta", minimum=0.0)
        check_scalar(
            self.divergence_factor,
            "divergence_factor",
            minimum=1.0,
            strict_minimum=True,
            allow_none=True,
        )


class TrainState(NamedTuple):
    """Everything a step changes (the carry of the loops, and what a checkpoint holds)."""

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array  # int32 scalar, global step count
    diverged: jax.Array  # bool scalar
    diverged_step: jax.Array  # int32, -1 if never
    initial_loss: jax.Array  # float32: loss of the first step (NaN before it)


class EarlyStop(NamedTuple):
    """Best-so-far tracking for early stopping."""

    best_params: Any
    best_state: Any
    best_value: jax.Array
    best_epoch: jax.Array  # int32, -1 before the first evaluation
    bad_epochs: jax.Array  # int32


class TrainResult(NamedTuple):
    """Outcome of one run.

    Attributes:
        params, model_state: final parameters and model state.
        best_params, best_state: those at ``best_epoch`` (by ``monitor``).
        best_epoch: 0-based epoch of the best monitored value (-1 if never finite).
        best_value: the best monitored value.
        epochs_run: epochs actually trained (early stopping / divergence stop sooner).
        history: ``{name: [epochs]}``, NaN after the run stopped. Keys: ``train_batch_loss``
            (mean of the epoch's step losses), ``train_loss``/``train_<metric>`` (eval mode,
            when ``eval_train``), ``val_loss``/``val_<metric>``, ``test_loss``/``test_<metric>`` (when the data has a
            test set), ``lr`` (rate at epoch end).
        diverged: whether a non-finite or exploding loss (``TrainConfig.divergence_factor``)
            froze the run; diverged_step: its step or -1.
        strategy: "scan" or "python".
    """

    params: Any
    model_state: Any
    best_params: Any
    best_state: Any
    best_epoch: Any
    best_value: Any
    epochs_run: Any
    history: dict
    diverged: Any
    diverged_step: Any
    strategy: str | None = None


# ----------------------------------------------------------------------------- optimiser


def default_decay_mask(params) -> Any:
    """True for leaves named ``kernel`` (weights and conv kernels; biases, scales untouched)."""

    def is_kernel(path, _):
        last = path[-1] if path else None
        return getattr(last, "key", getattr(last, "name", None)) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(name: str, decay_mask: Callable | None = None) -> optax.GradientTransformation:
    """The optimiser with traced hyperparameters ``learning_rate``, ``momentum``, ``weight_decay``.

    Args:
        name: one of :data:`OPTIMIZERS`.
        decay_mask: ``params -> bool tree`` for the decoupled weight decay.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    mask = decay_mask or default_decay_mask

    def factory(learning_rate, momentum, weight_decay):
        if name == "sgd":
            core = optax.sgd(learning_rate)
        elif name == "momentum":
            core = optax.sgd(learning_rate, momentum=momentum)
        elif name == "nesterov":
            core = optax.sgd(learning_rate, momentum=momentum, nesterov=True)
        else:
            core = optax.adam(learning_rate, b1=momentum)
        # Decoupled decay after the optimiser's scaling: θ ← θ - lr·wd·W.
        return optax.chain(core, optax.add_decayed_weights(-learning_rate * weight_decay, mask))

    return optax.inject_hyperparams(factory)(learning_rate=0.0, momentum=0.0, weight_decay=0.0)


def lr_multiplier(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[jax.Array], jax.Array]:
    """``step -> s(step)``, the schedule as a multiplier of the base rate (optax schedules)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "constant":
        return optax.constant_schedule(1.0)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(1.0, total, alpha=cfg.final_lr_fraction)
    if cfg.schedule == "exponential":
        return optax.exponential_decay(1.0, steps_per_epoch, cfg.decay_rate)
    if cfg.schedule == "step":
        return optax.exponential_decay(
            1.0, cfg.step_epochs * steps_per_epoch, cfg.decay_rate, staircase=True
        )
    warmup = cfg.warmup_epochs * steps_per_epoch
    return optax.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup, max(total, warmup + 1), end_value=cfg.final_lr_fraction
    )


def penalty_grads(grads, params, l1, l2, mask_fn: Callable | None = None):
    """``grads + λ₁ sign(W) + λ₂ W`` on the masked leaves (kernels by default)."""
    mask = (mask_fn or default_decay_mask)(params)
    return jax.tree_util.tree_map(
        lambda g, p, m: g + l1 * jnp.sign(p) + l2 * p if m else g, grads, params, mask
    )


# ----------------------------------------------------------------------------- step


def masked_mean_loss(task: Task, outputs, y, mask):
    per = task.per_example_loss(outputs, y)
    w = mask.astype(per.dtype)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


def autodiff_grad_fn(task: Task) -> Callable:
    """``grad_fn`` by ``jax.value_and_grad`` of the task's masked-mean loss."""

    def grad_fn(params, batch, rng, state, hparams):
        x, y, mask = batch

        def loss_fn(p):
            out, new_state = task.apply(p, state, x, train=True, rng=rng, hparams=hparams)
            return masked_mean_loss(task, out, y, mask), new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, new_state

    return grad_fn


def get_grad_fn(task: Task, source: str) -> Callable:
    if source not in GRAD_SOURCES:
        raise ValueError(f"grad_source must be one of {GRAD_SOURCES}, got {source!r}")
    if source == "autodiff":
        return autodiff_grad_fn(task)
    if task.manual_grad is None:
        raise ValueError(
            "grad_source='manual' needs a task with manual_grad (see mljax.train.tasks)"
        )
    return task.manual_grad


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    ok = jnp.array(True)
    for leaf in leaves:
        ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def _select(pred, a, b):
    return jax.tree.map(lambda u, v: jnp.where(pred, u, v), a, b)


def make_step(task: Task, cfg: TrainConfig, steps_per_epoch: int):
    """Returns ``(tx, step)``; ``step(ts, batch, hp, dropout_key) -> (ts, loss)`` is pure.

    ``batch`` is ``(x [b, ...], y [b, ...], mask [b])``. A frozen (diverged) state is
    returned unchanged.
    """
    tx = make_optimizer(cfg.optimizer, task.decay_mask)
    grad_fn = get_grad_fn(task, cfg.grad_source)
    schedule = lr_multiplier(cfg, steps_per_epoch)

    def step(ts: TrainState, batch, hp: Hyper, dropout_key):
        rng = jax.random.fold_in(dropout_key, ts.step)
        loss, grads, new_model_state = grad_fn(ts.params, batch, rng, ts.model_state, hp)
        grads = penalty_grads(grads, ts.params, hp.l1, hp.l2, task.decay_mask)
        lr_t = hp.learning_rate * schedule(ts.step)
        hyper = dict(ts.opt_state.hyperparams)
        hyper["learning_rate"] = jnp.asarray(lr_t, hyper["learning_rate"].dtype)
        hyper["momentum"] = jnp.asarray(hp.momentum, hyper["momentum"].dtype)
        hyper["weight_decay"] = jnp.asarray(hp.weight_decay, hyper["weight_decay"].dtype)
        opt_state = ts.opt_state._replace(hyperparams=hyper)
        updates, new_opt_state = tx.update(grads, opt_state, ts.params)
        new_params = optax.apply_updates(ts.params, updates)
        loss0 = jnp.where(ts.step == 0, loss, ts.initial_loss)
        ok = jnp.isfinite(loss) & _all_finite(grads) & ~ts.diverged
        if cfg.divergence_factor is not None:
            limit = cfg.divergence_factor * jnp.maximum(jnp.abs(loss0), 1.0)
            ok = ok & ~(loss > limit)
        if not cfg.stop_on_divergence:
            ok = jnp.ones((), bool)
        newly = ~ok & ~ts.diverged
        new = TrainState(
            params=_select(ok, new_params, ts.params),
            model_state=_select(ok, new_model_state, ts.model_state),
            opt_state=_select(ok, new_opt_state, ts.opt_state),
            step=ts.step + ok.astype(jnp.int32),
            diverged=ts.diverged | ~ok,
            diverged_step=jnp.where(newly, ts.step, ts.diverged_step),
            initial_loss=jnp.asarray(loss0, jnp.float32),
        )
        return new, loss

    return tx, step


def epoch_order(cfg: TrainConfig, data_key, epoch, n: int):
    """The mini-batches of ``epoch`` (row indices and padding mask, :func:`epoch_batches`) for
    a run whose data key is ``data_key`` (the second of :func:`split_keys`): the one place
    the training loops and anyone replaying a run's batches draw them."""
    return epoch_batches(
        jax.random.fold_in(data_key, epoch), n, cfg.batch_size, drop_remainder=cfg.drop_remainder
    )


def init_state(task: Task, tx, key, hp: Hyper) -> TrainState:
    """Initial TrainState for the init key (no data needed)."""
    params, model_state = task.init(key)
    opt_state = tx.init(params)
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(hp.learning_rate, jnp.float32)
    hyper["momentum"] = jnp.asarray(hp.momentum, jnp.float32)
    hyper["weight_decay"] = jnp.asarray(hp.weight_decay, jnp.float32)
    opt_state = opt_state._replace(hyperparams=hyper)
    return TrainState(
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        step=jnp.zeros((), jnp.int32),
        diverged=jnp.zeros((), bool),
        diverged_step=jnp.full((), -1, jnp.int32),
        initial_loss=jnp.full((), jnp.nan, jnp.float32),
    )


def split_keys(key):
    """(init, data, dropout) keys of a run."""
    k_init, k_data, k_drop = jax.random.split(key, 3)
    return k_init, k_data, k_drop


# ----------------------------------------------------------------------------- evaluation


def fixed_order_sum(v: jax.Array) -> jax.Array:
    """Sum of a 1-D array, added in an order fixed by its length alone (pairwise halves).

    ``jnp.sum`` leaves the order to XLA, whose CPU code for a reduction depends on the batch
    it sits in: the same member of a vmapped sweep of 40 and of 20 (a sweep split over two
    devices or processes) can differ in the last bit. Element-wise adds of halves are exact
    per element whatever the batch, so :func:`evaluate` gives the same bits however the
    members are laid out. Costs ``ceil(log2 n)`` element-wise adds.

    What this does not fix: when all members share one dataset, XLA may fuse their products
    with it into one wider matmul, whose accumulation order can depend on the member count;
    members with data of their own (a sweep over several datasets) are unaffected.
    """
    if v.ndim != 1:
        raise ValueError(f"fixed_order_sum sums a 1-D array; got shape {v.shape}")
    if v.shape[0] == 0:
        return jnp.zeros((), v.dtype)
    while v.shape[0] > 1:
        half = v.shape[0] // 2
        head = v[:half] + v[half : 2 * half]
        v = jnp.concatenate([head, v[2 * half :]]) if v.shape[0] % 2 else head
    return v[0]


def _chunk_metrics(task: Task, params, state, x, y, mask, hp):
    out, _ = task.apply(params, state, x, train=False, rng=None, hparams=hp)
    w = mask.astype(jnp.float32)
    sums = {"loss": fixed_order_sum(task.per_example_loss(out, y) * w)}
    if task.metrics is not None:
        for k, v in task.metrics(out, y).items():
            sums[k] = fixed_order_sum(v.astype(jnp.float32) * w)
    return sums


def _pad_chunks(x, y, chunk: int):
    n = x.shape[0]
    size = min(chunk, n)
    nb = -(-n // size)
    pad = nb * size - n

    def padded(a):
        if pad:
            a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
        return a.reshape(nb, size, *a.shape[1:])

    mask = (jnp.arange(nb * size) < n).reshape(nb, size)
    return padded(x), padded(y), mask


def evaluate(task: Task, params, state, x, y, hp: Hyper, *, batch_size: int = 2048) -> dict:
    """Mean loss and metrics over ``x [n, ...]``, ``y`` in eval mode (pure, jit/vmap-able).

    Chunks of ``batch_size`` go through ``lax.map`` (one chunk: no loop).
    """
    n = x.shape[0]
    if n <= batch_size:
        sums = _chunk_metrics(task, params, state, x, y, jnp.ones((n,), bool), hp)
    else:
        xs, ys, ms = _pad_chunks(x, y, batch_size)
        per = lax.map(
            lambda c: _chunk_metrics(task, params, state, c[0], c[1], c[2], hp), (xs, ys, ms)
        )
        sums = {k: fixed_order_sum(v) for k, v in per.items()}
    return {k: v / n for k, v in sums.items()}


def _eval_sets(cfg: TrainConfig, data: Data) -> list[tuple[str, Any, Any]]:
    """The ``(prefix, x, y)`` sets evaluated after every epoch: train (when ``eval_train``),
    then the validation and test sets the data has."""
    sets = [("train", data.x_train, data.y_train)] if cfg.eval_train else []
    for prefix in ("val", "test"):
        x = getattr(data, f"x_{prefix}")
        if x is not None:
            sets.append((prefix, x, getattr(data, f"y_{prefix}")))
    return sets


def _eval_all(task, cfg, params, state, data: Data, hp) -> dict:
    out = {}
    for prefix, x, y in _eval_sets(cfg, data):
        for k, v in evaluate(task, params, state, x, y, hp, batch_size=cfg.eval_batch_size).items():
            out[f"{prefix}_{k}"] = v
    return out


def history_keys(task: Task, cfg: TrainConfig, data: Data) -> tuple[str, ...]:
    """Names of the per-epoch history arrays a run produces (``data`` may be a
    :func:`data_spec`: only shapes and dtypes are read)."""
    probe = ["loss"]
    if task.metrics is not None:
        # Shapes only (eval_shape): no eager op, nothing compiled.
        x = jax.ShapeDtypeStruct((1, *data.x_train.shape[1:]), data.x_train.dtype)
        y = jax.ShapeDtypeStruct((1, *data.y_train.shape[1:]), data.y_train.dtype)

        def names(x, y):
            p, s = task.init(jax.random.key(0))
            out, _ = task.apply(p, s, x, train=False, rng=None, hparams=Hyper().as_arrays())
            return task.metrics(out, y)

        probe += list(jax.eval_shape(names, x, y).keys())
    keys = ["train_batch_loss", "lr"]
    for prefix, _x, _y in _eval_sets(cfg, data):
        keys += [f"{prefix}_{k}" for k in probe]
    return tuple(keys)


# ----------------------------------------------------------------------------- checks


def as_data(data: Data | tuple | Mapping) -> Data:
    """Data as device arrays (``Data``, a tuple in its field order, or a mapping)."""
    if isinstance(data, Mapping):
        data = Data(**data)
    elif not isinstance(data, Data):
        data = Data(*data)
    return Data(*(None if a is None else jnp.asarray(a) for a in data))


def data_spec(data: Data) -> Data:
    """``data`` with every array replaced by its ``jax.ShapeDtypeStruct`` (hashable: the part
    of a dataset compiled code depends on)."""
    return Data(*(None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype) for a in data))


def check_inputs(task: Task, cfg: TrainConfig, data: Data, hp: Hyper | None = None) -> int:
    """Validates data (and ``hp``) against the config before tracing; returns steps per epoch.

    Raises:
        ValueError: row counts that differ, half a validation set, inputs whose example
            shape is not the task's ``input_shape``, labels of a non-integer dtype or outside
            ``[0, n_classes)`` for a task with ``integer_labels``, a batch larger than the
            training set, partial batches or no ``manual_grad`` for ``grad_source="manual"``,
            hyperparameters out of range (:func:`check_hyper`, :func:`check_task_hyper`).
    """
    n = int(np.shape(data.x_train)[0])
    if np.shape(data.y_train)[0] != n:
        raise ValueError(f"x_train has {n} rows but y_train has {np.shape(data.y_train)[0]}")
    for prefix in ("val", "test"):
        x, y = getattr(data, f"x_{prefix}"), getattr(data, f"y_{prefix}")
        if (x is None) != (y is None):
            raise ValueError(f"give both x_{prefix} and y_{prefix}, or neither")
        if x is not None and np.shape(x)[0] != np.shape(y)[0]:
            raise ValueError(f"x_{prefix} and y_{prefix} have different numbers of rows")
    if cfg.batch_size > n:
        raise ValueError(
            f"batch_size {cfg.batch_size} is larger than the training set ({n} examples)"
        )
    if cfg.grad_source == "manual" and not cfg.drop_remainder and n % cfg.batch_size:
        raise ValueError(
            f"grad_source='manual' needs full batches: {n} examples do not divide into batches "
            f"of {cfg.batch_size}; set drop_remainder=True"
        )
    if cfg.grad_source == "manual" and task.manual_grad is None:
        raise ValueError("grad_source='manual' needs a task with manual_grad")
    _check_labels(task, data, _check_features(task, data))
    if hp is not None:
        check_hyper(hp)
        check_task_hyper(task, hp)
    return num_batches(n, cfg.batch_size, drop_remainder=cfg.drop_remainder)


def _output_shape(task: Task, x, name: str) -> tuple:
    """Shape of the model's output for one example of ``x`` (``jax.eval_shape``: traced,
    nothing computed or compiled). Inputs the model cannot take raise a ``ValueError`` that
    names ``name``, its shape and the task's ``input_shape``."""
    given = tuple(np.shape(x))
    if task.input_shape is not None:
        expected = ", ".join(str(s) for s in task.input_shape[1:])
        want = f"inputs of shape (n, {expected}) (task input_shape {tuple(task.input_shape)})"
    else:
        want = "inputs of another shape"
    if len(given) < 1:
        raise ValueError(f"{name} has shape {given}, but the model expects {want}")
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    spec = jax.ShapeDtypeStruct((1, *given[1:]), dtype)

    def out(x):
        p, s = task.init(jax.random.key(0))
        return task.apply(p, s, x, train=False, rng=None, hparams=Hyper().as_arrays())[0]

    try:
        return tuple(jax.eval_shape(out, spec).shape)
    except Exception as err:  # flax ScopeParamShapeError, dot_general shape errors, ...
        raise ValueError(
            f"{name} has shape {given}, but the model expects {want}; "
            f"given example shape {given[1:]} ({type(err).__name__}: {str(err)[:200]})"
        ) from err


def _check_features(task: Task, data: Data) -> dict:
    """``x_train`` / ``x_val`` must be inputs the task's model accepts (checked by tracing
    its ``apply`` on one example's shape, so a task whose ``apply`` was replaced is judged
    by the new one); returns ``{name: output shape}``."""
    return {
        name: _output_shape(task, getattr(data, name), name)
        for name in ("x_train", "x_val", "x_test")
        if getattr(data, name) is not None
    }


def _check_labels(task: Task, data: Data, out_shapes: dict) -> None:
    """Integer labels in ``[0, n_classes)`` for tasks with ``integer_labels``: dtype and shape
    always, values when concrete (traced labels pass)."""
    if not task.integer_labels:
        return
    for name, x_name in (("y_train", "x_train"), ("y_val", "x_val"), ("y_test", "x_test")):
        y = getattr(data, name)
        if y is None:
            continue
        out = out_shapes[x_name]
        n_classes, label_shape = int(out[-1]), tuple(out[1:-1])
        shape = "(n,)" if not label_shape else f"(n, {', '.join(map(str, label_shape))})"
        allowed = f"integer class labels in [0, {n_classes}) of shape {shape}"
        dtype = np.dtype(y.dtype) if hasattr(y, "dtype") else np.asarray(y).dtype
        if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
            raise ValueError(f"{name} must hold {allowed}; got dtype {dtype}")
        if tuple(np.shape(y)[1:]) != label_shape:
            raise ValueError(f"{name} must hold {allowed}; got shape {tuple(np.shape(y))}")
        if not is_concrete(y) or np.size(y) == 0:
            continue
        arr = np.asarray(y)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"{name} must hold {allowed}; got values in [{lo}, {hi}]")


def check_monitor(task: Task, cfg: TrainConfig, data: Data) -> tuple[str, ...]:
    """Raises ``ValueError`` unless ``cfg.monitor`` is a history key; returns the keys."""
    keys = history_keys(task, cfg, data)
    if cfg.monitor not in keys:
        raise ValueError(f"monitor must be one of {keys}, got {cfg.monitor!r}")
    return keys


def pick_strategy(task: Task, cfg: TrainConfig) -> str:
    """ "python" for convolutional models under "auto" (see the module docstring), else "scan"."""
    if cfg.strategy != "auto":
        return cfg.strategy
    return "python" if task.has_conv else "scan"


# ----------------------------------------------------------------------------- one epoch


def _improved(cfg: TrainConfig, value, best):
    better = value < best - cfg.min_delta if cfg.mode == "min" else value > best + cfg.min_delta
    return jnp.isfinite(value) & (better | ~jnp.isfinite(best))


def _early_update(cfg, es: EarlyStop, ts: TrainState, value, epoch):
    better = _improved(cfg, value, es.best_value)
    return EarlyStop(
        best_params=_select(better, ts.params, es.best_params),
        best_state=_select(better, ts.model_state, es.best_state),
        best_value=jnp.where(better, value, es.best_value),
        best_epoch=jnp.where(better, epoch, es.best_epoch),
        bad_epochs=jnp.where(better, 0, es.bad_epochs + 1),
    )


def _should_stop(cfg, es: EarlyStop, ts: TrainState):
    stop = ts.diverged if cfg.stop_on_divergence else jnp.zeros((), bool)
    if cfg.patience is not None:
        stop = stop | (es.bad_epochs >= cfg.patience)
    return stop


def _init_early(cfg, ts: TrainState) -> EarlyStop:
    worst = jnp.inf if cfg.mode == "min" else -jnp.inf
    return EarlyStop(
        ts.params,
        ts.model_state,
        jnp.asarray(worst, jnp.float32),
        jnp.full((), -1, jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def _record_epoch(cfg, ts: TrainState, es: EarlyStop, hist: dict, epoch, record: dict):
    """Writes ``record`` into row ``epoch`` of the history; early-stopping update; stop flag."""
    hist = {k: hist[k].at[epoch].set(jnp.asarray(record[k], jnp.float32)) for k in hist}
    es = _early_update(cfg, es, ts, hist[cfg.monitor][epoch], epoch)
    return hist, es, _should_stop(cfg, es, ts)


def _result(ts: TrainState, es: EarlyStop, epochs_run, history, strategy) -> TrainResult:
    return TrainResult(
        params=ts.params,
        model_state=ts.model_state,
        best_params=es.best_params,
        best_state=es.best_state,
        best_epoch=es.best_epoch,
        best_value=es.best_value,
        epochs_run=epochs_run,
        history=history,
        diverged=ts.diverged,
        diverged_step=ts.diverged_step,
        strategy=strategy,
    )


def make_train(task: Task, cfg: TrainConfig) -> Callable[[Data, Hyper, jax.Array], TrainResult]:
    """The whole run as one pure function ``train_fn(data, hp, key) -> TrainResult``.

    Nothing is compiled or cached here: jit it, and vmap it over ``hp`` / ``key`` (or over
    stacked same-shape datasets) for sweeps, e.g.
    ``jax.jit(jax.vmap(make_train(task, cfg), in_axes=(None, 0, 0)))``. The program is a
    ``lax.while_loop`` over epochs (it stops early on patience or divergence) around a
    ``lax.scan`` over the epoch's batches. ``TrainResult.strategy`` is None (a string is no
    array; :func:`train` sets it).

    Static: ``task``, ``cfg`` and the data shapes. Call :func:`check_inputs` and
    :func:`check_monitor` on concrete inputs first (``train`` and ``sweep`` do).
    """

    def train_fn(data: Data, hp: Hyper, key) -> TrainResult:
        n = data.x_train.shape[0]
        spe = num_batches(n, cfg.batch_size, drop_remainder=cfg.drop_remainder)
        tx, step = make_step(task, cfg, spe)
        schedule = lr_multiplier(cfg, spe)
        k_init, k_data, k_drop = split_keys(key)
        ts0 = init_state(task, tx, k_init, hp)
        keys = history_keys(task, cfg, data)
        hist0 = {k: jnp.full((cfg.epochs,), jnp.nan, jnp.float32) for k in keys}

        def epoch_body(carry):
            ts, es, hist, epoch, _ = carry
            batches = epoch_order(cfg, k_data, epoch, n)

            def batch_body(ts, b):
                idx, mask = b
                return step(ts, (data.x_train[idx], data.y_train[idx], mask), hp, k_drop)

            ts, losses = lax.scan(batch_body, ts, (batches.indices, batches.mask))
            record = _eval_all(task, cfg, ts.params, ts.model_state, data, hp)
            record["train_batch_loss"] = fixed_order_sum(losses) / losses.shape[0]
            record["lr"] = hp.learning_rate * schedule(ts.step)
            hist, es, stop = _record_epoch(cfg, ts, es, hist, epoch, record)
            return ts, es, hist, epoch + 1, stop

        def cond(carry):
            *_, epoch, stop = carry
            return (epoch < cfg.epochs) & ~stop

        carry = (ts0, _init_early(cfg, ts0), hist0, jnp.zeros((), jnp.int32), jnp.zeros((), bool))
        ts, es, hist, epochs_run, _ = lax.while_loop(cond, epoch_body, carry)
        return _result(ts, es, epochs_run, hist, None)

    return train_fn


@functools.lru_cache(maxsize=COMPILED_CACHE_SIZE)
def _compiled_train(task: Task, cfg: TrainConfig):
    """``jit(make_train(task, cfg))``, kept for the last few (task, cfg) pairs."""
    return jax.jit(make_train(task, cfg))


# ----------------------------------------------------------------------------- Python loop


class LoopState(NamedTuple):
    """State of the Python loop between steps (what a checkpoint stores)."""

    train: TrainState
    early: EarlyStop
    history: dict  # {name: [epochs] float32}
    epoch: jax.Array  # int32: current epoch
    batch: jax.Array  # int32: next batch index within the epoch
    loss_sum: jax.Array  # float32: sum of this epoch's step losses so far
    stopped: jax.Array  # bool


class _PythonLoop(NamedTuple):
    """The Python loop's jitted pieces for one (task, config, data spec)."""

    steps_per_epoch: int
    init: Callable  # (hp, key) -> LoopState
    batches: Callable  # (key, epoch) -> Batches of that epoch
    step: Callable  # (ls, x, y, batches, hp, key) -> LoopState
    chunk_metrics: Callable  # (params, state, x, y, mask, hp) -> {name: sum}
    end_epoch: Callable  # (ls, record, hp) -> LoopState


@functools.lru_cache(maxsize=COMPILED_CACHE_SIZE)
def _python_loop(task: Task, cfg: TrainConfig, spec: Data) -> _PythonLoop:
    """Jits the Python loop's pieces once per (task, config, data spec), kept in an LRU cache:
    a sequential sweep's members after the first reuse the compiled step."""
    n = int(spec.x_train.shape[0])
    keys = history_keys(task, cfg, spec)
    spe = num_batches(n, cfg.batch_size, drop_remainder=cfg.drop_remainder)
    tx, step = make_step(task, cfg, spe)
    schedule = lr_multiplier(cfg, spe)

    def init_fn(hp, key):
        k_init, _, _ = split_keys(key)
        ts = init_state(task, tx, k_init, hp)
        hist = {k: jnp.full((cfg.epochs,), jnp.nan, jnp.float32) for k in keys}
        z = jnp.zeros((), jnp.int32)
        return LoopState(
            ts, _init_early(cfg, ts), hist, z, z, jnp.zeros((), jnp.float32), jnp.zeros((), bool)
        )

    def batches_fn(key, epoch):
        _, k_data, _ = split_keys(key)
        return epoch_order(cfg, k_data, epoch, n)

    def step_fn(ls: LoopState, x, y, batches, hp, key):
        # The batch is picked inside the jit by the carried counter ls.batch: slicing the
        # epoch's index array eagerly on the host would wait for the previous step each time
        # and serialise Python dispatch with the computation.
        _, _, k_drop = split_keys(key)
        idx = lax.dynamic_index_in_dim(batches.indices, ls.batch, keepdims=False)
        mask = lax.dynamic_index_in_dim(batches.mask, ls.batch, keepdims=False)
        ts, loss = step(ls.train, (x[idx], y[idx], mask), hp, k_drop)
        return ls._replace(train=ts, batch=ls.batch + 1, loss_sum=ls.loss_sum + loss)

    def chunk_fn(params, state, x, y, mask, hp):
        return _chunk_metrics(task, params, state, x, y, mask, hp)

    def end_epoch_fn(ls: LoopState, record, hp):
        ts = ls.train
        record = dict(record)
        record["train_batch_loss"] = ls.loss_sum / jnp.maximum(ls.batch, 1).astype(jnp.float32)
        record["lr"] = hp.learning_rate * schedule(ts.step)
        hist, es, stop = _record_epoch(cfg, ts, ls.early, ls.history, ls.epoch, record)
        z = jnp.zeros((), jnp.int32)
        return LoopState(ts, es, hist, ls.epoch + 1, z, jnp.zeros((), jnp.float32), stop)

    fns = (init_fn, batches_fn, step_fn, chunk_fn, end_epoch_fn)
    return _PythonLoop(spe, *(jax.jit(f) for f in fns))


def _eval_set(pl: _PythonLoop, cfg: TrainConfig, params, state, x, y, hp) -> dict:
    """Mean loss / metrics over ``x``: chunks jitted one by one (convolutions inside
    ``lax.map`` hit XLA's slow loop path), the last one padded to the same shape."""
    nx = x.shape[0]
    size = min(cfg.eval_batch_size, nx)
    totals = None
    for start in range(0, nx, size):
        xb, yb = x[start : start + size], y[start : start + size]
        m = jnp.ones((xb.shape[0],), bool)
        if xb.shape[0] < size:  # pad to one shape: one compilation
            pad = size - xb.shape[0]
            xb = jnp.concatenate([xb, jnp.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = jnp.concatenate([yb, jnp.zeros((pad, *yb.shape[1:]), yb.dtype)])
            m = jnp.arange(size) < size - pad
        s = pl.chunk_metrics(params, state, xb, yb, m, hp)
        totals = s if totals is None else {k: totals[k] + s[k] for k in s}
    return {k: v / nx for k, v in totals.items()}


def _end_epoch(pl: _PythonLoop, cfg: TrainConfig, data: Data, ls: LoopState, hp) -> LoopState:
    record = {}
    ts = ls.train
    for prefix, x, y in _eval_sets(cfg, data):
        for k, v in _eval_set(pl, cfg, ts.params, ts.model_state, x, y, hp).items():
            record[f"{prefix}_{k}"] = v
    return pl.end_epoch(ls, record, hp)


def init_loop_state(task: Task, cfg: TrainConfig, data: Data, hp: Hyper, key) -> LoopState:
    """The Python loop's state before the first step (a checkpoint's template).

    Args:
        data: the run's data (only shapes and dtypes are read).
        hp: hyperparameters; key: the run's root key.
    """
    data = as_data(data)
    return _python_loop(task, cfg, data_spec(data)).init(hp.as_arrays(), key)


class StepTiming(NamedTuple):
    """What :func:`time_steps` measured: compile and step seconds, and the projected epoch."""

    compile_s: float  # the first step (compiling it included)
    step_s: float  # mean of the timed steps after it
    epoch_s: float  # steps_per_epoch × step_s plus the epoch's evaluation (estimated)
    steps_per_epoch: int


def time_steps(task: Task, cfg: TrainConfig, data: Data, hp: Hyper, key, n: int = 3) -> StepTiming:
    """Times the Python loop's jitted training step (what :func:`train_python` runs) to project
    an epoch before a long run starts: one step to compile, then ``n`` timed steps from the
    same state and batch.

    The epoch's evaluation is estimated, not timed: a forward pass over the evaluated sets at
    about a third of a training step's cost per image (``n_eval · step_s / (3 · batch)``).
    Trains nothing that is kept.
    """
    if int(n) < 1:
        raise ValueError(f"time_steps needs n >= 1 timed steps, got {n}")
    data = as_data(data)
    pl = _python_loop(task, cfg, data_spec(data))
    hp = hp.as_arrays()
    ls = pl.init(hp, key)
    batches = pl.batches(key, ls.epoch)
    t0 = time.perf_counter()
    ls = jax.block_until_ready(pl.step(ls, data.x_train, data.y_train, batches, hp, key))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(int(n)):
        ls = jax.block_until_ready(pl.step(ls, data.x_train, data.y_train, batches, hp, key))
    step_s = (time.perf_counter() - t0) / int(n)
    n_eval = sum(int(x.shape[0]) for _, x, _ in _eval_sets(cfg, data))
    epoch_s = pl.steps_per_epoch * step_s + n_eval * step_s / (3 * cfg.batch_size)
    return StepTiming(compile_s, step_s, epoch_s, pl.steps_per_epoch)


def train_python(
    task: Task,
    cfg: TrainConfig,
    data: Data,
    hp: Hyper,
    key,
    *,
    checkpointer=None,
    quiet: bool = True,
    desc: str | None = None,
) -> TrainResult:
    """The run as a Python loop over a jitted step (same maths as :func:`make_train`).

    Args:
        checkpointer: optional :class:`mljax.train.checkpoint.Checkpointer`: resumes from its
            latest checkpoint if there is one, saves every ``every`` steps, at the end, and
            on Ctrl-C.
        quiet: hide the progress bar.
    """
    pl = _python_loop(task, cfg, data_spec(data))
    spe = pl.steps_per_epoch
    ls = pl.init(hp, key)
    if checkpointer is not None:
        ls = checkpointer.restore_or(ls)
    x, y = data.x_train, data.y_train
    done = int(ls.epoch) * spe + int(ls.batch)
    bar = progress(total=cfg.epochs * spe, desc=desc or "train", quiet=quiet, initial=done)
    try:
        while int(ls.epoch) < cfg.epochs and not bool(ls.stopped):
            batches = pl.batches(key, ls.epoch)
            for _ in range(int(ls.batch), spe):  # ls.batch counts inside the jit
                ls = pl.step(ls, x, y, batches, hp, key)
                bar.update(1)
                if checkpointer is not None:
                    checkpointer.maybe_save(ls, int(ls.train.step))
            ls = _end_epoch(pl, cfg, data, ls, hp)
            if checkpointer is not None:
                checkpointer.maybe_save(ls, int(ls.train.step), epoch_end=True)
    except KeyboardInterrupt:
        if checkpointer is not None:
            checkpointer.save(ls)
        raise
    finally:
        bar.close()
    if checkpointer is not None:
        checkpointer.save(ls)
    return _result(ls.train, ls.early, ls.epoch, ls.history, "python")


def train(
    task: Task,
    cfg: TrainConfig,
    data: Data,
    hp: Hyper | None = None,
    *,
    key=None,
    checkpointer=None,
    quiet: bool = True,
) -> TrainResult:
    """Trains one model; picks the strategy (``result.strategy`` says which ran).

    Args:
        task: the model, loss and metrics (:class:`Task`, e.g. from
            :func:`mljax.train.tasks.layer_task`).
        cfg: static settings.
        data: :class:`Data` (train, optional validation).
        hp: numeric hyperparameters (default :class:`Hyper`).
        key: root PRNG key (default ``jax.random.key(0)``).
        checkpointer: forces the Python loop; see :func:`train_python`.
        quiet: hide progress bars.

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: bad config, hyperparameters (e.g. an array where a scalar is meant),
            data sizes or monitor name; inputs the model cannot take (the message names
            ``x_train`` / ``x_val``, the given shape and the task's ``input_shape``);
            labels that are not integers in ``[0, n_classes)`` for a classification task
            (``Task.integer_labels``). All checked before anything is traced or compiled.
    """
    data = as_data(data)
    hp = Hyper() if hp is None else hp
    check_inputs(task, cfg, data, hp)
    check_monitor(task, cfg, data)
    hp = hp.as_arrays()
    key = jax.random.key(0) if key is None else key
    strategy = "python" if checkpointer is not None else pick_strategy(task, cfg)
    if strategy == "python":
        return train_python(task, cfg, data, hp, key, checkpointer=checkpointer, quiet=quiet)
    return _compiled_train(task, cfg)(data, hp, key)._replace(strategy="scan")
