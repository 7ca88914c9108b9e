"""Sweeps: seeds × numeric hyperparameters (× same-shape datasets) as one compiled program.

A sweep has M members; member m has a seed s_m, a :class:`~mljax.train.loop.Hyper` h_m
(learning rate, momentum, weight decay, L1/L2, dropout rate) and a dataset index d_m. The
numeric values are traced, so

    results = jit(vmap(train_fn))(data, d_m, h_m, s_m, root)     (train_fn = make_member_train)

with ``train_fn`` training ``data[d_m]`` with ``h_m`` from key ``fold_in(root, s_m)``
(:func:`mljax.train.loop.make_train`), is compiled once per (task, config, data shapes) and
reused for every chunk. Settings that change shapes (layer sizes, batch size, dataset shape)
are separate calls of :func:`sweep`, looped outside; a bounded LRU cache
(:func:`compiled_members`, :data:`mljax.train.loop.COMPILED_CACHE_SIZE` entries) reuses the
compiled program when the same (task, config) comes back.

Divergence isolation: vmap keeps members independent (no reduction crosses the member
axis), and a member whose loss becomes NaN/inf or explodes while finite (above
``TrainConfig.divergence_factor`` times its own first step loss) is frozen and flagged by the
step itself (``loop.make_step``), so every other member computes exactly what it would alone.

Chunking: members go through in chunks of ``chunk_size`` (the last chunk is padded with
copies of its first member, which are dropped), so memory is bounded by the chunk.

Device sharding: the member axis of each chunk is laid out over a ``Mesh`` of all devices
with one axis named ``"sweep"`` (``NamedSharding(mesh, P("sweep"))``), the data replicated;
XLA's SPMD partitioner then runs each device's share of members. The same code runs on
several GPUs/TPUs, and across processes (hosts) after ``jax.distributed.initialize()``
(:func:`mljax.distributed.start`): then ``jax.devices()`` lists every process's devices, every
process calls :func:`sweep` with the same arguments, builds only its addressable shards
(``jax.make_array_from_callback``: its own members, its copy of the data) and, once the
chunk has run, the members' results are all-gathered so that every process returns the
full table. Chunks are rounded up to a multiple of the device count.

Strategy: for matmul-only models, "vmap" (one program). For convolutional models on CPU,
vmapping parameters ran 4.8× slower per model than one model and convolutions inside
``scan`` ran 11× slower, so "auto" picks "sequential": each member trained by the Python
loop over a jitted step, compiled once and reused (``SweepResult.strategy`` says which).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mljax.progress import progress
from mljax.train import loop
from mljax.train.loop import HYPER_FIELDS, HYPER_RANGES, Data, Hyper, Task, TrainConfig
from mljax.validation import check_chunk_size, check_int, check_scalar

__all__ = [
    "MAX_SEED",
    "MESH_AXIS",
    "SWEEP_STRATEGIES",
    "GroupStats",
    "Member",
    "SweepResult",
    "compiled_members",
    "grid_members",
    "group_stats",
    "make_member_train",
    "pick_sweep_strategy",
    "stack_hyper",
    "sweep",
]

SWEEP_STRATEGIES = ("auto", "vmap", "sequential")
MAX_SEED = 2**32 - 1  # seeds are folded into the root key as uint32
MESH_AXIS = "sweep"


class Member(NamedTuple):
    """One sweep member: seed, dataset index and hyperparameters (host values)."""

    seed: int
    data_index: int
    hyper: Hyper


class SweepResult(NamedTuple):
    """Stacked results (leading axis = member) plus a tidy table.

    Attributes:
        members: the :class:`Member` list, in order.
        params, best_params: parameter trees with a leading ``[M]`` axis (host arrays).
        best_epoch, best_value, epochs_run, diverged, diverged_step: ``[M]``.
        history: ``{name: [M, epochs]}``.
        rows: one dict per member: seed, dataset, hyperparameters, best epoch / value,
            final history values, diverged.
        strategy: "vmap" or "sequential".
        devices: number of devices the member axis was sharded over.
        best_state: the model state (e.g. BatchNorm running statistics) that goes with
            ``best_params``, leading ``[M]`` axis ({} for stateless models).
    """

    members: list
    params: Any
    best_params: Any
    best_epoch: np.ndarray
    best_value: np.ndarray
    epochs_run: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray
    history: dict
    rows: list
    strategy: str
    devices: int
    best_state: Any = None


def grid_members(
    seeds: int | Sequence[int],
    grid: Mapping[str, Sequence[float]] | None = None,
    *,
    base: Hyper | None = None,
    data_indices: Sequence[int] = (0,),
) -> list[Member]:
    """Members of the full product data × grid × seeds (seeds vary fastest).

    Args:
        seeds: a count (seeds ``0..n-1``) or explicit seed numbers, ints in
            ``[0, MAX_SEED]``.
        grid: ``{hyper field: list of scalar values}``, each in the field's range
            (:data:`mljax.train.loop.HYPER_RANGES`); fields not named keep ``base``'s value.
        base: defaults for the other fields.
        data_indices: dataset indices to cross with the grid.

    Raises:
        ValueError: unknown field, an empty value list, a value that is no finite scalar in
            its field's range (an array, a string, None), no seeds, a seed or data index
            that is no int (bools and fractions refused) or is out of range.
    """
    base = Hyper() if base is None else base
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        seed_list = list(range(check_int(seeds, "seeds", minimum=0, maximum=MAX_SEED + 1)))
    elif isinstance(seeds, Sequence | np.ndarray) and not isinstance(seeds, str):
        seed_list = [check_int(s, "seeds[i]", minimum=0, maximum=MAX_SEED) for s in seeds]
    else:
        raise ValueError(f"seeds must be a count or a list of ints; got {seeds!r}")
    if not seed_list:
        raise ValueError(f"seeds must give at least one seed, got {seeds!r}")
    grid = dict(grid or {})
    bad = [k for k in grid if k not in HYPER_FIELDS]
    if bad:
        raise ValueError(f"unknown hyperparameter(s) {bad}; allowed: {HYPER_FIELDS}")
    for k, v in grid.items():
        if isinstance(v, str) or not isinstance(v, Sequence | np.ndarray) or np.ndim(v) != 1:
            raise ValueError(
                f"grid[{k!r}] must be a list of numbers (one value per grid point); got {v!r}"
            )
        if len(v) == 0:
            raise ValueError(f"grid[{k!r}] is empty; give at least one value")
        for value in v:
            check_scalar(value, f"grid[{k!r}]: {k}", **HYPER_RANGES[k])
    if isinstance(data_indices, str) or not isinstance(data_indices, Sequence | np.ndarray):
        raise ValueError(f"data_indices must be a list of ints; got {data_indices!r}")
    if len(data_indices) == 0:
        raise ValueError("data_indices is empty")
    data_indices = [check_int(d, "data_indices[i]", minimum=0) for d in data_indices]
    names = list(grid)
    members = []
    for d in data_indices:
        for values in itertools.product(*(grid[k] for k in names)):
            hp = base._replace(**{k: float(v) for k, v in zip(names, values, strict=True)})
            for s in seed_list:
                members.append(Member(s, int(d), hp))
    return members


def stack_hyper(members: Sequence[Member]) -> Hyper:
    """The members' hyperparameters as one :class:`Hyper` of float32 ``[M]`` arrays."""
    return Hyper(
        *(jnp.asarray([getattr(m.hyper, f) for m in members], jnp.float32) for f in HYPER_FIELDS)
    )


