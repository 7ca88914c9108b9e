"""An image dataset as the training engine's :class:`~mljax.train.loop.Data`: the training
split cut into train and a stratified validation part, and the test split; pixels / 255 as
float32 ``[n, H, W, C]``, labels int32."""

from __future__ import annotations

import os
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from mljax.data import images
from mljax.data.batches import train_val_split
from mljax.train.loop import Data

__all__ = ["ImageSplit", "check_split_sizes", "image_split"]


class ImageSplit(NamedTuple):
    data: Data  # train / validation / test
    class_names: tuple[str, ...]
    sizes: dict  # {"train", "val", "test"}: image counts


def image_split(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImageSplit:
    """Loads dataset ``name`` (see :func:`mljax.data.images.load`) as train / validation / test.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        data_dir: where to look first (default: the data layer's search path).
        n_train: use the first ``n_train`` training images (default all) before the split.
        n_test: use the first ``n_test`` test images (default all).
        val_fraction: share of the (first ``n_train``) training images held out for
            validation, stratified by class.
        seed: the validation split depends on this seed only.

    Raises:
        DatasetNotFoundError: (from the data layer, with the install commands) where the
            dataset is not installed.
    """
    train = images.load(name, "train", data_dir=data_dir)
    test = images.load(name, "test", data_dir=data_dir)
    n_train = n_train or train.labels.shape[0]
    n_test = n_test or test.labels.shape[0]
    x = train.images[:n_train].astype(np.float32) / 255.0
    y = train.labels[:n_train].astype(np.int32)
    fit, val = train_val_split(y.shape[0], val_fraction, seed=seed, labels=y)
    xt = test.images[:n_test].astype(np.float32) / 255.0
    yt = test.labels[:n_test].astype(np.int32)
    data = Data(
        jnp.asarray(x[fit]),
        jnp.asarray(y[fit]),
        jnp.asarray(x[val]),
        jnp.asarray(y[val]),
        jnp.asarray(xt),
        jnp.asarray(yt),
    )
    sizes = {"train": int(fit.size), "val": int(val.size), "test": int(yt.size)}
    return ImageSplit(data, tuple(train.class_names), sizes)


def check_split_sizes(
    n_train: int | None,
    n_test: int | None,
    val_fraction: float,
    batch_size: int,
    *,
    train_images: int = 60_000,
    test_images: int = 10_000,
) -> None:
    """The command-line checks of :func:`image_split`'s sizes, before any data is read:
    ``ValueError`` naming the option unless ``val_fraction`` lies in (0, 1), ``n_train`` (when
    given) is at most ``train_images`` and leaves at least one batch after the validation
    share, and ``n_test`` (when given) is in ``1..test_images``."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {val_fraction}")
    if n_train is not None:
        n_fit = n_train - round(n_train * val_fraction)
        if not 1 <= n_train <= train_images or n_fit < batch_size:
            raise ValueError(
                f"--n-train must be in 1..{train_images} and leave at least one batch "
                f"({batch_size}) after the validation share; got {n_train}"
            )
    if n_test is not None and not 1 <= n_test <= test_images:
        raise ValueError(f"--n-test must be in 1..{test_images}, got {n_test}")
