"""`import mljax` (and its library modules) changes no process-wide state: no environment
variables, allocator settings, warning filters, logging levels, JAX flags, NumPy error modes,
signal handlers or matplotlib backend. Reference: a snapshot taken in a fresh interpreter after
importing the third-party libraries mljax builds on, compared with one taken after mljax."""

from __future__ import annotations

import json
import subprocess
import sys

SNAPSHOT = r"""
import json, logging, os, signal, sys, warnings
import jax, numpy as np, optax, flax.linen, chex, matplotlib
def snapshot():
    loggers = {name: logging.getLogger(name).level for name in ("", "jax", "absl", "matplotlib")}
    flags = {k: repr(v) for k, v in sorted(jax.config.values.items())}
    return {
        "environ": dict(os.environ),
        "warnings": [repr(f) for f in warnings.filters],
        "loggers": loggers,
        "jax": flags,
        "numpy": np.geterr(),
        "signals": {s: repr(signal.getsignal(getattr(signal, s))) for s in ("SIGINT", "SIGTERM")},
        "backend": matplotlib.get_backend(),
        "recursion": sys.getrecursionlimit(),
    }
before = snapshot()
import mljax
import mljax.cluster.gmm, mljax.cluster.kmeans, mljax.cluster.mog_classifier
import mljax.data, mljax.metrics, mljax.validation, mljax.results, mljax.malloc_tuning
import mljax.distributed, mljax.progress
import mljax.nn.models, mljax.nn.backprop, mljax.train.loop, mljax.train.sweep, mljax.train.tasks
after = snapshot()
print(json.dumps({"before": before, "after": after,
                  "malloc_tuned": mljax.malloc_tuning.applied}))
"""


def test_import_mljax_changes_no_process_state():
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", SNAPSHOT], env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["malloc_tuned"]
    for key, before in report["before"].items():
        assert report["after"][key] == before, key
