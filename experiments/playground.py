"""TensorFlow Playground study (seed 003 §1): the report's tables as one vmapped sweep.

Four datasets (circle, gauss, xor, spiral; 500 points, 70/30 split), the report's feature
sets, activations sigmoid / tanh / ReLU, no / L1 / L2 regularisation at rate 0.01, batch 10,
SGD at lr 0.1, the report's architectures, ≥ 8 seeds per cell. The Playground's network:
hidden layers of the given activation, one tanh output, labels ±1, weights ~ U(-0.5, 0.5),
biases 0.1, and its loss is the mean over points of ½(output − label)² (``getLoss`` with
``Errors.SQUARE`` in playground/src/playground.ts and nn.ts); L1 / L2 add rate·sign(w) /
rate·w to the weight gradients (biases not regularised). The Playground removes unselected
features; here every member gets all seven features with the unselected columns zeroed,
which leaves the data term identical (zero inputs give their weights no gradient and no
effect) and lets one compiled program train every feature set. Cells sharing an
architecture and activation are one ``mljax.train.sweep`` call (datasets × feature sets ×
regularisation × seeds vmapped); all cells train for the same number of epochs and each cell
is read at the report's epoch count from the per-epoch test-loss history.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mljax.config import CommonConfig
from mljax.data import toy
from mljax.experiment import ReportRow, cli_main, format_mean_std, summarize
from mljax.nn.layers import Activation, Dense
from mljax.plots import save_figure
from mljax.train import figures, loop, sweep, tasks

NAME = "playground"
ACTIVATIONS = ("sigmoid", "tanh", "relu")
REGS = {"none": (0.0, 0.0), "L1": (0.01, 0.0), "L2": (0.0, 0.01)}
ALL = toy.FEATURE_NAMES
X1X2 = ("x1", "x2")
# The report's best feature set and architecture per dataset (Table 1).
BEST = {
    "circle": (("x1^2", "x2^2"), (5, 5)),
    "gauss": (("x1", "x2"), (5, 5)),
    "xor": (("x1*x2",), (5, 5)),
    "spiral": (("x1", "x2", "sin(x1)", "sin(x2)"), (5, 5, 5)),
}
LOSS_TARGET = 0.01


class Cell(NamedTuple):
    """One table cell: a configuration trained over seeds."""

    dataset: str
    features: tuple[str, ...]
    activation: str
    reg: str
    hidden: tuple[int, ...]
    epochs: int | None = None  # the report's epoch count (None: the run's length)
    reported: float | None = None  # the report's test loss

    @property
    def name(self) -> str:
        feats = ",".join(self.features) if self.features != ALL else "all"
        arch = "-".join(map(str, self.hidden))
        return f"{feats} | {self.activation} {arch} | {self.reg}"


# The report's rows (Tables 1-4): dataset, features, activation, reg, hidden, epochs, test loss.
REPORT_CELLS = (
    Cell("circle", ("x1^2", "x2^2"), "sigmoid", "none", (5, 5), 306, 0.0),
    Cell("gauss", ("x1", "x2"), "sigmoid", "none", (5, 5), 70, 0.0),
    Cell("xor", ("x1*x2",), "sigmoid", "none", (5, 5), 390, 0.001),
    Cell("spiral", BEST["spiral"][0], "sigmoid", "none", (5, 5, 5), 700, 0.051),
    Cell("xor", ALL, "sigmoid", "L1", (5, 5), 250, 0.01),
    Cell("circle", ALL, "sigmoid", "L1", (5, 5), 250, 0.013),
    Cell("gauss", ALL, "sigmoid", "L1", (5, 5), 250, 0.019),
    Cell("spiral", ALL, "sigmoid", "L1", (5, 5, 5), 1000, 0.404),
    Cell("xor", ALL, "sigmoid", "L2", (5, 5), 250, 0.015),
    Cell("circle", ALL, "sigmoid", "L2", (5, 5), 250, 0.016),
    Cell("gauss", ALL, "sigmoid", "L2", (5, 5), 250, 0.039),
    Cell("spiral", ALL, "sigmoid", "L2", (5, 5, 5), 1000, 0.02),
    Cell("xor", X1X2, "relu", "none", (5, 5, 5, 5), 40, 0.0),
    Cell("xor", X1X2, "sigmoid", "none", (5, 5), 300, 0.5),
    Cell("xor", X1X2, "tanh", "none", (5, 5), 64, 0.0),
    Cell("xor", X1X2, "sigmoid", "none", (10, 10), 28, 0.0),
    Cell("circle", X1X2, "sigmoid", "none", (5, 5), 760, 0.001),
    Cell("circle", X1X2, "relu", "none", (10, 10), 177, 0.001),
    Cell("circle", X1X2, "relu", "none", (10, 10, 10), 177, 0.001),
    Cell("circle", X1X2, "relu", "none", (5, 5, 5, 5), 38, 0.0),
)


def cells(quick: bool) -> list[Cell]:
    """The report's cells plus the factorial dataset × features × activation × reg on each
    dataset's report architecture.

    Quick mode keeps four compiled groups: the sigmoid cells of Tables 1-2 on the report
    architectures, and tanh / ReLU with the report's features on the 5-5 architecture.
    """
    out = {c[:5]: c for c in REPORT_CELLS}
    for d, (best, hidden) in BEST.items():
        for feats in (best, ALL, X1X2):
            for a in ACTIVATIONS:
                for r in REGS:
                    c = Cell(d, feats, a, r, hidden)
                    out.setdefault(c[:5], c)
    result = list(out.values())
    if quick:
        result = [
            c
            for c in result
            if c.hidden == BEST[c.dataset][1]
            and (
                (c.activation == "sigmoid" and (c.reported is not None or c.features != X1X2))
                or (c.hidden == (5, 5) and c.features == BEST[c.dataset][0] and c.reg == "none")
            )
            and (c.features != X1X2 or c.features == BEST[c.dataset][0])
        ]
    return result


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    """Playground study options."""

    seeds: int = 8
    """Seeds per cell (members differ in initialisation and batch order)."""

    epochs: int = 1000
    """Epochs every member trains (cells are read at the report's epoch count when given)."""

    n_points: int = 500
    """Points per dataset (the Playground's 500)."""

    noise: float = 0.0
    """Playground noise level in [0, 0.5]."""

    batch_size: int = 10
    """Mini-batch size (the report's 10)."""

    learning_rate: float = 0.1
    """SGD learning rate (the report's 0.1)."""

    chunk_size: int = 2048
    """Members per compiled call (bounds memory)."""

    def validate(self) -> None:
        super().validate()
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"--noise must lie in [0, 0.5], got {self.noise}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.n_points < 20 or self.n_points % 2:
            raise ValueError(f"--n-points must be an even number >= 20, got {self.n_points}")
        if self.batch_size < 1 or self.batch_size > round(0.7 * self.n_points):
            raise ValueError(
                f"--batch-size must be in [1, {round(0.7 * self.n_points)}] (the training "
                f"set), got {self.batch_size}"
            )

    def effective(self) -> Config:
        """Quick mode: 2 seeds, 60 epochs, 200 points."""
        if not self.quick:
            return self
        return dataclasses.replace(
            self, seeds=min(self.seeds, 2), epochs=min(self.epochs, 60), n_points=200
        )


def playground_init(key, shape, dtype=jnp.float32):
    """The Playground's weight init: U(-0.5, 0.5)."""
    return jax.random.uniform(key, shape, dtype, -0.5, 0.5)


def network(hidden: tuple[int, ...], activation: str) -> tuple:
    """Hidden Dense + activation layers, one tanh output unit."""
    layers = []
    for h in hidden:
        layers += [Dense(h, kernel_init=playground_init), Activation(activation)]
    return (*layers, Dense(1, kernel_init=playground_init), Activation("tanh"))


def feature_data(split: toy.PlaygroundSplit, feats: tuple[str, ...]) -> loop.Data:
    """All seven features with the unselected ones zeroed (one jitted call)."""
    mask = np.asarray([f in feats for f in ALL], np.float32)
    return _feature_data(split, mask)


@jax.jit
def _feature_data(split, mask):
    return loop.Data(
        toy.features(split.x_train, ALL) * mask,
        split.y_train,
        toy.features(split.x_test, ALL) * mask,
        split.y_test,
    )


def run(config: Config, run_dir) -> dict:
    cfg_eff = config.effective()
    key = jax.random.key(config.seed)
    # Jitted so the generators compile once each rather than op by op.
    make = jax.jit(toy.playground_split, static_argnums=(0, 2))
    splits = {
        d: make(d, jax.random.fold_in(key, i), cfg_eff.n_points, cfg_eff.noise)
        for i, d in enumerate(toy.PLAYGROUND_DATASETS)
    }
    train_cfg = loop.TrainConfig(
        epochs=cfg_eff.epochs,
        batch_size=cfg_eff.batch_size,
        optimizer="sgd",
        monitor="val_loss",
        eval_batch_size=4096,
    )
    all_cells = cells(config.quick)
    groups: dict[tuple, list[Cell]] = {}
    for c in all_cells:
        groups.setdefault((c.hidden, c.activation), []).append(c)

    results: dict[Cell, dict] = {}
    boundary_params: dict[Cell, object] = {}
    strategies = set()
    for (hidden, act), group in groups.items():
        layers = network(hidden, act)
        task = tasks.layer_task(layers, (1, len(ALL)), loss="mean_squared_error", bias_init=0.1)
        data_keys = sorted({(c.dataset, c.features) for c in group})
        datasets = [feature_data(splits[d], f) for d, f in data_keys]
        members, owner = [], []
        for c in group:
            l1, l2 = REGS[c.reg]
            hp = loop.Hyper(learning_rate=cfg_eff.learning_rate, momentum=0.0, l1=l1, l2=l2)
            di = data_keys.index((c.dataset, c.features))
            for s in range(cfg_eff.seeds):
                members.append(sweep.Member(s, di, hp))
                owner.append(c)
        res = sweep.sweep(
            task,
            train_cfg,
            datasets,
            members,
            key=jax.random.fold_in(key, 1000),
            chunk_size=cfg_eff.chunk_size,
            quiet=config.quiet,
        )
        strategies.add(res.strategy)
        owner = np.array([all_cells.index(c) for c in owner])
        for c in group:
            idx = np.flatnonzero(owner == all_cells.index(c))
            results[c] = {k: res.history[k][idx] for k in ("val_loss", "train_loss")}
            boundary_params[c] = (task, jax.tree.map(lambda a, i=idx[0]: a[i], res.params))

    metrics: dict = {}
    for c in all_cells:
        h = results[c]
        at = min(c.epochs or cfg_eff.epochs, cfg_eff.epochs)
        test = summarize(h["val_loss"][:, at - 1])
        train = summarize(h["train_loss"][:, at - 1])
        reach = [
            int(np.argmax(v <= LOSS_TARGET)) + 1 if np.any(v <= LOSS_TARGET) else math.nan
            for v in h["val_loss"]
        ]
        metrics.setdefault(c.dataset, {})[c.name] = {
            "test_loss_mean": test["mean"],
            "test_loss_std": test["std"],
            "train_loss_mean": train["mean"],
            "epochs": at,
            "seed_reported_test_loss": c.reported,
            "epochs_to_test_loss_0.01_mean": summarize(reach)["mean"],
            "reached_0.01_fraction": float(np.mean(np.isfinite(reach))),
            "final_test_loss_mean": summarize(h["val_loss"][:, -1])["mean"],
        }
    _figures(run_dir, cfg_eff, all_cells, results, boundary_params, splits, metrics)
    metrics["_meta"] = {
        "seeds": cfg_eff.seeds,
        "epochs": cfg_eff.epochs,
        "members": len(all_cells) * cfg_eff.seeds,
        "cells": len(all_cells),
        "compiled_groups": len(groups),
        "strategy": sorted(strategies),
        "loss": "mean over points of 0.5*(tanh output - label)^2, labels +-1",
    }
    return metrics


def _best_cell(all_cells, dataset, metrics):
    cand = [c for c in all_cells if c.dataset == dataset]
    return min(
        cand,
        key=lambda c: np.nan_to_num(metrics[dataset][c.name]["final_test_loss_mean"], nan=np.inf),
    )


def _figures(run_dir, cfg, all_cells, results, boundary_params, splits, metrics):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    fig_c, axes_c = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, axc, d in zip(axes, axes_c, toy.PLAYGROUND_DATASETS, strict=True):
        best = _best_cell(all_cells, d, metrics)
        task, params = boundary_params[best]
        feats = best.features

        def predict(pts, task=task, params=params, feats=feats):
            mask = jnp.asarray([f in feats for f in ALL], jnp.float32)
            out, _ = task.apply(
                params,
                {},
                toy.features(jnp.asarray(pts), ALL) * mask,
                train=False,
                rng=None,
                hparams=None,
            )
            return np.asarray(out)[:, 0]

        sp = splits[d]
        loss = metrics[d][best.name]["final_test_loss_mean"]
        figures.decision_boundary(
            ax,
            predict,
            sp.x_test,
            sp.y_test,
            title=f"{d}: {best.name}\ntest loss {loss:.3g} (seed 0 shown)",
        )
        curves = {
            c.name: results[c]["val_loss"]
            for c in all_cells
            if c.dataset == d and (c.reported is not None or c == best)
        }
        figures.curves_with_bands(axc, curves, ylabel="test loss", log=True)
        axc.set_title(d)
    save_figure(fig, run_dir.file("decision_boundaries.png"))
    save_figure(fig_c, run_dir.file("loss_curves.png"))

    # Activation comparison: epochs to test loss <= 0.01 (x1, x2 inputs, no reg, report arch).
    fig_a, ax_a = plt.subplots(figsize=(7, 3.4))
    width = 0.25
    for j, a in enumerate(ACTIVATIONS):
        vals, errs = [], []
        for d in toy.PLAYGROUND_DATASETS:
            feats = BEST[d][0]
            match = [
                c
                for c in all_cells
                if c.dataset == d
                and c.activation == a
                and c.reg == "none"
                and c.hidden == BEST[d][1]
                and c.features == feats
            ]
            if not match:
                vals.append(np.nan)
                errs.append(0)
                continue
            h = results[match[0]]["val_loss"]
            reach = [
                int(np.argmax(v <= LOSS_TARGET)) + 1 if np.any(v <= LOSS_TARGET) else np.nan
                for v in h
            ]
            s = summarize(reach)
            vals.append(s["mean"])
            errs.append(s["std"] if np.isfinite(s["std"]) else 0)
        ax_a.bar(np.arange(4) + (j - 1) * width, vals, width, yerr=errs, label=a)
    ax_a.set_xticks(range(4), toy.PLAYGROUND_DATASETS)
    ax_a.set_ylabel(f"epochs to test loss <= {LOSS_TARGET}")
    ax_a.set_title("activation comparison (report's features, no reg.; missing bar: never)")
    ax_a.legend(fontsize=7)
    save_figure(fig_a, run_dir.file("activation_comparison.png"))


def report_rows(metrics) -> list[ReportRow]:
    rows = []
    for c in REPORT_CELLS:
        m = metrics.get(c.dataset, {}).get(c.name)
        if m is None:
            continue
        rows.append(
            ReportRow(
                figure=f"{c.dataset} [{c.name}] test loss at epoch {m['epochs']}",
                seed_value=f"{c.reported:g}",
                ours=format_mean_std(m["test_loss_mean"], m["test_loss_std"])
                + f" ({metrics['_meta']['seeds']} seeds)",
                note=f"reaches <= 0.01 in {m['reached_0.01_fraction']:.0%} of seeds",
            )
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(cli_main(sys.modules[__name__]))
