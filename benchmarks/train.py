"""Training speed: the mljax engine (`mljax.train`) vs PyTorch CPU, same models and batches.

Cases (float32, plain SGD, softmax cross-entropy for the image nets):

* ``mlp``: 784-256-256-10 ReLU (seed-004 (c)), batch 200; the engine's "scan" strategy.
* ``cnn_d``: the seed-004 CNN (d) (conv3×3×16-pool-conv3×3×16-pool-dense256-10), batch 200
  on 28×28×1; the engine's "python" strategy (a Python loop over a jitted step).
* ``cnn_32_64``: conv3×3×32-pool-conv3×3×64-pool-dense128-10, batch 200 on 28×28×1.
* ``playground``: 1,024 Playground nets 2-8-8-1 tanh (500 points, 200 epochs, batch 10,
  squared error, 4 learning rates × 4 L2 rates × 64 seeds) trained by one
  ``mljax.train.sweep`` call (vmapped: one compiled program) against a sequential PyTorch
  loop. Timing all 1,024 PyTorch runs would take about half an hour, so a fixed, evenly
  spaced subset of ``--playground-torch`` configurations is timed and scaled linearly to
  1,024 (the table says so).

Timing: for the image nets one timed block is one epoch of ``--steps`` batches through the
public ``loop.train`` (ours, no evaluation pass) and the same batches through a standard
PyTorch loop (``zero_grad``/``backward``/``step``). Blocks alternate ours / PyTorch and the
median is reported, so a load change on a shared machine hits both alike. ``compile_s`` =
first call − median later call (jit tracing and XLA compilation; PyTorch compiles nothing).
``ratio`` = PyTorch time / our time (= our samples/s ÷ PyTorch's samples/s).

Agreement: PyTorch starts from our initial weights (kernels transposed to PyTorch's layout,
the first dense layer's rows permuted from NHWC to NCHW flattening) and sees our batches in
our order. For the image nets, ``agreement`` = |loss of our final parameters − loss of
PyTorch's| on the first batch after the timed epoch; for the Playground, the largest
|final training loss difference| over the PyTorch subset.

``python -m benchmarks.train [--quick] [--out FILE]``
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._cli import parse_or_none, write_rows
from mljax.data import toy
from mljax.data.batches import epoch_batches
from mljax.experiment import markdown_table
from mljax.malloc_tuning import tune_for_command_line
from mljax.nn import layers as L
from mljax.nn import models
from mljax.train import loop, sweep, tasks

ANCHOR = "PyTorch CPU"
CASES = ("mlp", "cnn_d", "cnn_32_64", "playground")
LR = 0.1
PLAYGROUND_LRS = (0.01, 0.03, 0.1, 0.3)
PLAYGROUND_L2 = (0.0, 0.001, 0.003, 0.01)


@dataclasses.dataclass(frozen=True)
class Config:
    """Training speed of the mljax engine vs PyTorch CPU (MLP, two CNNs, a 1,024-net sweep)."""

    quick: bool = False
    """Tiny run for smoke tests: small batches, few steps, 16 tiny Playground nets."""

    out: str | None = None
    """JSON file for the result rows (default: $MLJAX_RESULTS_DIR or results, then bench/train.json)."""

    cases: tuple[str, ...] = CASES
    """Which cases to run: any of mlp, cnn_d, cnn_32_64, playground."""

    batch: int = 200
    """Batch size of the image nets."""

    steps: int = 30
    """Batches per timed epoch of the image nets."""

    repeats: int = 5
    """Timed blocks per side (alternating ours / PyTorch); the median is reported."""

    playground_nets: int = 1024
    """Playground sweep size (4 learning rates × 4 L2 rates × nets/16 seeds)."""

    playground_epochs: int = 200
    """Playground epochs (batch 10 on 500 points: 50 steps an epoch)."""

    playground_points: int = 500
    """Playground training points."""

    playground_torch: int = 8
    """PyTorch Playground configurations timed (evenly spaced), scaled to the sweep size."""

    playground_repeats: int = 2
    """Timed blocks per side for the Playground case."""

    def validate(self) -> None:
        for name in ("batch", "steps", "repeats", "playground_epochs", "playground_torch",
                     "playground_repeats"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        unknown = [c for c in self.cases if c not in CASES]
        if unknown or not self.cases:
            raise ValueError(f"--cases must be a non-empty subset of {CASES}, got {self.cases}")
        if self.playground_nets < 16 or self.playground_nets % 16:
            raise ValueError(
                f"--playground-nets must be a positive multiple of 16, got {self.playground_nets}"
            )
        if self.playground_torch > self.playground_nets:
            raise ValueError(
                f"--playground-torch must be <= --playground-nets ({self.playground_nets}), "
                f"got {self.playground_torch}"
            )
        if self.playground_points < 10:
            raise ValueError(f"--playground-points must be >= 10, got {self.playground_points}")

    def effective(self) -> Config:
        if not self.quick:
            return self
        return dataclasses.replace(
            self,
            cases=tuple(c for c in self.cases if c != "cnn_32_64"),
            batch=8,
            steps=4,
            repeats=2,
            playground_nets=16,
            playground_epochs=3,
            playground_points=40,
            playground_torch=2,
            playground_repeats=1,
        )


def image_layers(case: str) -> tuple:
    if case == "mlp":
        return models.mnist_mlp2()
    if case == "cnn_d":
        return models.mnist_cnn()
    blocks = (models.ConvBlock(32, 3, pool=2), models.ConvBlock(64, 3, pool=2))
    return models.cnn(blocks, (128,), 10)


CASE_NAMES = {
    "mlp": "MLP 784-256-256-10",
    "cnn_d": "seed-004 CNN (d)",
    "cnn_32_64": "CNN conv32-pool-conv64-pool-dense128",
}


# ----------------------------------------------------------------------------- PyTorch side


def torch_model(layers: Sequence, input_shape: Sequence[int]):
    """The PyTorch twin of a layer stack (Dense, Conv 'SAME' stride 1, MaxPool, Flatten, act)."""
    import torch

    mods = []
    shapes = L.layer_shapes(layers, input_shape)
    for layer, shape in zip(layers, shapes, strict=False):
        if isinstance(layer, L.Dense):
            mods.append(torch.nn.Linear(shape[-1], layer.features))
        elif isinstance(layer, L.Conv):
            if layer.strides != (1, 1) or layer.padding != "SAME" or layer.kernel_size[0] % 2 == 0:
                raise ValueError(f"no PyTorch twin for {layer!r}")
            pad = (layer.kernel_size[0] // 2, layer.kernel_size[1] // 2)
            mods.append(torch.nn.Conv2d(shape[-1], layer.features, layer.kernel_size, padding=pad))
        elif isinstance(layer, L.MaxPool):
            if layer.padding != "VALID":
                raise ValueError(f"no PyTorch twin for {layer!r}")
            mods.append(torch.nn.MaxPool2d(layer.window, layer.strides))
        elif isinstance(layer, L.Flatten):
            mods.append(torch.nn.Flatten())
        elif isinstance(layer, L.Activation):
            mods.append({"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh,
                         "sigmoid": torch.nn.Sigmoid, "identity": torch.nn.Identity}[layer.name]())  # fmt: skip
        else:
            raise ValueError(f"no PyTorch twin for {layer!r}")
    return torch.nn.Sequential(*mods)


def load_params(net, layers: Sequence, params, input_shape: Sequence[int]) -> None:
    """Copy our parameters into the PyTorch twin (layouts and flatten order converted)."""
    import torch

    shapes = L.layer_shapes(layers, input_shape)
    flat_from = None  # NHWC shape before the last Flatten
    with torch.no_grad():
        for i, (layer, mod) in enumerate(zip(layers, net, strict=True)):
            p = params.get(L.layer_name(i))
            if isinstance(layer, L.Flatten) and len(shapes[i]) == 4:
                flat_from = shapes[i]
            if isinstance(layer, L.Conv):
                mod.weight.copy_(
                    torch.from_numpy(np.array(p["kernel"]).transpose(3, 2, 0, 1).copy())
                )
                mod.bias.copy_(torch.from_numpy(np.array(p["bias"])))
            elif isinstance(layer, L.Dense):
                w = np.array(p["kernel"])  # [d, f]
                if flat_from is not None:
                    # Our rows are indexed (h, w, c); PyTorch flattens NCHW as (c, h, w).
                    _, h, wd, c = flat_from
                    w = w.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)
                    flat_from = None
                mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                mod.bias.copy_(torch.from_numpy(np.array(p["bias"])))


def to_torch_images(x: np.ndarray):
    import torch

    x = np.asarray(x)
    if x.ndim == 4:  # NHWC -> NCHW
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def torch_epoch(net, opt, x, y, batches: np.ndarray, loss_fn) -> None:
    for idx in batches:
        ib = torch_index(idx)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x[ib]), y[ib])
        loss.backward()
        opt.step()


def torch_index(idx):
    import torch

    return torch.from_numpy(np.asarray(idx, np.int64))


def pick_torch_threads(block) -> int:
    """Sets and returns PyTorch's faster intra-op thread count for ``block`` (1 or all cores).

    On a shared machine OpenMP's spinning threads can make two threads many times slower
    than one; the anchor gets whichever is faster here, measured on two runs of ``block``.
    """
    import torch

    counts = sorted({1, max(torch.get_num_threads(), 1), len(os.sched_getaffinity(0))})
    best, best_t = counts[0], float("inf")
    for count in counts:
        torch.set_num_threads(count)
        block()  # warm-up at this count
        start = time.perf_counter()
        block()
        elapsed = time.perf_counter() - start
        if elapsed < best_t:
            best, best_t = count, elapsed
    torch.set_num_threads(best)
    return best


# ----------------------------------------------------------------------------- image nets


def median_blocks(fns, repeats: int) -> list[float]:
    """Median seconds of each function over ``repeats`` alternating blocks."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def bench_image(case: str, run: Config) -> dict:
    import torch
    import torch.nn.functional as F

    layers = image_layers(case)
    shape = (1, 784) if case == "mlp" else (1, 28, 28, 1)
    n = run.batch * run.steps
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape[1:]), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    task = tasks.layer_task(layers, shape, loss="softmax_cross_entropy", metrics=False)
    cfg = loop.TrainConfig(
        epochs=1, batch_size=run.batch, optimizer="sgd", eval_train=False,
        monitor="train_batch_loss", drop_remainder=True,
    )  # fmt: skip
    hp = loop.Hyper(learning_rate=LR, momentum=0.0)
    data = loop.Data(jnp.asarray(x), jnp.asarray(y))
    key = jax.random.key(1)
    k_init, k_data, _ = loop.split_keys(key)
    params0, _ = jax.jit(task.init)(k_init)
    batches = np.asarray(epoch_batches(jax.random.fold_in(k_data, 0), n, run.batch).indices)

    net = torch_model(layers, shape)
    xt, yt = to_torch_images(x), torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.SGD(net.parameters(), lr=LR)

    def ours():
        return jax.block_until_ready(loop.train(task, cfg, data, hp, key=key))

    def anchor():
        load_params(net, layers, params0, shape)
        torch_epoch(net, opt, xt, yt, batches, F.cross_entropy)

    start = time.perf_counter()
    res = ours()
    first = time.perf_counter() - start
    threads = pick_torch_threads(anchor)
    anchor()  # the agreement run: same start, same batches
    b0 = batches[0]
    with torch.no_grad():
        torch_loss = float(F.cross_entropy(net(xt[torch_index(b0)]), yt[torch_index(b0)]))
    ours_loss = float(
        jnp.mean(task.per_example_loss(task.apply(res.params, {}, data.x_train[b0], train=False,
                                                  rng=None, hparams=hp)[0], data.y_train[b0]))
    )  # fmt: skip
    initial_loss = float(
        jnp.mean(task.per_example_loss(task.apply(params0, {}, data.x_train[b0], train=False,
                                                  rng=None, hparams=hp)[0], data.y_train[b0]))
    )  # fmt: skip
    ours_s, anchor_s = median_blocks([ours, anchor], run.repeats)
    return {
        "case": f"{CASE_NAMES[case]}, batch {run.batch}, SGD, {run.steps} steps "
        f"(engine strategy: {res.strategy})",
        "ours_s": ours_s,
        "anchor": f"{ANCHOR}, {threads} thread(s)",
        "anchor_s": anchor_s,
        "ratio": anchor_s / ours_s,
        "compile_s": max(first - ours_s, 0.0),
        "agreement": abs(ours_loss - torch_loss),
        "strategy": res.strategy,
        "anchor_threads": threads,
        "samples_per_s": n / ours_s,
        "anchor_samples_per_s": n / anchor_s,
        "loss_before": initial_loss,
        "loss_after": ours_loss,
    }


