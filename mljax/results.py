"""Run directories and atomic result files.

Every file a run produces is written atomically: the bytes go to a temporary file in the
same directory, which is flushed, fsync'ed and then renamed over the destination. A rename
within one file system is atomic on POSIX, so a reader (or a run interrupted by Ctrl-C or a
crash) sees either the previous complete file or the new complete file, never a mixture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "REPORT_FILE",
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "current_umask",
    "fingerprint_digest",
    "load_stage",
    "read_json",
    "save_stage",
    "stage_stem",
    "to_jsonable",
]


CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        path: destination file; its parent directory is created if missing.
        data: the complete new contents.

    Returns:
        The destination as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; a results file gets the mode any new file would (0644 under
        # the usual umask 022).
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # KeyboardInterrupt included: the old file stays, the partial temporary goes.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)
    return path


def current_umask() -> int:
    """The process's file-creation mask, read without changing it where Linux allows
    (``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Makes the rename itself durable (best effort; not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Converts configs, JAX/NumPy arrays and scalars into plain JSON values.

    Non-finite floats become ``None`` (JSON has no NaN); dataclasses become dicts;
    arrays become (nested) lists.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        arr = np.asarray(value)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    if isinstance(value, (np.generic,)):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _json_text(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=2, sort_keys=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    """Writes ``value`` (see :func:`to_jsonable`) as indented JSON, atomically."""
    return atomic_write_text(path, _json_text(value))


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file, raising ``ValueError`` that names the file if it is malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The output directory of one experiment run.

    Layout: ``config.json``, ``metrics.json``, ``report.md`` and PNG figures, all written
    atomically. With ``writes=False`` (processes other than 0 of a multi-process run) every
    ``write_*`` method writes nothing and returns the path it would have written.
    """

    path: Path
    writes: bool = True

    @classmethod
    def create(cls, path: str | os.PathLike, *, writes: bool = True) -> RunDir:
        """The run directory at ``path``, created (with its parents) when ``writes``."""
        p = Path(path)
        if not writes:
            return cls(p, writes=False)
        if p.exists() and not p.is_dir():
            raise ValueError(f"output directory {p} exists and is not a directory")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a path component is a file, permission denied, read-only fs
            raise ValueError(f"cannot create output directory {p}: {e.strerror or e}") from e
        return cls(p)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Writes ``data`` to the file ``name`` of the run directory, atomically."""
        if not self.writes:
            return self.file(name)
        return atomic_write_bytes(self.file(name), data)

    def write_text(self, name: str, text: str) -> Path:
        """Writes UTF-8 ``text`` to the file ``name`` of the run directory, atomically."""
        return self.write_bytes(name, text.encode("utf-8"))

    def write_figure(self, fig: Any, name: str) -> Path:
        """Saves a matplotlib figure as the PNG ``name`` (:func:`mljax.plots.save_figure`)
        and closes it (also when nothing is written)."""
        from mljax import plots

        if not self.writes:
            plots.plt.close(fig)
            return self.file(name)
        return plots.save_figure(fig, self.file(name))

    def write_config(self, config: Any) -> Path:
        return self.write_text(CONFIG_FILE, _json_text(config))

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        return self.write_text(METRICS_FILE, _json_text(metrics))

    def write_report(self, text: str) -> Path:
        return self.write_text(REPORT_FILE, text)

    def read_metrics(self) -> Any:
        return read_json(self.file(METRICS_FILE))


# ----------------------------------------------------------------------------- stage files


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the fingerprint's sorted JSON: equal settings, equal
    digest."""
    text = json.dumps(to_jsonable(fingerprint), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stage_stem(stage_dir: str | os.PathLike, name: str, fingerprint: Mapping[str, Any]) -> Path:
    """``stage_dir/<name>_<digest>``: where the stage of these settings is kept (add the
    ``.npz`` / ``.json`` suffix)."""
    return Path(stage_dir) / f"{name}_{fingerprint_digest(fingerprint)}"


def save_stage(
    stage_dir: str | os.PathLike,
    name: str,
    fingerprint: Mapping[str, Any],
    arrays: Mapping[str, Any],
    info: Mapping[str, Any],
) -> Path:
    """Keeps a finished stage of a long run (one model's sweep, say) so that a rerun with the
    same settings reuses it: the arrays as ``<stem>.npz``, then ``<stem>.json`` holding the
    fingerprint and ``info``. Both are written atomically and the JSON last, so its presence
    marks a complete stage. Returns the stem."""
    stem = stage_stem(stage_dir, name, fingerprint)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(stem.with_suffix(".npz"), buffer.getvalue())
    atomic_write_json(stem.with_suffix(".json"), {"fingerprint": fingerprint, **info})
    return stem


def load_stage(
    stage_dir: str | os.PathLike, name: str, fingerprint: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The ``(arrays, info)`` that :func:`save_stage` kept for exactly these settings, or None
    (never saved, half-written, or saved for other settings)."""
    stem = stage_stem(stage_dir, name, fingerprint)
    npz, meta = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if not (npz.exists() and meta.exists()):
        return None
    info = read_json(meta)
    if info.get("fingerprint") != to_jsonable(fingerprint):
        return None
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    return arrays, {k: v for k, v in info.items() if k != "fingerprint"}
