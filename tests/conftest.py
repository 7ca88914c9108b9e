"""Shared test configuration."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

# Tests never wait on a progress bar and never reach the network for datasets.
os.environ.setdefault("CI", "true")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import jax
import pytest

from mljax.config import enable_compilation_cache
from mljax.malloc_tuning import tune_malloc

# Development machines and CI keep the full MNIST (and CIFAR-10) beside the project, in
# ../shared/data (never inside the repository): realdata("mnist") tests find it there.
_SHARED_DATA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data"
)
if os.path.isdir(_SHARED_DATA):
    os.environ.setdefault("MLJAX_DATA_DIR", _SHARED_DATA)

# Ctrl-C tests (the run guard, the cluster watchdog) need Python's SIGINT handler. A shell
# that starts pytest in the background (`pytest ... &`, nohup in a script) leaves SIGINT
# ignored, as POSIX asks, and Python then installs no handler: those tests would fail and
# the watchdog would end the worker. The xdist workers and the processes tests start inherit
# the restored handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The suite opts in to the allocator settings the command-line entry points use (import mljax
# does not change them): XLA:CPU's per-call buffers stop page-faulting.
tune_malloc()

# Compiled programs are kept between test runs and shared by the xdist workers and by the
# subprocesses some tests start (they inherit the variable): compiling dominates this suite.
os.environ.setdefault(
    "MLJAX_COMPILATION_CACHE",
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"
    ),
)
enable_compilation_cache()


@pytest.fixture
def x64():
    """Enables 64-bit floats for one test (gradient and EM checks), then restores the setting."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@functools.cache
def _dataset_missing(name: str) -> str | None:
    """Why the dataset cannot be loaded here (None when it can); looked up once per session."""
    from mljax.data import images

    try:
        images.load(name, "test", download=False)
    except Exception as e:  # not installed, or unreadable here
        return str(e).splitlines()[0]
    return None


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.realdata("fashion_mnist")``: skipped, with the reason, where the named
    dataset is not installed (the marker without a name leaves the decision to the test)."""
    for item in items:
        for marker in item.iter_markers("realdata"):
            for name in marker.args:
                reason = _dataset_missing(name)
                if reason:
                    item.add_marker(pytest.mark.skip(reason=f"{name} not installed: {reason}"))


class Launched:
    """One subprocess started by the ``launch`` fixture; its stdout and stderr go to ``log``."""

    def __init__(self, popen: subprocess.Popen, log: Path):
        self.popen, self.log = popen, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit status; fails the test (after killing it) past ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"still running after {timeout} s:\n{self.output()[-3000:]}")


@pytest.fixture
def launch(tmp_path):
    """``launch(args, name)`` starts ``python *args`` from the repository root (this checkout's
    mljax first on the path, CPU only, one CPU device); every process still running when the
    test ends is killed, so a hung multi-process run cannot outlive its test."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(root) + os.pathsep + env.get("PYTHONPATH", ""))
    started: list[Launched] = []

    def start(args, name: str, extra_env: dict | None = None) -> Launched:
        log = tmp_path / f"{name}.log"
        with open(log, "w") as f:
            popen = subprocess.Popen(
                [sys.executable, *map(str, args)],
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**env, **(extra_env or {})},
                cwd=root,
            )
        started.append(Launched(popen, log))
        return started[-1]

    yield start
    for p in started:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_args(port: int, num_processes: int, process_id: int) -> list[str]:
    """The command-line options of process ``process_id`` of a run on 127.0.0.1:``port``."""
    return [
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        str(num_processes),
        "--process-id",
        str(process_id),
    ]


@pytest.fixture
def cluster_options():
    """:func:`cluster_args` for tests in any folder."""
    return cluster_args


@pytest.fixture
def lowered_text(monkeypatch):
    """``capture(module, "_fit_jit")`` wraps a module's jitted function so that each call also
    records its lowered (StableHLO) program text; returns a dict whose ``"text"`` is the last."""

    def capture(module, name: str) -> dict:
        seen = {}
        jitted = getattr(module, name)

        def spy(*args, **kwargs):
            seen["text"] = jitted.lower(*args, **kwargs).as_text()
            return jitted(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
        return seen

    return capture
