"""Checkpoints: kill a training subprocess mid-run, resume it, compare with an uninterrupted run."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

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


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CI"] = "true"
    return env


def _reference():
    task, cfg, data, hp = ckpt_script.problem()
    res = loop.train(task, cfg, data, hp, key=jax.random.key(7))
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(res.params)[0]
    }
    flat["val_loss"] = np.asarray(res.history["val_loss"])
    return flat


def _start(ck, out, sleep="0.05"):
    return subprocess.Popen(
        [sys.executable, str(HERE / "ckpt_script.py"), str(ck), str(out), sleep],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _interrupt_after(proc, sig, min_step):
    """Waits until the script saved at a step >= min_step, then sends ``sig``."""
    last = None
    for line in proc.stdout:
        if line.startswith("saved"):
            last = int(line.split()[1])
            if last >= min_step:
                proc.send_signal(sig)
                break
    _, err = proc.communicate(timeout=120)
    assert last is not None and last >= min_step, "the script never checkpointed"
    return last, err


def test_interrupted_runs_resume_bit_for_bit(tmp_path):
    """Ctrl-C (SIGINT) at step >= 9, resume, SIGKILL at step >= 21, resume to the end."""
    ck, out = tmp_path / "ck.msgpack", tmp_path / "out.npz"
    proc = _start(ck, out)
    first, err = _interrupt_after(proc, signal.SIGINT, 9)
    assert proc.returncode != 0 and not out.exists()
    assert "KeyboardInterrupt" in err
    state = checkpoint.restore(ck, _template())
    interrupted_at = int(state.train.step)
    assert first <= interrupted_at < 36  # saved on Ctrl-C, at or after the last periodic save

    proc = _start(ck, out)
    second, _ = _interrupt_after(proc, signal.SIGKILL, 21)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert int(checkpoint.restore(ck, _template()).train.step) == second

    done = subprocess.run(
        [sys.executable, str(HERE / "ckpt_script.py"), str(ck), str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = dict(np.load(out))
    assert int(resumed.pop("restored")) == second
    ref = _reference()
    assert set(ref) == set(resumed)
    for k in ref:
        np.testing.assert_array_equal(resumed[k], ref[k], err_msg=k)


def _template():
    task, cfg, data, hp = ckpt_script.problem()
    return loop.init_loop_state(task, cfg, data, hp, jax.random.key(7))


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    task, cfg, data, hp = ckpt_script.problem()
    cfg1 = dataclasses.replace(cfg, epochs=1)
    ck = checkpoint.Checkpointer(tmp_path / "c.msgpack")
    loop.train(task, cfg1, data, hp, checkpointer=ck)
    assert ck.path.exists()
    other = tasks.layer_task((Dense(5), Activation("relu"), Dense(2)), (1, 3))
    with pytest.raises(ValueError, match="does not match this model"):
        loop.train(other, cfg1, data, hp, checkpointer=checkpoint.Checkpointer(ck.path))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.msgpack"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="checkpoint"):
        checkpoint.restore(path, {"a": jnp.zeros(3)})


def test_roundtrip_preserves_namedtuples_and_dtypes(tmp_path):
    tree = loop.Hyper(jnp.float32(0.1), jnp.arange(3), {"w": jnp.ones((2, 2))}, 0.0, 0.0, 0.0)
    path = checkpoint.save(tmp_path / "t.msgpack", tree)
    back = checkpoint.restore(path, tree)
    assert isinstance(back, loop.Hyper)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.asarray(a).dtype == np.asarray(b).dtype
    with pytest.raises(ValueError, match="shape/dtype differs"):
        checkpoint.restore(path, tree._replace(momentum=jnp.arange(4)))


def test_bad_every_is_rejected():
    with pytest.raises(ValueError, match="every"):
        checkpoint.Checkpointer("x", every=-1)