def _stack_data(datasets: Sequence[Data]) -> Data:
    first = datasets[0]
    for i, d in enumerate(datasets):
        for name, a, b in zip(Data._fields, d, first, strict=True):
            if (a is None) != (b is None) or (a is not None and a.shape != b.shape):
                raise ValueError(
                    f"datasets[{i}].{name} has shape {None if a is None else a.shape}, "
                    f"datasets[0] {None if b is None else b.shape}: datasets of one sweep "
                    "must share shapes (loop over shape-changing datasets outside)"
                )
    # Stacked on the host: an eager jnp.stack would compile a kernel per shape.
    return Data(
        *(
            None if a is None else jnp.asarray(np.stack([np.asarray(d[i]) for d in datasets]))
            for i, a in enumerate(first)
        )
    )


def pick_sweep_strategy(task: Task, strategy: str) -> str:
    """``strategy``, or for "auto": "sequential" for convolutional models, else "vmap"."""
    if strategy not in SWEEP_STRATEGIES:
        raise ValueError(f"strategy must be one of {SWEEP_STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    return "sequential" if task.has_conv else "vmap"


def make_member_train(task: Task, cfg: TrainConfig, *, multi_data: bool = False) -> Callable:
    """One member's run as a pure function (vmap it over the member arguments).

    Returns:
        ``train_member(data, data_index, hp, seed, root) -> TrainResult``: trains
        ``data[data_index]`` (``data`` stacked on a leading axis when ``multi_data``, else
        ``data`` itself) with ``hp`` from key ``fold_in(root, seed)``. :func:`sweep` runs
        ``jit(vmap(train_member, in_axes=(None, 0, 0, 0, None)))``.
    """
    train_fn = loop.make_train(task, cfg)

    def train_member(data, data_index, hp, seed, root):
        if multi_data:
            data = jax.tree.map(lambda a: a[data_index], data)
        return train_fn(data, hp, jax.random.fold_in(root, seed))

    return train_member


@functools.lru_cache(maxsize=loop.COMPILED_CACHE_SIZE)
def compiled_members(task: Task, cfg: TrainConfig, multi_data: bool = False) -> Callable:
    """``jit(vmap(make_member_train(task, cfg)))`` over (data_index, hp, seed), kept in a
    bounded LRU cache: the program :func:`sweep` runs (``.lower(...)`` it to time its
    compilation)."""
    member = make_member_train(task, cfg, multi_data=multi_data)
    return jax.jit(jax.vmap(member, in_axes=(None, 0, 0, 0, None)))


def _check_sweep(task, cfg, datasets, members, data_names) -> tuple[str, ...]:
    """Every check before anything is traced; returns the history keys."""
    if not members:
        raise ValueError("members is empty: the sweep grid has no member")
    if not datasets:
        raise ValueError("data is an empty list")
    if data_names is not None and len(data_names) != len(datasets):
        raise ValueError(f"data_names has {len(data_names)} names for {len(datasets)} datasets")
    for i, m in enumerate(members):
        if not isinstance(m, Member):
            raise ValueError(f"members[{i}] must be a sweep.Member; got {type(m).__name__}")
        check_int(m.seed, f"members[{i}].seed", minimum=0, maximum=MAX_SEED)
        check_int(m.data_index, f"members[{i}].data_index", minimum=0)
        if not 0 <= m.data_index < len(datasets):
            raise ValueError(f"member {m} has data_index outside [0, {len(datasets)})")
        loop.check_hyper(m.hyper)
        loop.check_task_hyper(task, m.hyper)
    for d in datasets:
        loop.check_inputs(task, cfg, d)
    return loop.check_monitor(task, cfg, datasets[0])


def _run_sequential(task, cfg, datasets, members, key, quiet) -> loop.TrainResult:
    """Each member by the Python loop (its jitted step compiled once); stacked host arrays."""
    outs = []
    for m in progress(members, desc="sweep", quiet=quiet):
        m_key = jax.random.fold_in(key, m.seed)
        res = loop.train_python(task, cfg, datasets[m.data_index], m.hyper.as_arrays(), m_key)
        outs.append(jax.device_get(res._replace(strategy=None)))
    return jax.tree.map(lambda *a: np.stack(a), *outs)


def _mesh(devices) -> Mesh | None:
    if devices is None or len(devices) <= 1:
        return None
    return Mesh(np.array(devices), (MESH_AXIS,))


def _put(tree, sharding: NamedSharding):
    """Host values as global arrays laid out by ``sharding``; each process builds only its
    addressable shards (every process holds the same host values: SPMD)."""

    def put(a):
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def _put_key(key, sharding: NamedSharding):
    """A PRNG key (typed or raw ``uint32`` data) replicated by ``sharding``."""
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return _put(key, sharding)
    data = _put(jax.random.key_data(key), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


@functools.lru_cache(maxsize=8)
def _replicator(mesh: Mesh) -> Callable:
    """The identity, jitted to return its inputs replicated on every device of ``mesh``
    (one all-gather program per result structure)."""
    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, P()))


