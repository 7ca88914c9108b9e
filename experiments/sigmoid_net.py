"""Seed 002 Question 2: the sigmoid network's δ table and its 1-3-1 training, checked.

Reproduces SPEC E2. (1) The forward/backward table of the report's 5-neuron network (input
neuron 5, hidden 2, 3, 4 sigmoid, output 1 sigmoid, no biases, the report's weights) for
the samples (x, t) = (0, 0.5) and (1, 0.1): pre-activations a, activations z and
δ_i = dLoss/da_i with Loss = ½(z1 - t)², δ5 = Σ_i δ_i w(5→i), computed by the manual
backprop rules of `mljax.nn.backprop` and printed beside the report's values.
(2) The report's helper `backward_pass(X, y, output, weights_hidden_output,
weights_input_hidden, hidden)` was called with the two weight arguments swapped; we port it
line by line, show the correct call agreeing with jax.grad and the swapped call failing the
gradient check. (3) The 1-3-1 net trained as the report did (11 samples, w ~ U(0, 1),
full-batch gradient descent, lr 0.1, 1000 epochs, gradient summed over samples, loss
reported as the mean of ½ err²), with the correct and with the swapped gradient, each
vmapped over many seeds in one compiled program (lax.scan over epochs).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mljax.config import CommonConfig
from mljax.data import toy
from mljax.experiment import ReportRow, cli_main, format_mean_std, markdown_table, summarize
from mljax.nn import backprop, gradcheck, models
from mljax.plots import curve_with_band

NAME = "sigmoid_net"

# Seed 002 §2.3 as printed (strings keep the printed precision). a5 = z5 = x (input neuron).
REPORT_TABLE: tuple[dict[str, str], ...] = (
    {"x": "0.0", "t": "0.5", "a1": "-1", "a2": "0.0", "a3": "0.0", "a4": "0.0", "a5": "0.0",
     "z1": "0.269", "z2": "0.5", "z3": "0.5", "z4": "0.5", "z5": "0.0",
     "d1": "-0.045", "d2": "-0.034", "d3": "0.045", "d4": "0.011", "d5": "0.080"},
    {"x": "1.0", "t": "0.1", "a1": "-3.38", "a2": "-3", "a3": "2", "a4": "-10", "a5": "1.0",
     "z1": "0.033", "z2": "0.047", "z3": "0.88", "z4": "4.5e-5", "z5": "1.0",
     "d1": "-0.0021", "d2": "-0.00029", "d3": "0.00090", "d4": "9.7e-8", "d5": "0.0027"},
)  # fmt: skip
TABLE_KEYS = ("a1", "a2", "a3", "a4", "a5", "z1", "z2", "z3", "z4", "z5",
              "d1", "d2", "d3", "d4", "d5")  # fmt: skip
GRADCHECK_TOL = 1e-8
REPORTED_EPOCHS = (0, 900)
REPORTED_EPOCH900_TEXT = "0.00661"
VARIANTS = ("correct", "swapped")


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    """Seed 002 Q2: δ table, gradient check of the report's swapped call, 1-3-1 training."""

    seeds: int = 1000
    """Number of random initialisations (w ~ U(0, 1)) trained in one vmapped program."""

    epochs: int = 1000
    """Full-batch gradient-descent epochs (the report: 1000)."""

    lr: float = 0.1
    """Learning rate (the report: 0.1)."""

    hidden: int = 3
    """Hidden sigmoid neurons (the report: 3)."""

    quick_seeds: int = 64
    """Seeds used with --quick (at most --seeds)."""

    def validate(self) -> None:
        super().validate()
        if self.epochs <= max(REPORTED_EPOCHS):
            raise ValueError(f"--epochs must be > {max(REPORTED_EPOCHS)}, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.hidden < 1:
            raise ValueError(f"--hidden must be >= 1, got {self.hidden}")
        if self.quick_seeds < 1:
            raise ValueError(f"--quick-seeds must be >= 1, got {self.quick_seeds}")

    def n_seeds(self) -> int:
        return min(self.seeds, self.quick_seeds) if self.quick else self.seeds


# ----------------------------------------------------------------------------- δ table


def delta_table(weights=toy.SIGMOID_NET_WEIGHTS, samples=None) -> list[dict[str, float]]:
    """The report's table by our manual rules, in float64.

    Args:
        weights: the ``w<from><to>`` weights (default: the report's).
        samples: ``[(x, t), ...]`` (default: the report's (0, 0.5) and (1, 0.1)).

    Returns:
        One dict per sample with ``x, t, a1..a5, z1..z5, d1..d5`` (neuron numbers as in the
        report: 1 output, 2-4 hidden, 5 input).
    """
    if samples is None:
        samples = [(float(r["x"]), float(r["t"])) for r in REPORT_TABLE]
    layers = models.sigmoid_net()
    rows = []
    with jax.enable_x64(True):
        params = models.sigmoid_net_params(weights, dtype=jnp.float64)
        for x, t in samples:
            xa = jnp.array([[x]], jnp.float64)
            ta = jnp.array([[t]], jnp.float64)
            res = backprop.grads(layers, params, xa, ta, loss="squared_error", input_grad=True)
            _, acts, _, _ = backprop.forward(layers, params, xa)
            a_hidden, z_hidden = np.asarray(acts[1][0]), np.asarray(acts[2][0])
            d_hidden = np.asarray(res.deltas[0][0])
            # "+ 0.0" turns the -0.0 of w·0 into 0.0 for printing.
            row = {"x": x, "t": t, "a1": float(acts[3][0, 0]), "a5": x,
                   "z1": float(acts[4][0, 0]), "z5": x,
                   "d1": float(res.deltas[2][0, 0]), "d5": float(res.input_grad[0, 0])}  # fmt: skip
            for j, neuron in enumerate((2, 3, 4)):
                row[f"a{neuron}"] = float(a_hidden[j]) + 0.0
                row[f"z{neuron}"] = float(z_hidden[j])
                row[f"d{neuron}"] = float(d_hidden[j])
            rows.append(row)
    return rows


def half_last_digit(printed: str) -> float:
    """Half a unit in the last printed digit: ``"0.047"`` → 5e-4, ``"9.7e-8"`` → 5e-9."""
    mantissa, _, exponent = printed.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def agrees_with_print(value: float, printed: str) -> bool:
    """Whether ``value`` rounds to the report's printed number (at its printed precision)."""
    return abs(value - float(printed)) <= half_last_digit(printed) * (1 + 1e-9)


def format_delta_table(ours: list[dict[str, float]]) -> str:
    """Markdown: for each sample, a row of the report's values and a row of ours (3 s.f.)."""
    header = ["x", "t", "", *TABLE_KEYS]
    body = []
    for rep, row in zip(REPORT_TABLE, ours, strict=True):
        body.append([rep["x"], rep["t"], "report", *(rep[k] for k in TABLE_KEYS)])
        body.append(["", "", "ours", *(f"{row[k]:.3g}" for k in TABLE_KEYS)])
    return "\n".join(markdown_table(header, body))


# ----------------------------------------------------------------------------- the report's code


def report_forward_pass(x, weights_input_hidden, weights_hidden_output):
    """The report's ``forward_pass``: returns ``(output [n, 1], hidden activations [n, h])``."""
    hidden = jax.nn.sigmoid(jnp.dot(x, weights_input_hidden))
    output = jax.nn.sigmoid(jnp.dot(hidden, weights_hidden_output))
    return output, hidden


def report_backward_pass(x, y, output, weights_hidden_output, weights_input_hidden, hidden):
    """The report's ``backward_pass``, line by line (its signature and argument order).

    Returns ``(dE/dW_hidden_output [h, 1], dE/dW_input_hidden [1, h])`` of
    E = Σ ½(output - y)². ``weights_input_hidden`` is unused, as in the report.

    The report calls it with the weights swapped, so ``weights_hidden_output`` receives the
    input→hidden kernel ``[1, h]``. NumPy's ``np.dot([n, 1], W.T)`` would then reject the
    ``[h, 1]`` transpose; both kernels of a 1-h-1 net hold h weights, so we lay the received
    weights out in the ``[h, 1]`` shape the function expects (a no-op for the correct call):
    the swapped call then back-propagates the hidden error through w(5→i) instead of w(i→1),
    which is the mistake's meaning.
    """
    del weights_input_hidden  # the report's body never reads it
    w_ho = jnp.reshape(weights_hidden_output, (hidden.shape[-1], output.shape[-1]))
    error_output = output - y
    error_wrt_weights_hidden_output = jnp.dot(hidden.T, error_output * output * (1 - output))
    error_hidden = jnp.dot(error_output * output * (1 - output), w_ho.T)
    error_wrt_weights_input_hidden = jnp.dot(x.T, error_hidden * hidden * (1 - hidden))
    return error_wrt_weights_hidden_output, error_wrt_weights_input_hidden


def report_gradient(params, x, t, *, swapped: bool) -> dict:
    """The report's gradient as a ``params``-shaped tree; ``swapped`` = its actual call."""
    w_ih, w_ho = params["layer_0"]["kernel"], params["layer_2"]["kernel"]
    output, hidden = report_forward_pass(x, w_ih, w_ho)
    if swapped:
        d_ho, d_ih = report_backward_pass(x, t, output, w_ih, w_ho, hidden)
    else:
        d_ho, d_ih = report_backward_pass(x, t, output, w_ho, w_ih, hidden)
    return {"layer_0": {"kernel": d_ih}, "layer_2": {"kernel": d_ho}}


def manual_gradient(params, x, t) -> dict:
    """The correct manual gradient of Σ ½ err² (`mljax.nn.backprop`)."""
    return backprop.grads(models.sigmoid_net(), params, x, t, loss="squared_error").grads


def summed_loss(params, x, t):
    """Σ_i ½(z1_i - t_i)² through the flax model (what jax.grad differentiates)."""
    out = models.build(models.sigmoid_net(), param_dtype=x.dtype).apply({"params": params}, x)
    return 0.5 * jnp.sum((out - t) ** 2)


# ----------------------------------------------------------------------------- training


class TrainResult(NamedTuple):
    """One seed's run (leading ``[seeds]`` axis once vmapped).

    Attributes:
        losses: ``[epochs]`` mean of ½ err² before each epoch's update.
        params: final parameters.
        predictions: ``[n]`` final outputs on the training inputs.
    """

    losses: jax.Array
    params: Any
    predictions: jax.Array


def init_params(key: jax.Array, hidden: int, dtype=jnp.float32) -> dict:
    """Kernels ~ U(0, 1), as the report's ``np.random.uniform(size=...)``."""
    layers = models.sigmoid_net(hidden, kernel_init=jax.nn.initializers.uniform(1.0))
    net = models.build(layers, param_dtype=dtype)
    return net.init(key, jnp.zeros((1, 1), dtype))["params"]


def train(params, x, t, *, epochs: int, lr, gradient) -> TrainResult:
    """Full-batch gradient descent ``w ← w - lr · gradient(w)`` for ``epochs`` steps.

    Args:
        params: initial ``params`` of :func:`mljax.nn.models.sigmoid_net`.
        x: ``[n, 1]`` inputs; t: ``[n, 1]`` targets.
        epochs: number of steps (static).
        lr: learning rate (may be traced).
        gradient: ``gradient(params, x, t)`` → tree like ``params`` (summed over samples).
    """
    net = models.build(models.sigmoid_net(params["layer_0"]["kernel"].shape[-1]))

    def step(p, _):
        out = net.apply({"params": p}, x)
        loss = 0.5 * jnp.mean((out - t) ** 2)
        g = gradient(p, x, t)
        return jax.tree.map(lambda w, d: w - lr * d, p, g), loss

    final, losses = jax.lax.scan(step, params, None, length=epochs)
    predictions = net.apply({"params": final}, x)[:, 0]
    return TrainResult(losses, final, predictions)


def train_both(key, x, t, *, epochs: int, lr, hidden: int) -> dict[str, TrainResult]:
    """One seed, both gradients from the same initial weights."""
    params = init_params(key, hidden, x.dtype)
    grad_fns = {
        "correct": manual_gradient,
        "swapped": lambda p, x, t: report_gradient(p, x, t, swapped=True),
    }
    return {
        name: train(params, x, t, epochs=epochs, lr=lr, gradient=grad_fns[name])
        for name in VARIANTS
    }


def train_seeds(keys, x, t, *, epochs: int, lr: float, hidden: int) -> dict[str, TrainResult]:
    """Both variants for every key: one jitted, vmapped program."""
    fn = jax.jit(jax.vmap(lambda k: train_both(k, x, t, epochs=epochs, lr=lr, hidden=hidden)))
    return fn(keys)


# ----------------------------------------------------------------------------- gradient check


def gradient_check(params_batch, x, t) -> dict[str, dict[str, float]]:
    """Relative error of the report's two calls and of our manual rules against jax.grad.

    Runs in float64 at every parameter point of ``params_batch`` (leading axis) and keeps
    the worst case per leaf: ``{candidate: {leaf: max relative error}}``.
    """
    candidates = {
        "manual": manual_gradient,
        "report_correct_call": lambda p, x, t: report_gradient(p, x, t, swapped=False),
        "report_swapped_call": lambda p, x, t: report_gradient(p, x, t, swapped=True),
    }
    with jax.enable_x64(True):
        x = jnp.asarray(x, jnp.float64)
        t = jnp.asarray(t, jnp.float64)
        params_batch = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params_batch)

        def all_grads(p):
            return jax.grad(summed_loss)(p, x, t), {k: f(p, x, t) for k, f in candidates.items()}

        ref, got = jax.tree.map(np.asarray, jax.jit(jax.vmap(all_grads))(params_batch))
    n_points = jax.tree.leaves(params_batch)[0].shape[0]
    table: dict[str, dict[str, float]] = {}
    for name in candidates:
        for i in range(n_points):
            at = lambda tree, i=i: jax.tree.map(lambda a: a[i], tree)  # noqa: E731
            rows = gradcheck.compare_trees(at(got[name]), at(ref)).to_dict()
            worst = table.setdefault(name, dict.fromkeys(rows, 0.0))
            for leaf, err in rows.items():
                worst[leaf] = max(worst[leaf], err)
    return table


