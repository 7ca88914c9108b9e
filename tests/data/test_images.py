"""Image dataset readers on small files the tests write, the TFDS bridge and real data."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from mljax.data import images
from mljax.data.images import DatasetNotFoundError, load, read_idx


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return header + arr.tobytes()


def write_idx_split(d: Path, split: str, imgs: np.ndarray, lbls: np.ndarray, *, gz: bool) -> None:
    prefix = "train" if split == "train" else "t10k"
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", imgs), (f"{prefix}-labels-idx1-ubyte", lbls)):
        data = idx_bytes(arr)
        if gz:
            (d / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (d / stem).write_bytes(data)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No user-level data dirs and a TFDS dir that is empty: only what a test writes exists."""
    monkeypatch.delenv("MLJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    return tmp_path


def small_mnist(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, (n,), dtype=np.uint8),
    )


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_roundtrip_through_load(isolated, gz):
    imgs, lbls = small_mnist()
    d = isolated / "data"
    d.mkdir()
    write_idx_split(d, "train", imgs, lbls, gz=gz)
    ds = load("mnist", "train", data_dir=d, download=False)
    assert ds.images.shape == (12, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.images[..., 0], imgs)
    np.testing.assert_array_equal(ds.labels, lbls)
    assert ds.class_names == images.MNIST_CLASSES
    assert ds.source == str(d)


@pytest.mark.parametrize(
    "code,dtype",
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")],
)
def test_read_idx_every_dtype(tmp_path, code, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if np.dtype(dtype) == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "a.idx"
    p.write_bytes(idx_bytes(arr, code))
    out = read_idx(p)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


CORRUPT = {
    "bad_magic": (lambda b: b"\x01" + b[1:], "wrong IDX magic number"),
    "unknown_dtype": (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX dtype code 0x07"),
    "truncated_body": (lambda b: b[:-5], "truncated IDX file"),
    "truncated_header": (lambda b: b[:6], "truncated IDX header"),
    "trailing": (lambda b: b + b"\x00\x00", "unexpected trailing bytes"),
    "tiny": (lambda b: b[:2], "truncated IDX file"),
    "corrupt_gzip": (lambda b: gzip.compress(b)[:-12], "corrupt or truncated gzip"),
}


@pytest.mark.parametrize("fault", sorted(CORRUPT))
def test_read_idx_rejects_corrupt_files_naming_them(tmp_path, fault):
    mutate, message = CORRUPT[fault]
    p = tmp_path / f"{fault}-images-idx3-ubyte"
    p.write_bytes(mutate(idx_bytes(np.zeros((3, 28, 28), np.uint8))))
    with pytest.raises(ValueError, match=message) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_count_mismatch_is_an_error(isolated):
    imgs, lbls = small_mnist(12)
    d = isolated / "data"
    d.mkdir()
    write_idx_split(d, "test", imgs, lbls[:11], gz=False)
    with pytest.raises(ValueError, match="image/label count mismatch.*12 images.*11 labels"):
        load("mnist", "test", data_dir=d, download=False)


def test_wrong_dtype_is_an_error(isolated):
    d = isolated / "data"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((2, 28, 28), ">f4"), 0x0D))
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((2,), np.uint8)))
    with pytest.raises(ValueError, match="wrong dtype"):
        load("fashion_mnist", "train", data_dir=d, download=False)


def test_wrong_image_size_and_label_range(isolated):
    d = isolated / "data"
    d.mkdir()
    write_idx_split(d, "train", np.zeros((2, 32, 32), np.uint8), np.zeros(2, np.uint8), gz=False)
    with pytest.raises(ValueError, match=r"images must be \(28, 28, 1\)"):
        load("mnist", "train", data_dir=d, download=False)
    write_idx_split(
        d, "train", np.zeros((2, 28, 28), np.uint8), np.array([3, 10], np.uint8), gz=False
    )
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        load("mnist", "train", data_dir=d, download=False)


def test_missing_companion_file(isolated):
    imgs, _ = small_mnist()
    d = isolated / "data"
    d.mkdir()
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(imgs)))
    with pytest.raises(ValueError, match="companion .*train-labels-idx1-ubyte"):
        load("mnist", "train", data_dir=d, download=False)


