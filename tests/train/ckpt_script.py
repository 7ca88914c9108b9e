"""Training subprocess for the checkpoint tests: trains a small MLP with a Checkpointer.

Usage: python ckpt_script.py CKPT_PATH OUT_NPZ [SLEEP_S]
Prints "saved <step>" after each checkpoint; writes the final params to OUT_NPZ.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mljax.nn.layers import Activation, Dense, Dropout
from mljax.train import checkpoint, loop, tasks


class SlowCheckpointer(checkpoint.Checkpointer):
    def __init__(self, *args, sleep=0.0, **kw):
        super().__init__(*args, **kw)
        self.sleep = sleep

    def save(self, state):
        super().save(state)
        print(f"saved {int(state.train.step)}", flush=True)

    def maybe_save(self, state, step, *, epoch_end=False):
        super().maybe_save(state, step, epoch_end=epoch_end)
        time.sleep(self.sleep)


def problem():
    x = jax.random.normal(jax.random.key(1), (60, 3))
    y = (x[:, 0] - x[:, 2] > 0).astype(jnp.int32)
    layers = (Dense(8), Activation("relu"), Dropout(0.25), Dense(2))
    task = tasks.layer_task(layers, (1, 3))
    cfg = loop.TrainConfig(epochs=6, batch_size=8, optimizer="adam", strategy="python")
    data = loop.Data(x[:48], y[:48], x[48:], y[48:])
    return task, cfg, data, loop.Hyper(learning_rate=0.05, l1=1e-3)


def main(argv):
    path, out = argv[1], argv[2]
    sleep = float(argv[3]) if len(argv) > 3 else 0.0
    task, cfg, data, hp = problem()
    ck = SlowCheckpointer(path, every=3, sleep=sleep)
    res = loop.train(task, cfg, data, hp, key=jax.random.key(7), checkpointer=ck)
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(res.params)[0]
    }
    flat["val_loss"] = np.asarray(res.history["val_loss"])
    np.savez(out, restored=ck.restored_step if ck.restored_step is not None else -1, **flat)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv)