# ----------------------------------------------------------------------------- run


def run(config: Config, run_dir) -> dict:
    # (1) δ table.
    table = delta_table()
    agree = {
        f"x={rep['x']}": all(agrees_with_print(row[k], rep[k]) for k in TABLE_KEYS)
        for rep, row in zip(REPORT_TABLE, table, strict=True)
    }
    text = format_delta_table(table)
    run_dir.write_text("delta_table.md", text + "\n")
    if not config.quiet:
        print("δ table (report vs ours, 3 significant digits):")
        print(text)

    # (2) training, both variants, all seeds in one program.
    x = jnp.asarray(toy.SIGMOID_NET_TRAIN_X, jnp.float32)[:, None]
    t = jnp.asarray(toy.SIGMOID_NET_TRAIN_Y, jnp.float32)[:, None]
    n_seeds = config.n_seeds()
    keys = jax.random.split(jax.random.key(config.seed), n_seeds)
    results = train_seeds(keys, x, t, epochs=config.epochs, lr=config.lr, hidden=config.hidden)
    losses = {v: np.asarray(results[v].losses) for v in VARIANTS}
    preds = {v: np.asarray(results[v].predictions) for v in VARIANTS}

    # (3) gradient check at the report's weights and at every seed's initial weights.
    init_batch = jax.vmap(lambda k: init_params(k, config.hidden))(keys)
    check_points = (
        jax.tree.map(
            lambda a, b: jnp.concatenate([a[None].astype(b.dtype), b]),
            models.sigmoid_net_params(toy.SIGMOID_NET_WEIGHTS, dtype=jnp.float32),
            init_batch,
        )
        if config.hidden == 3
        else init_batch
    )
    check = gradient_check(check_points, x, t)
    correct_err = max(check["manual"].values())
    swapped_err = max(check["report_swapped_call"].values())

    _plot_losses(run_dir, losses)
    _plot_predictions(run_dir, x[:, 0], t[:, 0], preds)

    metrics: dict[str, Any] = {
        "deltas": table,
        "deltas_reported": [dict(r) for r in REPORT_TABLE],
        "deltas_agree_with_report": agree,
        "gradcheck_correct_max_rel_err": correct_err,
        "gradcheck_swapped_max_rel_err": swapped_err,
        "gradcheck_report_correct_call_max_rel_err": max(check["report_correct_call"].values()),
        "gradcheck_tolerance": GRADCHECK_TOL,
        "gradcheck_table": check,
        "gradcheck_points": int(jax.tree.leaves(check_points)[0].shape[0]),
        "n_seeds": n_seeds,
        "epochs": config.epochs,
    }
    for variant in VARIANTS:
        prefix = "" if variant == "correct" else "swapped_"
        for epoch in REPORTED_EPOCHS:
            metrics[f"{prefix}loss_epoch{epoch}"] = summarize(losses[variant][:, epoch])
        metrics[f"{prefix}loss_final"] = summarize(losses[variant][:, -1])
        metrics[f"{prefix}loss_curve_mean"] = losses[variant].mean(axis=0)[::10]
        # Which gradient could have produced the report's run: the share of seeds whose
        # epoch-900 loss prints as the report's 0.00661.
        at_900 = losses[variant][:, 900]
        metrics[f"{prefix}share_of_seeds_printing_report_epoch900"] = float(
            np.mean([agrees_with_print(float(v), REPORTED_EPOCH900_TEXT) for v in at_900])
        )
    metrics["final_weights_first_seed"] = jax.tree.map(
        lambda a: np.asarray(a[0]), results["correct"].params
    )
    return metrics