def test_search_order_env_then_cache(isolated, monkeypatch):
    env_dir = isolated / "env"
    (env_dir / "mnist").mkdir(parents=True)
    cache = isolated / "home" / ".cache" / "mljax" / "mnist"
    cache.mkdir(parents=True)
    a, la = small_mnist(4, seed=1)
    b, lb = small_mnist(6, seed=2)
    write_idx_split(cache, "test", b, lb, gz=True)
    assert load("mnist", "test", download=False).images.shape[0] == 6
    write_idx_split(env_dir / "mnist", "test", a, la, gz=True)
    monkeypatch.setenv("MLJAX_DATA_DIR", str(env_dir))
    assert load("mnist", "test", download=False).images.shape[0] == 4


def test_bad_name_and_split():
    with pytest.raises(
        ValueError, match="unknown dataset 'kmnist'; allowed: mnist, fashion_mnist, cifar10"
    ):
        load("kmnist", "train")
    with pytest.raises(ValueError, match="unknown split 'validation'; allowed: train, test"):
        load("mnist", "validation")


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def write_cifar_py(d: Path, n=5, bytes_keys=True):
    d.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_batch(n, i)
        batches[name] = (data, labels)
        obj = {b"data": data, b"labels": labels} if bytes_keys else {"data": data, "labels": labels}
        (d / name).write_bytes(pickle.dumps(obj, protocol=2))
    names = [
        b"plane",
        b"car",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return batches


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar_python_batches(isolated, bytes_keys):
    root = isolated / "cifar"
    batches = write_cifar_py(root / "cifar-10-batches-py", bytes_keys=bytes_keys)
    train = load("cifar10", "train", data_dir=root, download=False)
    test = load("cifar10", "test", data_dir=root, download=False)
    assert train.images.shape == (25, 32, 32, 3) and test.images.shape == (5, 32, 32, 3)
    data, labels = batches["data_batch_2"]
    # CIFAR rows are channel-major: 1024 red, 1024 green, 1024 blue values.
    np.testing.assert_array_equal(
        train.images[5:10, :, :, 1], data[:, 1024:2048].reshape(5, 32, 32)
    )
    np.testing.assert_array_equal(train.labels[5:10], labels)
    assert train.class_names[1] == "car"


def test_cifar_binary_batches(isolated):
    d = isolated / "cifar" / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_batch(3, i)
        rec = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
        (d / f"{name}.bin").write_bytes(rec.tobytes())
    test = load("cifar10", "test", data_dir=isolated / "cifar", download=False)
    data, labels = cifar_batch(3, 5)
    np.testing.assert_array_equal(test.images[:, :, :, 2], data[:, 2048:].reshape(3, 32, 32))
    np.testing.assert_array_equal(test.labels, labels)
    (d / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated CIFAR-10 binary batch"):
        load("cifar10", "test", data_dir=isolated / "cifar", download=False)


def test_cifar_faults(isolated):
    root = isolated / "cifar"
    write_cifar_py(root / "cifar-10-batches-py")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="incomplete CIFAR-10 directory.*data_batch_3"):
        load("cifar10", "train", data_dir=root, download=False)
    bad = root / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="wrong dtype"):
        load("cifar10", "test", data_dir=root, download=False)
    bad.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(ValueError, match="image/label count mismatch"):
        load("cifar10", "test", data_dir=root, download=False)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_unpickler_refuses_arbitrary_objects(isolated):
    root = isolated / "cifar"
    write_cifar_py(root / "cifar-10-batches-py")
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": Evil(), b"labels": []})
    )
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load("cifar10", "test", data_dir=root, download=False)


# ----------------------------------------------------------------------------- TFDS and errors


