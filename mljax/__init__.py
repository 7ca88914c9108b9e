"""mljax: classic machine-learning course algorithms as fast, tested, pure JAX.

Sub-packages:
    mljax.data     toy generators, image datasets (IDX, CIFAR-10, TFDS), batching
    mljax.results  run directories and atomic writes
    mljax.plots    matplotlib (Agg) figures written as PNG
    mljax.config   command lines generated from frozen dataclass configs

Importing mljax tunes glibc malloc for XLA:CPU (see mljax.malloc_tuning; MLJAX_MALLOC_TUNING=0
turns it off).
"""

__version__ = "0.1.0"

from mljax.malloc_tuning import tune_malloc as _tune_malloc

_tune_malloc()  # keeps XLA:CPU's per-call buffers off mmap; MLJAX_MALLOC_TUNING=0 to opt out