def _plot_losses(run_dir, losses):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    epochs = np.arange(next(iter(losses.values())).shape[1])
    for variant, color in zip(VARIANTS, ("C0", "C3"), strict=True):
        label = "correct gradient" if variant == "correct" else "report's swapped call"
        curve_with_band(ax, epochs, losses[variant], label=label, color=color)
    for epoch, value in toy.SIGMOID_NET_REPORTED_LOSS.items():
        ax.plot([epoch], [value], "k*", markersize=10)
        ax.annotate(f"report: {value}", (epoch, value), textcoords="offset points",
                    xytext=(5, 8))  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean ½ err² (mean ± std over seeds)")
    ax.set_title(f"1-3-1 sigmoid net, {losses['correct'].shape[0]} seeds")
    ax.legend()
    run_dir.write_figure(fig, "loss_curve.png")


def _plot_predictions(run_dir, x, t, preds):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.asarray(x)
    ax.plot(x, np.asarray(t), "ko-", label="targets")
    for variant, color in zip(VARIANTS, ("C0", "C3"), strict=True):
        label = "correct gradient" if variant == "correct" else "report's swapped call"
        curve_with_band(ax, x, preds[variant], label=f"predictions, {label}", color=color)
    ax.set_xlabel("x")
    ax.set_ylabel("output z1")
    ax.set_title("final predictions (mean ± std over seeds) vs targets")
    ax.legend()
    run_dir.write_figure(fig, "predictions.png")


