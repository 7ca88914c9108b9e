"""Checkpoints (orbax): Ctrl-C saves, a SIGKILLed training subprocess resumes bit for bit,
another model's checkpoint and a corrupt one are clear errors."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mljax.nn.layers import Activation, Dense
from mljax.train import checkpoint, loop, tasks

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import ckpt_script  # noqa: E402


class InterruptAt(checkpoint.Checkpointer):
    """Raises KeyboardInterrupt (what Ctrl-C raises) once the step reaches ``at``."""

    def __init__(self, *args, at: int, **kw):
        super().__init__(*args, **kw)
        self.at = at

    def maybe_save(self, state, step, *, epoch_end=False):
        super().maybe_save(state, step, epoch_end=epoch_end)
        if step >= self.at:
            raise KeyboardInterrupt


def _kill_after(ck: Path, min_step: int) -> tuple[int, int]:
    """Runs ckpt_script until it saved at a step >= min_step, then SIGKILLs it.

    Returns (the step it resumed from, the step of its last save)."""
    env = dict(os.environ, CI="true")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(HERE / "ckpt_script.py"), str(ck), "0.05"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    restored = last = None
    for line in proc.stdout:
        word, _, number = line.partition(" ")
        if word == "restored":
            restored = int(number)
        elif word == "saved" and int(number) >= min_step:
            last = int(number)
            proc.send_signal(signal.SIGKILL)
            break
    _, err = proc.communicate(timeout=120)
    assert last is not None, f"the script never checkpointed at step >= {min_step}: {err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    return restored, last


def _template():
    task, cfg, data, hp = ckpt_script.problem()
    return loop.init_loop_state(task, cfg, data, hp, jax.random.key(ckpt_script.KEY))


@pytest.mark.slow
def test_interrupted_runs_resume_bit_for_bit(tmp_path):
    """Ctrl-C at step 9 (in process), resume in a subprocess SIGKILLed at step >= 21, resume
    to the end: parameters, history and best-epoch parameters equal an uninterrupted run."""
    task, cfg, data, hp = ckpt_script.problem()
    key = jax.random.key(ckpt_script.KEY)
    ref = loop.train(task, cfg, data, hp, key=key)
    ck = tmp_path / "ck"

    with pytest.raises(KeyboardInterrupt):
        loop.train(task, cfg, data, hp, key=key, checkpointer=InterruptAt(ck, every=3, at=9))
    assert _saved_step(ck) == 9  # saved on Ctrl-C

    restored, killed_at = _kill_after(ck, 21)
    assert restored == 9
    assert _saved_step(ck) == killed_at  # the last committed save survives the kill

    resumed_ck = checkpoint.Checkpointer(ck, every=3)
    res = loop.train(task, cfg, data, hp, key=key, checkpointer=resumed_ck)
    assert resumed_ck.restored_step == killed_at
    chex.assert_trees_all_equal(
        (res.params, res.best_params, res.history), (ref.params, ref.best_params, ref.history)
    )
    assert int(res.best_epoch) == int(ref.best_epoch)


def _saved_step(ck: Path) -> int:
    """Training step of the latest save in ``ck``."""
    return int(checkpoint.Checkpointer(ck).restore_or(_template()).train.step)


@pytest.mark.slow
def test_unfinished_save_is_ignored(tmp_path):
    """What a save killed half-way leaves (orbax's temporary directory) is never restored."""
    task, cfg, data, hp = ckpt_script.problem()
    cfg1 = dataclasses.replace(cfg, epochs=1)
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    res = loop.train(task, cfg1, data, hp, checkpointer=ck)
    assert ck.saves == 1 and ck.latest() == 0
    torn = tmp_path / "ck" / "1.orbax-checkpoint-tmp-1234567890"
    torn.mkdir()
    (torn / "_METADATA").write_bytes(b"\x00torn")
    again = checkpoint.Checkpointer(tmp_path / "ck")
    template = loop.init_loop_state(task, cfg1, data, hp, jax.random.key(0))
    state = again.restore_or(template)
    chex.assert_trees_all_equal(state.train.params, res.params)
    assert again.latest() == 0


@pytest.mark.slow
def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    task, cfg, data, hp = ckpt_script.problem()
    cfg1 = dataclasses.replace(cfg, epochs=1)
    ck = checkpoint.Checkpointer(tmp_path / "c")
    loop.train(task, cfg1, data, hp, checkpointer=ck)
    assert ck.exists()
    other = tasks.layer_task((Dense(5), Activation("relu"), Dense(2)), (1, 3))
    with pytest.raises(ValueError, match="does not match this model.*layer_0/kernel"):
        loop.train(other, cfg1, data, hp, checkpointer=checkpoint.Checkpointer(ck.path))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    tree = {"a": jnp.zeros(3)}
    path = checkpoint.save(tmp_path / "ok", tree)
    (path / "_METADATA").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        checkpoint.restore(path, tree)
    (tmp_path / "file").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        checkpoint.restore(tmp_path / "file", tree)


def test_roundtrip_preserves_namedtuples_and_dtypes(tmp_path):
    tree = loop.Hyper(
        jnp.float32(0.1),
        jnp.arange(3),
        {"w": jnp.ones((2, 2))},
        jnp.array(True),
        np.arange(2, dtype=np.int8),
        jnp.float16(0.5),
    )
    path = checkpoint.save(tmp_path / "t", tree)
    back = checkpoint.restore(path, tree)
    assert isinstance(back, loop.Hyper)
    chex.assert_trees_all_equal(back, tree)
    chex.assert_trees_all_equal_dtypes(back, tree)
    with pytest.raises(ValueError, match=r"shape/dtype differs at momentum: file \(\(3,\)"):
        checkpoint.restore(path, tree._replace(momentum=jnp.arange(4)))
    with pytest.raises(ValueError, match=r"missing \['weight_decay/b'\]"):
        checkpoint.restore(path, tree._replace(weight_decay={"w": jnp.ones((2, 2)), "b": 0.0}))
    np.testing.assert_array_equal(np.asarray(back.weight_decay["w"]), np.ones((2, 2)))


def test_bad_every_is_rejected():
    with pytest.raises(ValueError, match="every"):
        checkpoint.Checkpointer("x", every=-1)
