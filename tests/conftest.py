"""Shared test configuration."""

from __future__ import annotations

import functools
import os

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
