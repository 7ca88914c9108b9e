"""Training subprocess for the checkpoint test: trains a small MLP with a Checkpointer until
it is killed.

Usage: python ckpt_script.py CKPT_DIR [SLEEP_S]
Prints "restored <step>" when it resumes and "saved <step>" after each checkpoint.
"""

import sys
import time

import jax
import jax.numpy as jnp

from mljax.config import enable_compilation_cache
from mljax.nn.layers import Activation, Dense, Dropout
from mljax.train import checkpoint, loop, tasks


class SlowCheckpointer(checkpoint.Checkpointer):
    """Reports every save on stdout and sleeps after each step (time for the test to kill)."""

    def __init__(self, *args, sleep=0.0, **kw):
        super().__init__(*args, **kw)
        self.sleep = sleep

    def restore_or(self, template):
        state = super().restore_or(template)
        print(f"restored {self.restored_step}", flush=True)
        return state

    def save(self, state):
        super().save(state)
        print(f"saved {int(state.train.step)}", flush=True)

    def maybe_save(self, state, step, *, epoch_end=False):
        super().maybe_save(state, step, epoch_end=epoch_end)
        time.sleep(self.sleep)


KEY = 7


def problem():
    """A tiny run: 48 examples, batch 8 (6 steps per epoch), 6 epochs, dropout, Adam, L1."""
    x = jax.random.normal(jax.random.key(1), (60, 3))
    y = (x[:, 0] - x[:, 2] > 0).astype(jnp.int32)
    layers = (Dense(8), Activation("relu"), Dropout(0.25), Dense(2))
    task = tasks.layer_task(layers, (1, 3))
    cfg = loop.TrainConfig(epochs=6, batch_size=8, optimizer="adam", strategy="python")
    data = loop.Data(x[:48], y[:48], x[48:], y[48:])
    return task, cfg, data, loop.Hyper(learning_rate=0.05, l1=1e-3)


def main(argv):
    enable_compilation_cache()  # the test's compiled programs (MLJAX_COMPILATION_CACHE)
    path = argv[1]
    sleep = float(argv[2]) if len(argv) > 2 else 0.0
    task, cfg, data, hp = problem()
    ck = SlowCheckpointer(path, every=3, sleep=sleep)
    loop.train(task, cfg, data, hp, key=jax.random.key(KEY), checkpointer=ck)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv)
