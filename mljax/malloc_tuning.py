"""glibc ``malloc`` settings that keep XLA:CPU's per-call buffers from page-faulting.

XLA on CPU allocates each executable's temporary buffers with ``malloc`` at every call, often
from its worker threads. With glibc's defaults those buffers go back to the kernel when freed
and are page-faulted in again (zero-filled, 4 KiB at a time) at the next call:

* a buffer above the (dynamic, at most 32 MiB) mmap threshold is ``mmap``-ed and unmapped on
  ``free``; free memory at the top of the main heap above the trim threshold is trimmed;
* a worker thread's arena lives in 64 MiB heaps, and a heap that becomes empty is unmapped
  unless the top pad is at least a heap's size; a buffer that does not fit in one heap (the
  conv32/64 training step's 120 MiB of temporaries) is always ``mmap``-ed.

Two layers of settings. Measured on our 2-core machine (glibc 2.36, jax 0.10.2), jitted SGD
step at batch 200, best of 4×10 steps in each of three processes: ms per step, and minor page
faults per step.

=====================================  =====================  =======================
settings                               seed-004 CNN (d)       conv32-pool-conv64
=====================================  =====================  =======================
glibc defaults                         36-44                  (not timed)
``tune_malloc`` (in-process)           20-26; 0.8-3.4 k       147-166; 31 k
+ ``GLIBC_TUNABLES`` (huge pages)      16-21; < 0.01 k        111-115; 0.2-0.3 k
=====================================  =====================  =======================

1. :func:`tune_malloc` uses ``mallopt``: mmap threshold
   256 MiB, trim threshold 1 GiB, top pad 64 MiB (so empty worker heaps are kept). It cannot
   reach a buffer that only fits in an ``mmap`` of its own.
2. :func:`reexec_with_tuned_malloc` re-executes the command once with
   ``GLIBC_TUNABLES`` = :data:`GLIBC_TUNABLES_VALUE`: the same settings plus
   ``glibc.malloc.hugetlb=1``, with which glibc asks for transparent huge pages on its mmaps and
   heap, so even a buffer mapped afresh at every call faults in 2 MiB at a time. glibc reads
   tunables only at process start, hence the re-execution; it costs one more interpreter start
   and ``import jax`` (about 1.5 s). In your own scripts, export that ``GLIBC_TUNABLES`` before
   starting Python. (``MALLOC_ARENA_MAX=1`` also removed the faults but made CNN (d) slower,
   22-29 ms: the worker threads queue on the one arena's lock.)

``import mljax`` changes neither: a library must not change process-wide allocator settings.
The ``python -m experiments.*`` and ``python -m benchmarks.*`` entry points call
:func:`tune_for_command_line` (both layers). In your own program, opt in with one line at
its start, ``mljax.malloc_tuning.tune_malloc()`` (in-process settings only), or export
:data:`GLIBC_TUNABLES_VALUE` as ``GLIBC_TUNABLES`` before starting Python (both layers).

The cost: up to 1 GiB of freed memory may stay in the process for reuse instead of going back
to the kernel, and huge pages round mappings up to 2 MiB. ``MLJAX_MALLOC_TUNING=0`` keeps
glibc's defaults and stops the re-execution. An explicit ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES`` in
the environment is respected: nothing is changed, nothing re-executed. Not glibc (macOS, musl):
nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = [
    "GLIBC_TUNABLES_VALUE",
    "REEXEC_MARK",
    "command_line_environment",
    "reexec_with_tuned_malloc",
    "tune_for_command_line",
    "tune_malloc",
]


M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20  # glibc's per-thread heap size: an empty worker heap is kept
GLIBC_TUNABLES_VALUE = (
    f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
    f":glibc.malloc.top_pad={TOP_PAD}:glibc.malloc.hugetlb=1"
)
"""The ``GLIBC_TUNABLES`` that :func:`reexec_with_tuned_malloc` starts a process with."""
_USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
)
REEXEC_MARK = "MLJAX_MALLOC_REEXEC"
"""Set in a process started by :func:`reexec_with_tuned_malloc` (it never re-executes twice)."""

applied: bool = False
"""Whether the tuning is in effect in this process: :func:`tune_malloc`'s ``mallopt`` calls
succeeded, or the process was started with :data:`GLIBC_TUNABLES_VALUE`."""


def _opted_out() -> bool:
    value = os.environ.get("MLJAX_MALLOC_TUNING", "1").strip().lower()
    return value in ("0", "false", "no", "off")


def _left_to_user() -> bool:
    """Opted out (``MLJAX_MALLOC_TUNING=0``), or malloc settings already in the environment."""
    return _opted_out() or any(name in os.environ for name in _USER_SETTINGS)


def _glibc():
    """libc as a ctypes library if this is Linux with glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        _ = libc.gnu_get_libc_version  # glibc only (musl lacks it)
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> bool:
    """Applies the in-process settings once per process; returns whether tuning is in effect."""
    global applied
    if applied:
        return True
    if not _opted_out() and os.environ.get("GLIBC_TUNABLES") == GLIBC_TUNABLES_VALUE:
        applied = True  # started by reexec_with_tuned_malloc (or with the same tunables)
        return True
    if _left_to_user():
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        and mallopt(M_TOP_PAD, TOP_PAD) == 1
    )
    return applied


def tune_for_command_line() -> bool:
    """Both layers, for a command-line entry point (call it first under ``if __name__ ==
    "__main__":``): re-executes with ``GLIBC_TUNABLES`` where it can, else applies the
    in-process settings; returns whether tuning is in effect."""
    reexec_with_tuned_malloc()
    return tune_malloc()


def command_line_environment() -> dict[str, str]:
    """The variables a command started from this environment should get for the tuning:
    ``{"GLIBC_TUNABLES": GLIBC_TUNABLES_VALUE}`` on glibc, ``{}`` when opted out, when the
    environment already has malloc settings, or off glibc. ``python -m mljax.malloc_tuning``
    prints them as ``NAME=value`` words for a shell (``env $(python -m mljax.malloc_tuning)
    python ...``; the Makefile's test targets do so)."""
    if _left_to_user() or _glibc() is None:
        return {}
    return {"GLIBC_TUNABLES": GLIBC_TUNABLES_VALUE}


def reexec_with_tuned_malloc() -> None:
    """Re-executes this process's command line with ``GLIBC_TUNABLES`` set (see above).

    For command-line entry points only (call it first thing under ``if __name__ ==
    "__main__":``): it replaces the running process and never returns when it re-executes.
    Does nothing when opted out, when the environment already has malloc settings, when this
    process was already re-executed, off glibc, when the command line is not known, or for
    ``-h`` / ``--help``.
    """
    if os.environ.get(REEXEC_MARK):
        return
    tuned = command_line_environment()
    argv = getattr(sys, "orig_argv", None)
    if not tuned or not argv or not sys.executable:
        return
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        return  # printing the help runs no XLA: not worth a second start
    env = dict(os.environ, **tuned, **{REEXEC_MARK: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(argv), env)


if __name__ == "__main__":
    print(" ".join(f"{name}={value}" for name, value in command_line_environment().items()))