def _to_host(tree, mesh: Mesh | None):
    """Host (NumPy) copies of a result; when its members are spread over several processes
    they are all-gathered first (one program for the whole tree), so every process gets
    every member."""
    leaves = jax.tree.leaves(tree)
    if mesh is not None and any(not a.is_fully_addressable for a in leaves):
        tree = _replicator(mesh)(tree)
    return jax.tree.map(np.asarray, tree)


def _run_vmap(task, cfg, datasets, members, key, size, devices, quiet):
    """Chunks of ``size`` members through one vmapped program, the member axis sharded over
    ``devices`` (those of every process, for ``"all"``); returns (stacked host results,
    device count)."""
    mesh = _mesh(jax.devices() if devices == "all" else devices)
    n_dev = 1 if mesh is None else mesh.size
    size = -(-size // n_dev) * n_dev  # a multiple of the device count
    multi = len(datasets) > 1
    shared = _stack_data(datasets) if multi else datasets[0]
    fn = compiled_members(task, cfg, multi)
    if mesh is not None:
        shared = _put(shared, NamedSharding(mesh, P()))
        key = _put_key(key, NamedSharding(mesh, P()))
    outs = []
    for start in progress(range(0, len(members), size), desc="sweep chunks", quiet=quiet):
        chunk = members[start : start + size]
        padded = chunk + [chunk[0]] * (size - len(chunk))
        args = (
            jnp.asarray([m.data_index for m in padded], jnp.int32),
            stack_hyper(padded),
            jnp.asarray([m.seed for m in padded], jnp.uint32),
        )
        if mesh is not None:
            args = _put(args, NamedSharding(mesh, P(MESH_AXIS)))
        res = _to_host(fn(shared, *args, key), mesh)
        outs.append(jax.tree.map(lambda a, n=len(chunk): a[:n], res))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs), n_dev


