"""Data: toy generators (:mod:`.toy`), image datasets (:mod:`.images`), batching (:mod:`.batches`)."""

from mljax.data.batches import (
    EpochBatches,
    epoch_batches,
    masked_mean,
    num_batches,
    train_val_split,
)
from mljax.data.images import (
    DATASETS,
    DatasetNotFoundError,
    ImageDataset,
    load,
    read_cifar_binary_batch,
    read_cifar_python_batch,
    read_idx,
)
from mljax.data.toy import (
    FEATURE_NAMES,
    PLAYGROUND_DATASETS,
    blobs,
    circle,
    features,
    gauss,
    playground,
    playground_split,
    spiral,
    xor,
)

__all__ = [
    "DATASETS",
    "FEATURE_NAMES",
    "PLAYGROUND_DATASETS",
    "DatasetNotFoundError",
    "EpochBatches",
    "ImageDataset",
    "blobs",
    "circle",
    "epoch_batches",
    "features",
    "gauss",
    "load",
    "masked_mean",
    "num_batches",
    "playground",
    "playground_split",
    "read_cifar_binary_batch",
    "read_cifar_python_batch",
    "read_idx",
    "spiral",
    "train_val_split",
    "xor",
]
