"""Gradient check of every seed model: manual rules vs jax.grad vs central differences.

For each seed model (seed 002's sigmoid net, seed 001's two-layer net on its toy problem,
seed 004's models (a)-(d), seed 003's Fashion-MNIST MLP and CNNs with dropout and batch
norm in training mode, seed 000's NN and CNN) and each parameter leaf, in float64 on small
random inputs: the relative error max|a - b| / max(|a| + |b|, tiny) between (i) the manual
backprop rules of `mljax.nn.backprop` and jax.grad of the same flax model, (ii) each of them
and central finite differences (on a random subset of each leaf's entries for the large
leaves). The seed-001 row also shows the report's own manual-vs-numerical errors.

Two caveats are measured, not hidden: a leaf whose gradient is identically zero (the bias
of a layer feeding a batch norm) holds rounding noise only and is compared against the
model's gradient scale (marked "≡ 0"); and central differences are only valid where the
loss is smooth: in the large seed-003 CNNs (hundreds of thousands of ReLU units, batch norm
coupling the batch) a step of 1e-6 can cross a ReLU or max-pool kink, so there the
difference quotient, not the rules, can be off (manual and jax.grad still agree). The report
blames a kink only where the run found one: at the worst entry of each leaf that misses, one
of the one-sided differences matches jax.grad ten times better than the central one.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from mljax.config import CommonConfig
from mljax.data import toy
from mljax.experiment import ReportRow, cli_main, markdown_table
from mljax.nn import backprop, gradcheck, losses, models
from mljax.nn import layers as layers_lib
from mljax.progress import progress

NAME = "gradcheck"

MANUAL_VS_AUTODIFF_TOL = 1e-10
VS_NUMERIC_TOL = 1e-7
FULL_CHECK_MAX_PARAMS = 2000
SEED001_EPS = 1e-5
PERTURBED_ENTRIES_PER_CHUNK = 20_000_000
ZERO_LEAF_RTOL = 1e-12
# Seed 001's printed "max relative error" of its manual gradient vs numerical differences.
SEED001_PARAM_NAMES = {("layer_1", "kernel"): "W1", ("layer_1", "bias"): "b1",
                       ("layer_3", "kernel"): "W2", ("layer_3", "bias"): "b2"}  # fmt: skip

# --quick: one model per kind of rule (sigmoid/squared error, the seed-001 toy with L2,
# conv + max-pool, dropout + batch norm).
QUICK_MODELS = ("seed002_sigmoid", "seed001_twolayer_toy", "seed004_d", "seed003_mlp")


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    """Manual backprop vs jax.grad vs central differences for every seed model (float64)."""

    batch: int = 3
    """Examples per random input batch (small: the check is about the rules, not the data)."""

    probes: int = 8
    """Entries per parameter leaf checked by central differences (all entries if fewer)."""

    eps: float = 1e-6
    """Central-difference step."""

    image_size: int = 12
    """Height and width of the random images for the models that accept it (the seed-003
    CNN v2, whose VALID convolutions need ≥ 22, keeps 28×28)."""

    models: tuple[str, ...] = ()
    """Check only these seed models (names as in mljax.nn.models.seed_models); default: all
    (with --quick: one per kind of rule)."""

    def validate(self) -> None:
        super().validate()
        known = [m.name for m in models.seed_models()]
        unknown = [m for m in self.models if m not in known]
        if unknown:
            raise ValueError(f"--models: unknown {unknown}; known: {known}")
        if self.batch < 2:
            raise ValueError(f"--batch must be >= 2 (batch norm needs a batch), got {self.batch}")
        if self.probes < 1:
            raise ValueError(f"--probes must be >= 1, got {self.probes}")
        if not 0 < self.eps < 1e-2:
            raise ValueError(f"--eps must be in (0, 1e-2), got {self.eps}")
        if self.image_size < 8:
            raise ValueError(f"--image-size must be >= 8, got {self.image_size}")


class Case(NamedTuple):
    """One model's gradient problem (float64).

    Attributes:
        name: seed model name (``mljax.nn.models.seed_models``).
        layers: the layer tuple.
        params: ``params`` tree.
        batch_stats: ``batch_stats`` tree or None.
        x, y: input and targets.
        loss: loss name (`mljax.nn.losses.LOSSES`).
        reg: penalty λ of λ Σ‖W‖², no ½ (seed 001: 0.05; ``mljax.nn.losses``).
        train: training mode (dropout masks and batch statistics).
        masks: dropout masks (train mode), shared by both gradient sources.
    """

    name: str
    layers: tuple
    params: Any
    batch_stats: Any
    x: jax.Array
    y: jax.Array
    loss: str
    reg: float
    train: bool
    masks: tuple | None


def _input_shape(model: models.SeedModel, config: Config) -> tuple[int, ...]:
    shape = model.input_shape[1:]
    if model.name == "seed001_twolayer":
        shape = (8, 8, 3)
    elif len(shape) == 3 and model.name != "seed003_cnn_v2":
        shape = (config.image_size, config.image_size, shape[-1])
    return (config.batch, *shape)


def make_case(model: models.SeedModel, key: jax.Array, config: Config) -> Case:
    """Random float64 parameters and inputs for one seed model (must run under x64)."""
    if model.name == "seed001_twolayer_toy":
        t = toy.twolayer_toy()
        params = {"layer_1": {"kernel": t.w1, "bias": t.b1},
                  "layer_3": {"kernel": t.w2, "bias": t.b2}}  # fmt: skip
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        return Case(model.name, model.layers, params, None, jnp.asarray(t.x), jnp.asarray(t.y),
                    "softmax_cross_entropy", float(t.reg), False, None)  # fmt: skip
    if model.name == "seed002_sigmoid":
        params = models.sigmoid_net_params(toy.SIGMOID_NET_WEIGHTS, dtype=jnp.float64)
        x = jnp.asarray(toy.SIGMOID_NET_TRAIN_X, jnp.float64)[:, None]
        y = jnp.asarray(toy.SIGMOID_NET_TRAIN_Y, jnp.float64)[:, None]
        return Case(model.name, model.layers, params, None, x, y, "squared_error", 0.0, False,
                    None)  # fmt: skip
    # NumPy draws: a jitted flax init of a conv net costs ~15 s of XLA compile (threefry)
    # on our 2 cores, while every value here only needs to be random and reproducible.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    shape = _input_shape(model, config)
    x = jnp.asarray(rng.normal(size=shape))
    n_classes = model.layers[-1].features
    y = jnp.asarray(rng.integers(0, n_classes, size=shape[0]), jnp.int32)
    shapes = models.variable_shapes(model.layers, shape, param_dtype=jnp.float64)

    def draw(path, leaf):
        name = gradcheck.leaf_name(path).rsplit("/", 1)[-1]
        if name == "kernel":  # LeCun scale keeps the activations O(1)
            fan_in = math.prod(leaf.shape[:-1])
            return jnp.asarray(rng.normal(size=leaf.shape) / math.sqrt(fan_in))
        if name == "scale":  # BN γ away from 1
            return jnp.asarray(1.0 + 0.1 * rng.normal(size=leaf.shape))
        if name == "var":
            return jnp.ones(leaf.shape, jnp.float64)
        if name == "mean":
            return jnp.zeros(leaf.shape, jnp.float64)
        return jnp.asarray(0.1 * rng.normal(size=leaf.shape))  # non-zero biases

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    train = any(isinstance(lay, layers_lib.Dropout | layers_lib.BatchNorm) for lay in model.layers)
    masks = None
    if train:
        # Same format as mljax.nn.layers.dropout_masks: one keep-mask per active Dropout.
        inputs = layers_lib.layer_shapes(model.layers, shape)
        masks = tuple(
            jnp.asarray(rng.random(inputs[i]) >= lay.rate)
            if isinstance(lay, layers_lib.Dropout) and lay.rate > 0
            else None
            for i, lay in enumerate(model.layers)
        )
    return Case(model.name, model.layers, variables["params"], variables.get("batch_stats"), x,
                y, "softmax_cross_entropy", 0.0, train, masks)  # fmt: skip


def autodiff_loss(case: Case):
    """``params -> loss`` through the flax model (what jax.grad and the differences see)."""
    net = models.build(case.layers, param_dtype=jnp.float64)
    loss_fn = losses.get(case.loss)

    def f(params):
        variables = {"params": params}
        if case.batch_stats is not None:
            variables["batch_stats"] = case.batch_stats
        if case.train and case.batch_stats is not None:
            out, _ = net.apply(variables, case.x, train=True, masks=case.masks,
                               mutable=["batch_stats"])  # fmt: skip
        else:
            out = net.apply(variables, case.x, train=case.train, masks=case.masks)
        value = loss_fn(out, case.y)
        if case.reg:
            value = value + losses.reg_penalty(params, case.reg)
        return value

    return f


def manual_grads(case: Case):
    """The manual rules' gradient at ``case.params`` (jitted)."""

    def g(params, x, y, masks, batch_stats):
        return backprop.grads(
            case.layers, params, x, y, loss=case.loss, reg=case.reg, train=case.train,
            masks=masks, batch_stats=batch_stats,
        ).grads  # fmt: skip

    return jax.jit(g)(case.params, case.x, case.y, case.masks, case.batch_stats)


