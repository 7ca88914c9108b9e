"""glibc ``malloc`` settings that keep XLA:CPU's per-call buffers off ``mmap``.

XLA on CPU allocates each executable's temporary buffers with ``malloc`` at every call. With
glibc's defaults a buffer above the (dynamic, at most 32 MiB) mmap threshold is ``mmap``-ed and
returned to the kernel when freed, and free memory at the top of the heap above the trim
threshold is given back too, so every call of a jitted step page-faults its buffers in again.
Measured on our 2-core machine (glibc 2.36, jax 0.10.2), seed-004 CNN (d), batch 200,
``loop.train`` in a Python loop over the jitted step: 36-44 ms per step with glibc's defaults,
1.65 M minor page faults for the run; 28-31 ms per step and 0.8 M faults with the settings
below (an mmap threshold of 32 or 64 MiB was not enough: 31-41 ms).

:func:`tune_malloc` (called once by ``import mljax``) raises the mmap threshold to 256 MiB and
the trim threshold to 1 GiB with ``mallopt``. The cost: up to 1 GiB of freed memory may stay
in the process for reuse instead of going back to the kernel. Set ``MLJAX_MALLOC_TUNING=0`` to
keep glibc's defaults; an explicit ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
``GLIBC_TUNABLES`` in the environment is respected (nothing is changed). Not glibc (macOS,
musl): nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

applied: bool = False
"""Whether :func:`tune_malloc` changed the settings in this process."""


def tune_malloc() -> bool:
    """Applies the settings above once per process; returns whether they are in effect."""
    global applied
    if applied:
        return True
    if os.environ.get("MLJAX_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only (musl lacks it)
    except (OSError, AttributeError):
        return False
    del gnu_get_libc_version
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    return applied
