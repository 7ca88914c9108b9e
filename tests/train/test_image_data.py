"""mljax.train.image_data on small IDX files the test writes: the split partitions the first
n_train training images, keeps each class's share in validation, scales pixels to [0, 1] and
takes the first n_test test images."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mljax.data.images import DatasetNotFoundError
from mljax.train.image_data import check_split_sizes, image_split


def _write(d, prefix: str, imgs: np.ndarray, lbls: np.ndarray) -> None:
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", imgs), (f"{prefix}-labels-idx1-ubyte", lbls)):
        header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
        (d / stem).write_bytes(header + arr.tobytes())


@pytest.fixture
def small_mnist(tmp_path):
    rng = np.random.default_rng(0)
    # Image i of the training split carries its index in its first two pixels, so every row
    # of the split can be traced back to the file.
    x = rng.integers(0, 256, (300, 28, 28)).astype(np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(300) // 256, np.arange(300) % 256
    y = (np.arange(300) % 10).astype(np.uint8)
    xt = rng.integers(0, 256, (50, 28, 28)).astype(np.uint8)
    yt = (np.arange(50) % 10).astype(np.uint8)
    _write(tmp_path, "train", x, y)
    _write(tmp_path, "t10k", xt, yt)
    return tmp_path, x, y, xt, yt


def test_split_partitions_stratifies_and_scales(small_mnist):
    d, x, y, xt, yt = small_mnist
    s = image_split("mnist", data_dir=d, n_train=200, n_test=30, val_fraction=0.1, seed=3)
    assert s.sizes == {"train": 180, "val": 20, "test": 30}
    data = s.data
    assert data.x_train.dtype == np.float32 and data.x_train.shape == (180, 28, 28, 1)
    rows = []
    for xs, ys in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        px = np.rint(np.asarray(xs)[:, 0, :2, 0] * 255).astype(int)
        idx = px[:, 0] * 256 + px[:, 1]
        np.testing.assert_array_equal(np.asarray(ys), y[idx])
        np.testing.assert_allclose(np.asarray(xs)[..., 0], x[idx] / 255.0, rtol=1e-6)
        rows.append(idx)
    # Train and validation partition the first 200 images.
    assert sorted(np.concatenate(rows).tolist()) == list(range(200))
    # Stratified: 20 images per class among the 200, so 2 per class in validation.
    assert np.bincount(np.asarray(data.y_val), minlength=10).tolist() == [2] * 10
    np.testing.assert_allclose(np.asarray(data.x_test)[..., 0], xt[:30] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(data.y_test), yt[:30])
    assert len(s.class_names) == 10
    # The split depends on the seed only.
    again = image_split("mnist", data_dir=d, n_train=200, n_test=30, seed=3)
    np.testing.assert_array_equal(np.asarray(again.data.x_val), np.asarray(data.x_val))


def test_missing_dataset_raises_the_data_layers_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MLJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(DatasetNotFoundError, match="mnist"):
        image_split("mnist", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(val_fraction=1.5), r"--val-fraction must lie in \(0, 1\), got 1.5"),
        (dict(n_train=100), r"leave at least one batch \(200\) .* got 100"),
        (dict(n_train=70_000), r"--n-train must be in 1..60000"),
        (dict(n_test=0), r"--n-test must be in 1..10000, got 0"),
    ],
)
def test_bad_sizes_name_the_option(kwargs, message):
    args = {"n_train": None, "n_test": None, "val_fraction": 0.1, "batch_size": 200, **kwargs}
    with pytest.raises(ValueError, match=message):
        check_split_sizes(**args)
    # 223 images keep 201 after a 10 % validation share: one batch of 200 fits.
    check_split_sizes(223, 10_000, 0.1, 200)