def test_tfds_path_with_mock_data(isolated):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=9):
        ds = load("mnist", "train", download=False)
    assert ds.images.shape == (9, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.labels.min() >= 0 and ds.labels.max() <= 9
    assert ds.source == "tfds:mnist"


def test_found_nowhere_lists_places_and_commands(isolated, monkeypatch):
    env_dir = isolated / "envdata"
    monkeypatch.setenv("MLJAX_DATA_DIR", str(env_dir))
    with pytest.raises(DatasetNotFoundError) as e:
        load("fashion_mnist", "train", data_dir=isolated / "given", download=False)
    msg = str(e.value)
    for place in [
        isolated / "given",
        isolated / "given" / "fashion_mnist",
        env_dir / "fashion_mnist",
        isolated / "home" / ".cache" / "mljax" / "fashion_mnist",
        isolated / "no-debian",
    ]:
        assert str(place) in msg
    assert "tensorflow-datasets 'fashion_mnist'" in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "tfds.data_source('fashion_mnist', download=True)" in msg
    assert "train-images-idx3-ubyte.gz" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_never_substitutes_another_dataset(isolated):
    d = isolated / "data"
    (d / "fashion_mnist").mkdir(parents=True)
    write_idx_split(d / "fashion_mnist", "train", *small_mnist(), gz=True)
    with pytest.raises(DatasetNotFoundError, match="dataset 'mnist'"):
        load("mnist", "train", data_dir=d, download=False)


# ----------------------------------------------------------------------------- real data

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.realdata
@pytest.mark.skipif(
    not DEBIAN.is_dir(),
    reason="Debian dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)
def test_debian_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.delenv("MLJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    train = load("fashion_mnist", "train", download=False)
    test = load("fashion_mnist", "test", download=False)
    assert train.source == str(DEBIAN)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), np.full(10, 1000))
    assert train.class_names[9] == "Ankle boot"


class UnknownCodec:
    def __reduce__(self):
        import codecs

        return (codecs.encode, ("abc", "no-such-codec"))


def test_cifar_hostile_batches_are_value_errors_naming_the_file(isolated):
    root = isolated / "cifar"
    write_cifar_py(root / "cifar-10-batches-py")
    test_batch = root / "cifar-10-batches-py" / "test_batch"
    test_batch.write_bytes(pickle.dumps({b"data": UnknownCodec(), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch: not a readable .*LookupError"):
        load("cifar10", "test", data_dir=root, download=False)
    data = np.zeros((2, 3072), np.uint8)
    test_batch.write_bytes(pickle.dumps({b"data": data, b"labels": ["cat", "dog"]}, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch: 'labels' must be integers"):
        load("cifar10", "test", data_dir=root, download=False)
    meta = root / "cifar-10-batches-py" / "batches.meta"
    for names, message in (
        (b"plane car", "must be a list of strings"),
        ([b"a"] * 3, "must name 10"),
    ):
        write_meta = {b"label_names": names}
        meta.write_bytes(pickle.dumps(write_meta, protocol=2))
        test_batch.write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}, protocol=2))
        with pytest.raises(ValueError, match=rf"batches.meta: 'label_names' {message}"):
            load("cifar10", "test", data_dir=root, download=False)


@pytest.mark.slow
def test_gzip_bomb_is_refused_after_reading_what_the_header_declares(tmp_path):
    """A 1 MiB .gz whose header claims 4 images but that inflates to 256 MiB: the reader stops
    one byte past the 3,136 declared bytes, so its memory does not grow with the payload."""
    import subprocess
    import sys
    import zlib

    header = bytes([0, 0, 0x08, 3]) + b"".join(struct.pack(">I", s) for s in (4, 28, 28))
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunks = [compressor.compress(header)]
    zeros = bytes(1 << 20)
    chunks += [compressor.compress(zeros) for _ in range(256)]
    chunks.append(compressor.flush())
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(b"".join(chunks))
    assert bomb.stat().st_size < 1 << 20
    script = (
        "import resource, sys\n"
        "from mljax.data.images import read_idx\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    read_idx(sys.argv[1])\nexcept ValueError as e:\n    print('ERR', e)\n"
        "print('GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(bomb)], capture_output=True, text=True, check=True
    ).stdout
    assert "unexpected trailing bytes after IDX data of shape (4, 28, 28)" in out
    growth_kb = int(out.split("GROWTH_KB")[1])
    assert growth_kb < 64 * 1024, out  # inflating it all would add 256 MiB