# ----------------------------------------------------------------------------- Playground


def playground_setup(run: Config):
    layers = (L.Dense(8), L.Activation("tanh"), L.Dense(8), L.Activation("tanh"), L.Dense(1),
              L.Activation("tanh"))  # fmt: skip
    task = tasks.layer_task(layers, (1, 2), loss="mean_squared_error", metrics=False, bias_init=0.1)
    x, y = jax.jit(toy.playground, static_argnums=(0, 2))(
        "circle", jax.random.key(5), run.playground_points
    )
    data = loop.Data(x, y.reshape(-1, 1))
    cfg = loop.TrainConfig(
        epochs=run.playground_epochs, batch_size=10, optimizer="sgd",
        monitor="train_loss", eval_train=True, drop_remainder=True,
    )  # fmt: skip
    seeds = run.playground_nets // (len(PLAYGROUND_LRS) * len(PLAYGROUND_L2))
    members = sweep.grid_members(
        seeds, {"learning_rate": PLAYGROUND_LRS, "l2": PLAYGROUND_L2},
        base=loop.Hyper(momentum=0.0),
    )  # fmt: skip
    return layers, task, data, cfg, members


def torch_playground_setup(layers, task, data, cfg, member, root):
    """Our initial weights and every epoch's batch order for one member (host arrays)."""
    key = jax.random.fold_in(root, member.seed)
    k_init, k_data, _ = loop.split_keys(key)
    params0, _ = jax.jit(task.init)(k_init)
    n = int(data.x_train.shape[0])
    order = jax.jit(
        jax.vmap(lambda e: loop.epoch_order(cfg, k_data, e, n).indices)
    )(jnp.arange(cfg.epochs))  # fmt: skip
    return jax.device_get(params0), np.asarray(order)


