"""Checkpoints of the Python training loop in orbax-checkpoint's format: save every N steps,
at epoch ends and on Ctrl-C; resume exactly.

A checkpoint is the loop's whole state (:class:`mljax.train.loop.LoopState`: parameters,
model state, optimiser state, step, early-stopping bests (the best epoch's parameters),
history, position in the epoch) written by ``orbax.checkpoint`` as a directory that any JAX
user can open (``ocp.StandardCheckpointer().restore(path)``). Orbax writes into a temporary
directory and renames it when complete, so a crash or a kill (SIGKILL included) leaves
either the previous or the new checkpoint, never a half-written one; it also saves sharded
arrays and coordinates several hosts. Saves here are synchronous: the training loop
continues only once the checkpoint is on disk, and no background thread competes with the
next steps.

:class:`Checkpointer` keeps numbered saves ``DIR/0``, ``DIR/1``, ... through an
``ocp.CheckpointManager`` that keeps the latest only (the previous one is deleted after the
new one is committed). :func:`save` / :func:`restore` write and read one pytree directory.

Resuming is bit-for-bit: every random draw is a function of the root key and the epoch /
step number (``loop`` module docstring), so restoring the state at step t and running the
remaining steps gives the same final parameters as an uninterrupted run.

Restoring checks the checkpoint against the model before anything is loaded: the flattened
paths, shapes and dtypes must equal the template's; otherwise a ``ValueError`` names the
differences (a checkpoint of another model, optimiser or run length).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mljax.validation import check_int

__all__ = ["Checkpointer", "check_matches", "restore", "save"]


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _specs(tree: Any) -> dict[str, tuple]:
    """``{"a/b/0": (shape, dtype)}`` of a pytree's leaves (arrays, scalars or orbax metadata)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(_key_name(k) for k in path) or "/"
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            out[name] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
        else:
            arr = np.asarray(leaf)
            out[name] = (tuple(arr.shape), str(arr.dtype))
    return out


def check_matches(metadata: Any, template: Any, *, source: str = "checkpoint") -> None:
    """Raises ``ValueError`` naming every difference between a checkpoint's tree metadata
    (orbax ``TreeMetadata.tree``) and ``template``: missing or unexpected leaves, and leaves
    whose shape or dtype differs (the first five of each)."""
    want, got = _specs(template), _specs(metadata)
    if want == got:
        return
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    parts = []
    if missing:
        parts.append(f"missing {missing[:5]}")
    if extra:
        parts.append(f"unexpected {extra[:5]}")
    if differ:
        parts.append(
            "shape/dtype differs at "
            + ", ".join(f"{k}: file {got[k]} vs model {want[k]}" for k in differ[:5])
        )
    raise ValueError(
        f"{source} does not match this model/run: "
        + "; ".join(parts)
        + " (was it written by another model, optimiser or epoch count?)"
    )


def _abstract(template: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, template)


def _read_metadata(read: Callable[[], Any], source: str) -> Any:
    """The tree of array metadata inside what orbax's ``read()`` returns (``metadata`` /
    ``item_metadata``); ``ValueError`` when it cannot be read."""
    try:
        metadata = read()
    except Exception as e:  # orbax raises several types for missing / corrupt files
        raise ValueError(f"{source}: not a readable checkpoint ({e})") from e
    metadata = getattr(metadata, "item_metadata", metadata)
    tree = getattr(metadata, "tree", None)
    if tree is None:
        raise ValueError(f"{source}: not a readable checkpoint (no tree metadata)")
    return tree


def save(path: str | os.PathLike, tree: Any) -> Path:
    """Writes ``tree`` to the directory ``path`` (replacing it), atomically and synchronously.

    Returns:
        The absolute path written.
    """
    path = Path(path).absolute()
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        ckptr.save(path, args=ocp.args.StandardSave(tree), force=True)
    return path


def restore(path: str | os.PathLike, template: Any) -> Any:
    """Reads the checkpoint directory ``path`` into the structure of ``template``.

    Raises:
        ValueError: not a readable checkpoint, or paths / shapes / dtypes differing from the
            template's (:func:`check_matches`).
    """
    path = Path(path).absolute()
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        metadata = _read_metadata(lambda: ckptr.metadata(path), str(path))
        check_matches(metadata, template, source=str(path))
        return ckptr.restore(path, args=ocp.args.StandardRestore(_abstract(template)))


class Checkpointer:
    """Saves the loop state every ``every`` steps, at epoch ends if asked, at the end and on
    Ctrl-C; restores the latest save when there is one.

    Args:
        directory: checkpoint directory (created on the first save); numbered saves inside.
        every: steps between saves (0: only at the end / on interrupt / at epoch ends).
        at_epoch_end: also save after every epoch.

    Attributes:
        saves: saves made by this object; restored_step: the training step restored by
            :meth:`restore_or` (None if it started fresh).
    """

    def __init__(self, directory: str | os.PathLike, every: int = 0, *, at_epoch_end: bool = False):
        self.every = check_int(every, "every", minimum=0)
        self.path = Path(directory).absolute()
        self.at_epoch_end = bool(at_epoch_end)
        self.saves = 0
        self.restored_step: int | None = None
        self._manager: ocp.CheckpointManager | None = None

    def _open(self) -> ocp.CheckpointManager:
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=1,
                create=True,
                enable_async_checkpointing=False,  # the loop waits: no thread races the steps
                cleanup_tmp_directories=True,  # drops what a killed save left behind
            )
            self._manager = ocp.CheckpointManager(
                self.path, options=options, item_handlers=ocp.StandardCheckpointHandler()
            )
        return self._manager

    def latest(self) -> int | None:
        """Number of the latest complete save, or None."""
        if not self.path.is_dir():
            return None
        return self._open().latest_step()

    def exists(self) -> bool:
        return self.latest() is not None

    def restore_or(self, template: Any) -> Any:
        """The latest saved state (validated against ``template``), else ``template``.

        Raises:
            ValueError: the saved state does not match ``template`` (:func:`check_matches`).
        """
        number = self.latest()
        if number is None:
            return template
        manager = self._open()
        source = str(self.path / str(number))
        metadata = _read_metadata(lambda: manager.item_metadata(number), source)
        check_matches(metadata, template, source=source)
        state = manager.restore(number, args=ocp.args.StandardRestore(_abstract(template)))
        self.restored_step = int(state.train.step) if hasattr(state, "train") else None
        return state

    def save(self, state: Any) -> None:
        """Writes ``state`` as the next numbered save and waits until it is committed."""
        number = self.latest()
        manager = self._open()
        manager.save(0 if number is None else number + 1, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        self.saves += 1

    def maybe_save(self, state: Any, step: int, *, epoch_end: bool = False) -> None:
        """Saves at epoch ends (``at_epoch_end``) and when ``step`` is a multiple of ``every``."""
        if (epoch_end and self.at_epoch_end) or (
            not epoch_end and self.every and step % self.every == 0
        ):
            self.save(state)

    def close(self) -> None:
        """Releases orbax's resources (a later save reopens them)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None
