"""`mljax.config.enable_compilation_cache`: where the persistent cache goes, and when not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mljax.config import enable_compilation_cache


@pytest.fixture
def no_cache_dir():
    """Runs a test with no cache folder configured, then restores the session's settings."""
    saved_dir = jax.config.jax_compilation_cache_dir
    saved_min = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", saved_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved_min)


@pytest.mark.parametrize("setting", ["off", "0", "false"])
def test_disabled_by_environment(no_cache_dir, monkeypatch, setting):
    monkeypatch.setenv("MLJAX_COMPILATION_CACHE", setting)
    assert enable_compilation_cache() is None
    assert not jax.config.jax_compilation_cache_dir


def test_folder_from_environment_is_created_and_used(no_cache_dir, monkeypatch, tmp_path):
    folder = tmp_path / "nested" / "cache"
    monkeypatch.setenv("MLJAX_COMPILATION_CACHE", str(folder))
    assert enable_compilation_cache() == folder
    assert folder.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(folder)


def test_default_folder_under_xdg_cache_home(no_cache_dir, monkeypatch, tmp_path):
    monkeypatch.delenv("MLJAX_COMPILATION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert enable_compilation_cache() == tmp_path / "mljax" / "jax"


def test_a_folder_the_user_chose_is_kept(no_cache_dir, monkeypatch, tmp_path):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    monkeypatch.setenv("MLJAX_COMPILATION_CACHE", str(tmp_path / "other"))
    assert enable_compilation_cache() == tmp_path / "mine"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")


def test_a_quickly_compiled_program_is_cached_and_gives_the_same_answer(tmp_path):
    # JAX sets its persistent cache up once per process (conftest already did, for the
    # suite's own folder), so the round trip runs in a fresh interpreter. The program compiles
    # in milliseconds: enable_compilation_cache keeps small programs too.
    script = textwrap.dedent(
        """
        import sys
        import jax
        import jax.numpy as jnp
        from mljax.config import enable_compilation_cache

        enable_compilation_cache()
        x = jnp.arange(12.0).reshape(3, 4)

        def f(a):
            return jnp.tanh(a @ a.T).sum()

        first = jax.jit(f)(x)
        written = any(__import__("pathlib").Path(sys.argv[1]).iterdir())
        jax.clear_caches()  # the second call reads the program back from disk
        second = jax.jit(f)(x)
        print(written, repr(float(first)), repr(float(second)))
        """
    )
    env = dict(os.environ, MLJAX_COMPILATION_CACHE=str(tmp_path), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    assert out[0] == "True", "the compiled program was not written to the cache"
    first, second = float(out[1]), float(out[2])
    assert second == first
    x = np.arange(12.0).reshape(3, 4)
    assert first == pytest.approx(float(np.tanh(x @ x.T).sum()), rel=1e-6)