def torch_playground_run(layers, data, member, params0, order):
    """One member trained by PyTorch from our initial weights and batches; final train loss."""
    import torch

    net = torch_model(layers, (1, 2))
    load_params(net, layers, params0, (1, 2))
    x = torch.from_numpy(np.array(data.x_train))
    y = torch.from_numpy(np.array(data.y_train))
    lr, l2 = float(member.hyper.learning_rate), float(member.hyper.l2)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    kernels = [m.weight for m in net if isinstance(m, torch.nn.Linear)]

    def loss_fn(z, t):
        loss = 0.5 * ((z - t) ** 2).sum(1).mean()
        if l2:
            loss = loss + 0.5 * l2 * sum((w**2).sum() for w in kernels)
        return loss

    loss = float("nan")
    for epoch_order in order:
        torch_epoch(net, opt, x, y, epoch_order, loss_fn)
        with torch.no_grad():  # the per-epoch training loss, as the engine records it
            loss = float(0.5 * ((net(x) - y) ** 2).sum(1).mean())
    return loss


def sweep_compile_seconds(task, cfg, data, members, root) -> float:
    """Seconds to lower and compile the sweep's vmapped program (ahead of time, run apart).

    The run is too long for "first call − later call" to resolve a few seconds of compile
    time, so the program ``sweep`` runs (``sweep.compiled_members``: jit(vmap(make_train))) is compiled
    explicitly at the same argument shapes.
    """
    fn = sweep.compiled_members(task, cfg, False)
    args = (
        loop.as_data(data),
        jnp.zeros((len(members),), jnp.int32),
        sweep.stack_hyper(members),
        jnp.asarray([m.seed for m in members], jnp.uint32),
        root,
    )
    start = time.perf_counter()
    fn.lower(*args).compile()
    return time.perf_counter() - start


