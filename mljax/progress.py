"""Progress bars for loops a person waits for (training steps, sweep chunks, experiment stages).

One place decides when a bar shows: never with ``quiet=True``, never when ``CI=true``, never
when stderr is not a terminal (logs and captured output stay clean), and never on a process
other than 0 of a multi-process run (:func:`mljax.distributed.is_main_process`). The library's
training loops and the experiments both use :func:`progress`; nothing here depends on the
experiment harness.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["progress", "progress_enabled"]


def progress_enabled(quiet: bool = False) -> bool:
    """Whether a bar would show: not ``quiet``, not in CI (``CI=true``), stderr a terminal,
    process 0 (or the only process)."""
    from mljax.distributed import is_main_process

    return (
        not quiet and os.environ.get("CI") != "true" and sys.stderr.isatty() and is_main_process()
    )


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    quiet: bool = False,
    **kwargs: Any,
):
    """A tqdm bar (``leave=False``) over ``iterable`` or counting to ``total``.

    Args:
        iterable: what to iterate over (None: update the bar by hand with ``bar.update(n)``).
        total: number of items (default ``len(iterable)`` where it has one).
        desc: label shown before the bar.
        quiet: hide it (it is also hidden when :func:`progress_enabled` says so).
        **kwargs: passed to ``tqdm`` (e.g. ``initial`` for a resumed loop).

    Returns:
        A ``tqdm`` object: iterate it, or call ``update`` / ``close``; when hidden it still
        iterates and counts, and prints nothing.
    """
    from tqdm.auto import tqdm

    disable = not progress_enabled(quiet)
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, **kwargs)
