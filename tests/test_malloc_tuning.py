"""`import mljax` keeps large freed buffers in the process (glibc mallopt), so repeated
allocations of the same size stop page-faulting. Reference: the kernel's own minor-fault
counter (getrusage) in fresh subprocesses, with and without the tuning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mljax import malloc_tuning

PROBE = r"""
import json, resource
import numpy as np
import mljax
from mljax import malloc_tuning
def churn():  # 20 allocations of 40 MiB, each written once and freed (as XLA's per-call temps)
    for _ in range(20):
        a = np.empty(10 << 20, np.float32)
        a.fill(1.0)
        del a
churn()  # warm-up: the first allocation faults in either case
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": malloc_tuning.applied, "faults": faults}))
"""

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="mallopt tuning is glibc-only",
)


def _probe(**env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in malloc_tuning._USER_SETTINGS}
    env.pop("MLJAX_MALLOC_TUNING", None)
    env.update(env_overrides)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_import_stops_page_faults_on_repeated_large_allocations():
    tuned = _probe()
    default = _probe(MLJAX_MALLOC_TUNING="0")
    assert tuned["applied"] and not default["applied"]
    # glibc's default mmaps each 40 MiB buffer afresh: at least one fault per allocation (one
    # per 4 KiB page, or per 2 MiB where numpy asks for transparent huge pages).
    assert default["faults"] >= 20, default
    assert tuned["faults"] < default["faults"] / 10, (tuned, default)


@glibc
def test_explicit_glibc_settings_are_respected():
    assert not _probe(MALLOC_MMAP_THRESHOLD_="131072")["applied"]