def bench_playground(run: Config) -> dict:
    layers, task, data, cfg, members = playground_setup(run)
    root = jax.random.key(0)
    m = len(members)
    subset = [members[i] for i in np.linspace(0, m - 1, run.playground_torch).round().astype(int)]
    prepared = [torch_playground_setup(layers, task, data, cfg, mb, root) for mb in subset]
    holder = {}

    def ours():
        holder["res"] = sweep.sweep(task, cfg, data, members, key=root, devices=None)

    def anchor():
        holder["torch"] = [
            torch_playground_run(layers, data, mb, p0, order)
            for mb, (p0, order) in zip(subset, prepared, strict=True)
        ]

    compile_s = sweep_compile_seconds(task, cfg, data, members, root)
    ours()  # warm-up (compiles again through the jit cache)
    threads = pick_torch_threads(
        lambda: torch_playground_run(layers, data, subset[0], prepared[0][0], prepared[0][1][:1])
    )
    res = holder["res"]
    ours_s, anchor_sub_s = median_blocks([ours, anchor], run.playground_repeats)
    anchor_s = anchor_sub_s * m / len(subset)
    idx = [members.index(mb) for mb in subset]
    agreement = max(
        abs(float(res.history["train_loss"][i, -1]) - t)
        for i, t in zip(idx, holder["torch"], strict=True)
    )
    return {
        "case": f"{m} Playground nets 2-8-8-1 tanh, {run.playground_points} points, "
        f"{run.playground_epochs} epochs, batch 10 (sweep strategy: {res.strategy}); PyTorch: "
        f"{len(subset)} of {m} configs timed sequentially, scaled ×{m / len(subset):g}",
        "ours_s": ours_s,
        "anchor": f"{ANCHOR}, {threads} thread(s), sequential",
        "anchor_s": anchor_s,
        "ratio": anchor_s / ours_s,
        "compile_s": compile_s,
        "agreement": agreement,
        "strategy": res.strategy,
        "anchor_threads": threads,
        "anchor_subset_s": anchor_sub_s,
        "anchor_subset": len(subset),
        "diverged": int(res.diverged.sum()),
    }