def _tidy_rows(members, stacked, monitor, keys_hist, data_names) -> list[dict]:
    rows = []
    for i, m in enumerate(members):
        row = {"member": i, "seed": m.seed, "data": data_names[m.data_index]}
        row.update({f: float(getattr(m.hyper, f)) for f in HYPER_FIELDS})
        row["best_epoch"] = int(stacked.best_epoch[i])
        row[f"best_{monitor}"] = float(stacked.best_value[i])
        row["epochs_run"] = int(stacked.epochs_run[i])
        last = max(int(stacked.epochs_run[i]) - 1, 0)
        for k in keys_hist:
            row[f"final_{k}"] = float(stacked.history[k][i, last])
        row["diverged"] = bool(stacked.diverged[i])
        rows.append(row)
    return rows


def sweep(
    task: Task,
    cfg: TrainConfig,
    data: Data | Sequence[Data],
    members: Sequence[Member],
    *,
    key=None,
    chunk_size: int | None = None,
    devices: Sequence[Any] | str | None = "all",
    strategy: str = "auto",
    data_names: Sequence[str] | None = None,
    quiet: bool = True,
) -> SweepResult:
    """Trains every member; one compiled program per chunk shape.

    Args:
        task: the model (:class:`~mljax.train.loop.Task`).
        cfg: static settings shared by all members.
        data: one :class:`~mljax.train.loop.Data`, or a list of same-shape datasets indexed
            by ``Member.data_index`` (vmapped as traced data).
        members: from :func:`grid_members` (or built by hand).
        key: root key; member m trains with ``fold_in(key, seed_m)``, so equal seeds share
            initialisation and data order across hyperparameters.
        chunk_size: members per compiled call (default: all); rounded up to a multiple of
            the device count.
        devices: ``"all"`` (``jax.devices()``), a list of devices, or None (no sharding).
        strategy: "auto", "vmap" or "sequential" (see the module docstring).
        data_names: names for the tidy table's ``data`` column, one per dataset.
        quiet: hide the progress bar.

    Returns:
        :class:`SweepResult`.

    Raises:
        ValueError: empty member list, bad hyperparameters, seeds or data indices, bad
            sizes, mismatched datasets, inputs the model cannot take or labels outside
            ``[0, n_classes)`` in any dataset (:func:`mljax.train.loop.check_inputs`).
    """
    members = list(members)
    datasets = [loop.as_data(d) for d in ([data] if isinstance(data, Data) else data)]
    keys_hist = _check_sweep(task, cfg, datasets, members, data_names)
    size = min(check_chunk_size(chunk_size, len(members)), len(members))
    picked = pick_sweep_strategy(task, strategy)
    key = jax.random.key(0) if key is None else key
    if picked == "sequential":
        stacked, n_dev = _run_sequential(task, cfg, datasets, members, key, quiet), 1
    else:
        stacked, n_dev = _run_vmap(task, cfg, datasets, members, key, size, devices, quiet)
    names = [str(i) for i in range(len(datasets))] if data_names is None else list(data_names)
    return SweepResult(
        members=members,
        params=stacked.params,
        best_params=stacked.best_params,
        best_epoch=np.asarray(stacked.best_epoch),
        best_value=np.asarray(stacked.best_value),
        epochs_run=np.asarray(stacked.epochs_run),
        diverged=np.asarray(stacked.diverged),
        diverged_step=np.asarray(stacked.diverged_step),
        history={k: np.asarray(v) for k, v in stacked.history.items()},
        rows=_tidy_rows(members, stacked, cfg.monitor, keys_hist, names),
        strategy=picked,
        devices=n_dev,
        best_state=stacked.best_state,
    )