# ----------------------------------------------------------------------------- report


def report_rows(metrics: dict) -> list[ReportRow]:
    rows = []
    for rep, ours in zip(REPORT_TABLE, metrics["deltas"], strict=True):
        agree = metrics["deltas_agree_with_report"][f"x={rep['x']}"]
        for group in ("a", "z", "d"):
            keys = [f"{group}{i}" for i in range(1, 6)]
            rows.append(ReportRow(
                figure=f"x={rep['x']}, t={rep['t']}: {', '.join(keys)}",
                seed_value=", ".join(rep[k] for k in keys),
                ours=", ".join(f"{ours[k]:.3g}" for k in keys),
                note="agrees to printed precision" if agree else "DIFFERS",
            ))  # fmt: skip
    tol = metrics["gradcheck_tolerance"]
    for key, label in (("gradcheck_correct_max_rel_err", "manual rules"),
                       ("gradcheck_swapped_max_rel_err", "report's swapped call")):  # fmt: skip
        value = metrics[key]
        rows.append(ReportRow(
            figure=f"max relative error vs jax.grad, {label}",
            seed_value="—",
            ours=f"{value:.2e}",
            note=("passes" if value <= tol else "FAILS") + f" (tol {tol:g})",
        ))  # fmt: skip
    n = metrics["n_seeds"]
    for prefix, label in (("", "correct gradient"), ("swapped_", "swapped call")):
        for epoch in REPORTED_EPOCHS:
            s = metrics[f"{prefix}loss_epoch{epoch}"]
            rows.append(ReportRow(
                figure=f"loss at epoch {epoch} ({label})",
                seed_value=f"{toy.SIGMOID_NET_REPORTED_LOSS[epoch]}",
                ours=f"{format_mean_std(s['mean'], s['std'], digits=4)} ({n} seeds)",
                note=f"min {s['min']:.4g}, max {s['max']:.4g}" + (
                    f"; {metrics[prefix + 'share_of_seeds_printing_report_epoch900']:.0%} of "
                    f"seeds print {REPORTED_EPOCH900_TEXT}" if epoch == 900 else ""
                ),
            ))  # fmt: skip
    return rows


if __name__ == "__main__":
    raise SystemExit(cli_main(sys.modules[__name__]))
