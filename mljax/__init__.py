"""mljax: classic machine-learning course algorithms as fast, tested, pure JAX.

Sub-packages:
    mljax.data     toy generators, image datasets (IDX, CIFAR-10, TFDS), batching
    mljax.results  run directories and atomic writes
    mljax.plots    matplotlib (Agg) figures written as PNG
    mljax.config   command lines generated from frozen dataclass configs

Importing mljax changes no process state. The command-line entry points tune glibc malloc for
XLA:CPU; in your own program, opt in with ``mljax.malloc_tuning.tune_malloc()`` (see
mljax.malloc_tuning).
"""

__version__ = "0.1.0"
