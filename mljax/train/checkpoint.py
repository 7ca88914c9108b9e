"""Checkpoints of the Python training loop: save every N steps and on Ctrl-C, resume exactly.

A checkpoint is the loop's whole state (:class:`mljax.train.loop.LoopState`: parameters,
model state, optimiser state, step, early-stopping bests, history, position in the epoch)
as a flax state dict serialised with msgpack, written atomically (temporary file, fsync,
rename: :func:`mljax.results.atomic_write_bytes`), so a crash or a kill leaves either the
previous or the new checkpoint, never a torn file.

Resuming is bit-for-bit: every random draw is a function of the root key and the epoch /
step number (``loop`` module docstring), so restoring the state at step t and running the
remaining steps gives the same final parameters as an uninterrupted run.

Restoring checks the file against the model before anything is loaded: the flattened
paths, shapes and dtypes must equal the template's; otherwise a ``ValueError`` names the
differences (a checkpoint of another model, optimiser or run length).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from mljax.results import atomic_write_bytes

FORMAT_VERSION = 1


def _flat(state_dict: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    if isinstance(state_dict, dict):
        for k, v in state_dict.items():
            out.update(_flat(v, f"{prefix}/{k}"))
    else:
        out[prefix or "/"] = state_dict
    return out


def _describe(leaf) -> tuple:
    arr = np.asarray(leaf)
    return (tuple(arr.shape), str(arr.dtype))


def to_bytes(tree: Any) -> bytes:
    """msgpack bytes of a pytree's flax state dict (with a format tag)."""
    state = serialization.to_state_dict(jax.device_get(tree))
    return serialization.msgpack_serialize({"format": FORMAT_VERSION, "state": state})


def from_bytes(template: Any, data: bytes, *, source: str = "checkpoint") -> Any:
    """Restores ``data`` into the structure of ``template``.

    Raises:
        ValueError: unreadable bytes, another format, or paths / shapes / dtypes differing
            from the template's.
    """
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several types for corrupt input
        raise ValueError(f"{source}: not a readable checkpoint ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION or "state" not in raw:
        raise ValueError(f"{source}: not an mljax checkpoint (format {FORMAT_VERSION} expected)")
    want = {k: _describe(v) for k, v in _flat(serialization.to_state_dict(template)).items()}
    got = {k: _describe(v) for k, v in _flat(raw["state"]).items()}
    if want != got:
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
    return serialization.from_state_dict(template, raw["state"])


def save(path: str | os.PathLike, tree: Any) -> Path:
    """Writes ``tree`` atomically to ``path``."""
    return atomic_write_bytes(path, to_bytes(tree))


def restore(path: str | os.PathLike, template: Any) -> Any:
    """Reads ``path`` into the structure of ``template`` (see :func:`from_bytes`)."""
    path = Path(path)
    return from_bytes(template, path.read_bytes(), source=str(path))


class Checkpointer:
    """Saves the loop state every ``every`` steps, at epoch ends if asked, at the end and on
    Ctrl-C; restores it when the file exists.

    Args:
        path: checkpoint file.
        every: steps between saves (0: only at the end / on interrupt / at epoch ends).
        at_epoch_end: also save after every epoch.
    """

    def __init__(self, path: str | os.PathLike, every: int = 0, *, at_epoch_end: bool = False):
        if not isinstance(every, int) or every < 0:
            raise ValueError(f"every must be an int >= 0, got {every!r}")
        self.path = Path(path)
        self.every = every
        self.at_epoch_end = at_epoch_end
        self.saves = 0
        self.restored_step: int | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def restore_or(self, template: Any) -> Any:
        """The saved state if the file exists (validated against ``template``), else it."""
        if not self.path.exists():
            return template
        state = restore(self.path, template)
        self.restored_step = int(state.train.step) if hasattr(state, "train") else None
        return state

    def save(self, state: Any) -> None:
        save(self.path, state)
        self.saves += 1

    def maybe_save(self, state: Any, step: int, *, epoch_end: bool = False) -> None:
        if (epoch_end and self.at_epoch_end) or (
            not epoch_end and self.every and step % self.every == 0
        ):
            self.save(state)