# ----------------------------------------------------------------------------- mean ± std


class GroupStats(NamedTuple):
    """Mean ± std of one metric per group of sweep members (from :func:`group_stats`).

    Attributes:
        by: the grouping columns.
        metric: the metric's name.
        keys: one tuple of ``by`` values per group, in order of first appearance.
        mean, std: ``[G]`` for a scalar metric, ``[G, T]`` for a curve (per epoch); NaN where
            a group has no finite value (std also where ``count <= ddof``).
        count: finite values behind each mean, same shape as ``mean`` (for curves it drops
            where members stopped early or diverged).
        size: members per group ``[G]``.
        members: member (row) indices of each group.
        ddof: the std's delta degrees of freedom.
    """

    by: tuple
    metric: str
    keys: list
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    size: np.ndarray
    members: list
    ddof: int

    def label(self, g: int) -> str:
        """``"name=value, ..."`` of group ``g`` (for legends)."""
        return ", ".join(f"{k}={_fmt(v)}" for k, v in zip(self.by, self.keys[g], strict=True))

    def rows(self) -> list[dict]:
        """One tidy dict per group: the ``by`` columns, ``mean``, ``std``, ``count``, ``size``."""
        out = []
        for g, key in enumerate(self.keys):
            row = dict(zip(self.by, key, strict=True))
            for name in ("mean", "std", "count"):
                v = getattr(self, name)[g]
                row[name] = v.tolist() if np.ndim(v) else v.item()
            row["size"] = int(self.size[g])
            out.append(row)
        return out


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def group_stats(
    result_or_rows: SweepResult | Sequence[Mapping],
    by: str | Sequence[str],
    metric: str,
    *,
    ddof: int = 0,
) -> GroupStats:
    """Mean ± std of ``metric`` over the members sharing the values of the ``by`` columns.

    For every group G (members with equal ``by`` values; e.g. ``by=("learning_rate",)``
    averages over seeds, ``by=("seed",)`` over hyperparameters):

        count = #{m ∈ G : v_m finite},  mean = Σ v_m / count,
        std   = sqrt(Σ (v_m - mean)² / (count - ddof))          (finite v_m only)

    taken elementwise for a curve, so members frozen by divergence or stopped early (NaN
    after their stop) leave the statistics of the later epochs to the others.

    Args:
        result_or_rows: a :class:`SweepResult` (its tidy ``rows``; a metric that names a
            ``history`` key is that per-epoch curve ``[M, epochs]``) or a sequence of row
            dicts (a value that is an array-like is a curve; all must have one length).
        by: column name(s) of the rows (``seed``, ``data``, hyperparameter fields, ...);
            ``()`` puts every member in one group.
        metric: a row column (``final_val_loss``, ``best_epoch``, ...) or a history key.
        ddof: delta degrees of freedom of the std (0: population, as
            :func:`mljax.experiment.summarize`; 1: sample).

    Returns:
        :class:`GroupStats`.

    Raises:
        ValueError: no rows, an unknown column or metric, ``ddof`` < 0, curves of
            different lengths, non-numeric metric values.
    """
    by = (by,) if isinstance(by, str) else tuple(by)
    if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof < 0:
        raise ValueError(f"ddof must be an int >= 0, got {ddof!r}")
    if isinstance(result_or_rows, SweepResult):
        rows = result_or_rows.rows
        history = result_or_rows.history
    else:
        rows = list(result_or_rows)
        history = {}
    if not rows:
        raise ValueError("result_or_rows has no rows: nothing to group")
    columns = set().union(*(r.keys() for r in rows))
    missing = [c for c in by if c not in columns]
    if missing:
        raise ValueError(f"unknown column(s) {missing} in by; columns: {sorted(columns)}")
    if metric in history:
        values = np.asarray(history[metric], dtype=np.float64)
    elif metric in columns:
        try:
            values = np.asarray([r.get(metric, np.nan) for r in rows], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"metric {metric!r} must be numeric (a number or one equal-length curve per row)"
            ) from None
    else:
        allowed = sorted(columns | set(history))
        raise ValueError(f"unknown metric {metric!r}; allowed: {allowed}")
    if values.ndim not in (1, 2):
        raise ValueError(f"metric {metric!r} must be a scalar or a curve per row")

    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(r.get(c) for c in by), []).append(i)
    keys = list(groups)
    shape = (len(keys), *values.shape[1:])
    mean = np.full(shape, np.nan)
    std = np.full(shape, np.nan)
    count = np.zeros(shape, np.int64)
    for g, idx in enumerate(groups.values()):
        v = values[idx]
        ok = np.isfinite(v)
        n = ok.sum(axis=0)
        total = np.where(ok, v, 0.0).sum(axis=0)
        mu = np.divide(total, n, out=np.full(n.shape, np.nan), where=n > 0)
        sq = np.where(ok, np.square(v - mu), 0.0).sum(axis=0)
        dof = n - ddof
        mean[g], count[g] = mu, n
        std[g] = np.sqrt(np.divide(sq, dof, out=np.full(n.shape, np.nan), where=dof > 0))
    return GroupStats(
        by=by,
        metric=metric,
        keys=keys,
        mean=mean,
        std=std,
        count=count,
        size=np.asarray([len(i) for i in groups.values()]),
        members=[np.asarray(i) for i in groups.values()],
        ddof=ddof,
    )