def check_case(case: Case, key: jax.Array, config: Config) -> list[dict[str, Any]]:
    """One row per parameter leaf: the three relative errors and how many entries were probed."""
    f = autodiff_loss(case)
    auto = jax.jit(jax.grad(f))(case.params)
    manual = manual_grads(case)
    n_params = sum(leaf.size for leaf in jax.tree.leaves(case.params))
    numeric = gradcheck.numerical_grad(
        f,
        case.params,
        eps=config.eps,
        # Small models (seed 002, seed 001's toy) get every entry differenced.
        max_per_leaf=None if n_params <= FULL_CHECK_MAX_PARAMS else config.probes,
        key=key,
        # Each vmapped perturbation holds a copy of the flat parameter vector: bound the
        # chunk so that a chunk stays near 160 MB (the seed-003 CNN v2 has 1.9M parameters).
        chunk=int(np.clip(PERTURBED_ENTRIES_PER_CHUNK // n_params, 1, 256)),
    )
    flat = [jax.tree_util.tree_flatten_with_path(t)[0] for t in (manual, auto, numeric)]
    scale = max(float(np.max(np.abs(np.asarray(a)))) for _, a in flat[1])
    rows = []
    for (path, m), (_, a), (_, num) in zip(*flat, strict=True):
        m, a, num = (np.asarray(v, np.float64) for v in (m, a, num))
        probed = ~np.isnan(num)
        # A leaf whose gradient is identically zero (a bias feeding a batch norm: the norm
        # subtracts it again) holds rounding noise only; noise over noise is not an error, so
        # such leaves are measured against the model's gradient scale instead.
        zero = max(np.max(np.abs(m)), np.max(np.abs(a))) <= ZERO_LEAF_RTOL * scale
        tiny = scale if zero else 1e-30
        row = {
            "model": case.name,
            "leaf": gradcheck.leaf_name(path),
            "shape": list(m.shape),
            "probed": int(probed.sum()),
            "zero_gradient": bool(zero),
            "manual_vs_autodiff": gradcheck.relative_error(m, a, tiny=tiny),
            "manual_vs_numeric": gradcheck.relative_error(m[probed], num[probed], tiny=tiny),
            "autodiff_vs_numeric": gradcheck.relative_error(a[probed], num[probed], tiny=tiny),
        }
        rows.append(row)
    _diagnose_kinks(f, case.params, auto, numeric, rows, config.eps)
    if case.name == "seed001_twolayer_toy":
        # Seed 001's checker (CS231n): per-entry ratio with a 1e-8 floor, step 1e-5, every entry.
        table = gradcheck.check_gradients(
            f, case.params, manual, eps=SEED001_EPS, tiny=1e-8, elementwise=True
        ).to_dict()
        for row in rows:
            row["manual_vs_numeric_elementwise"] = table[row["leaf"]]
    return rows


def one_sided_slopes(f, params, index: int, eps: float) -> tuple[float, float]:
    """Forward and backward difference quotients of ``f`` at flat parameter ``index``."""
    flat, unravel = ravel_pytree(params)
    step = jnp.zeros_like(flat).at[index].set(eps)
    f0, fp, fm = (float(f(unravel(v))) for v in (flat, flat + step, flat - step))
    return (fp - f0) / eps, (f0 - fm) / eps


def kink_within_step(analytic: float, forward: float, backward: float) -> bool:
    """Whether a kink of ``f`` lies within the step, judged from one entry's slopes.

    Where ``f`` is smooth, both one-sided quotients miss the derivative by ~h·f''/2 and the
    central one (their mean) by O(h²): the central quotient is the better one. With a ReLU or
    max-pool kink between θ and θ ± h, the side without the kink still gives the derivative
    while the central quotient averages in the other side's slope: one side agrees with the
    analytic gradient at least ten times better than the central quotient does."""
    central = 0.5 * (forward + backward)
    one_sided = min(abs(forward - analytic), abs(backward - analytic))
    return one_sided <= 0.1 * abs(central - analytic)


def _diagnose_kinks(f, params, auto, numeric, rows, eps: float) -> None:
    """For each leaf whose jax.grad misses the central difference, looks at its worst entry
    and records whether a kink within the step explains it (``kink_found``)."""
    offset = 0
    for row, a, num in zip(rows, jax.tree.leaves(auto), jax.tree.leaves(numeric), strict=True):
        a, num = np.asarray(a, np.float64).ravel(), np.asarray(num, np.float64).ravel()
        if row["autodiff_vs_numeric"] > VS_NUMERIC_TOL:
            j = int(np.argmax(np.where(np.isnan(num), -np.inf, np.abs(a - num))))
            forward, backward = one_sided_slopes(f, params, offset + j, eps)
            row["kink_found"] = kink_within_step(float(a[j]), forward, backward)
        offset += a.size


def run(config: Config, run_dir) -> dict:
    if config.models:
        wanted = config.models
    else:
        wanted = QUICK_MODELS if config.quick else tuple(m.name for m in models.seed_models())
    table: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    key = jax.random.key(config.seed)
    with jax.enable_x64(True):
        chosen = [m for m in models.seed_models() if m.name in wanted]
        for i, model in enumerate(progress(chosen, desc="models", quiet=config.quiet)):
            k_case, k_probe = jax.random.split(jax.random.fold_in(key, i))
            start = time.perf_counter()
            case = make_case(model, k_case, config)
            table += check_case(case, k_probe, config)
            seconds[model.name] = time.perf_counter() - start
    text = format_table(table)
    run_dir.write_text("gradcheck_table.md", text + "\n")
    if not config.quiet:
        print(text)
    worst_auto = max(r["manual_vs_autodiff"] for r in table)
    worst_num = max(max(r["manual_vs_numeric"], r["autodiff_vs_numeric"]) for r in table)
    seed001 = {
        SEED001_PARAM_NAMES[tuple(r["leaf"].split("/"))]: r["manual_vs_numeric_elementwise"]
        for r in table if r["model"] == "seed001_twolayer_toy"
    }  # fmt: skip
    return {
        "max_rel_err_manual_vs_autodiff": worst_auto,
        "max_rel_err_vs_numeric": worst_num,
        "manual_vs_autodiff_tolerance": MANUAL_VS_AUTODIFF_TOL,
        "vs_numeric_tolerance": VS_NUMERIC_TOL,
        "models": sorted({r["model"] for r in table}),
        "table": table,
        "per_model": {
            name: {
                "manual_vs_autodiff": max(r["manual_vs_autodiff"] for r in rows),
                "manual_vs_numeric": max(r["manual_vs_numeric"] for r in rows),
                "autodiff_vs_numeric": max(r["autodiff_vs_numeric"] for r in rows),
                "kink_found": any(r.get("kink_found", False) for r in rows),
                "unexplained_vs_numeric": any(
                    r["autodiff_vs_numeric"] > VS_NUMERIC_TOL and not r.get("kink_found")
                    for r in rows
                ),
            }
            for name in dict.fromkeys(r["model"] for r in table)
            for rows in [[r for r in table if r["model"] == name]]
        },
        "seed001_manual_vs_numeric": seed001,
        "seconds_per_model": seconds,
    }


def format_table(table) -> str:
    return "\n".join(markdown_table(
        ["model", "leaf", "shape", "probed", "manual vs jax.grad", "manual vs numeric",
         "jax.grad vs numeric"],
        [[r["model"], r["leaf"] + (" (≡ 0)" if r.get("zero_gradient") else ""),
          "×".join(map(str, r["shape"])), r["probed"],
          f"{r['manual_vs_autodiff']:.1e}", f"{r['manual_vs_numeric']:.1e}",
          f"{r['autodiff_vs_numeric']:.1e}"] for r in table],
    ))  # fmt: skip


def _numeric_cause(errs: dict) -> str:
    """What the run checked about a central-difference mismatch (see `_diagnose_kinks`)."""
    if errs.get("kink_found") and not errs.get("unexplained_vs_numeric"):
        return ("at each such leaf's worst entry one one-sided difference matches jax.grad "
                "and the central one does not (a ReLU / max-pool kink within the step)")  # fmt: skip
    if errs.get("kink_found"):
        return ("a kink within the step at some leaves' worst entries; at the others no "
                "kink was found (cause not found)")  # fmt: skip
    return "no kink found at the worst entries (cause not found)"


def report_rows(metrics: dict) -> list[ReportRow]:
    rows = []
    for name, errs in metrics["per_model"].items():
        if errs["manual_vs_autodiff"] > MANUAL_VS_AUTODIFF_TOL:
            verdict = "FAILS: manual rules differ from jax.grad"
        elif max(errs["manual_vs_numeric"], errs["autodiff_vs_numeric"]) > VS_NUMERIC_TOL:
            verdict = "manual = jax.grad; central differences off: " + _numeric_cause(errs)
        else:
            verdict = "passes"
        rows.append(ReportRow(
            figure=f"{name}: max rel. error manual vs jax.grad / vs central differences",
            seed_value="—",
            ours=f"{errs['manual_vs_autodiff']:.1e} / {errs['manual_vs_numeric']:.1e}",
            note=f"{verdict} (tol {MANUAL_VS_AUTODIFF_TOL:g} / {VS_NUMERIC_TOL:g})",
        ))  # fmt: skip
    for param, value in metrics.get("seed001_manual_vs_numeric", {}).items():
        rows.append(ReportRow(
            figure=f"seed 001 toy: {param} max relative error, manual vs numerical",
            seed_value=f"{toy.TWOLAYER_TOY_REPORTED_REL_ERR[param]:.1e}",
            ours=f"{value:.1e}",
            note="per-entry ratio as the report's checker; float64 central differences",
        ))  # fmt: skip
    return rows


if __name__ == "__main__":
    raise SystemExit(cli_main(sys.modules[__name__]))