# ----------------------------------------------------------------------------- main


def format_table(rows: Sequence[dict]) -> str:
    header = ["case", "ours s", "anchor", "anchor s", "ratio (anchor / ours)", "compile s",
              "agreement"]  # fmt: skip
    body = [
        [
            r["case"],
            f"{r['ours_s']:.3f}",
            r["anchor"],
            f"{r['anchor_s']:.3f}",
            f"{r['ratio']:.2f}",
            f"{r['compile_s']:.2f}",
            f"{r['agreement']:.1e}",
        ]
        for r in rows
    ]
    return "\n".join(markdown_table(header, body, align="lrlrrrr"))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_or_none(Config, argv, "train", __doc__)
    if config is None:
        return 2
    run = config.effective()
    import torch

    rows = []
    for case in run.cases:
        rows.append(bench_playground(run) if case == "playground" else bench_image(case, run))
    print(format_table(rows))
    print(
        f"(ratio = PyTorch time / our time = our samples/s ÷ PyTorch's; agreement = |loss "
        f"difference| from the same initial weights and batches. JAX device: "
        f"{jax.devices()[0]}; PyTorch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    write_rows(rows, config.out, "train")
    return 0


if __name__ == "__main__":
    tune_for_command_line()  # malloc settings for XLA's per-call buffers (mljax.malloc_tuning)
    raise SystemExit(main())
