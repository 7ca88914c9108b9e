"""Image datasets: MNIST, Fashion-MNIST and CIFAR-10 from their original files or TFDS.

``load(name, split)`` looks, in this order, in

1. ``data_dir`` (the argument; the files directly in it or in ``data_dir/<name>``),
2. ``$MLJAX_DATA_DIR/<name>``,
3. ``~/.cache/mljax/<name>``,
4. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``; Fashion-MNIST only),
5. tensorflow-datasets (``tfds.data_source``; prepared data in ``$TFDS_DATA_DIR`` or
   ``~/tensorflow_datasets``, downloading it where the network allows and ``download=True``).

Original files: the four IDX files of (Fashion-)MNIST, gzipped or raw
(``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``), and
CIFAR-10's python batches (``cifar-10-batches-py/data_batch_{1..5}``, ``test_batch``,
``batches.meta``) or binary batches (``cifar-10-batches-bin/*.bin``).

A dataset that is found nowhere raises :class:`DatasetNotFoundError` listing every place
looked and how to obtain it. A dataset is never replaced by another.
"""

from __future__ import annotations

import math
import os
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mljax.validation import physical_memory

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "SPLITS",
    "DatasetNotFoundError",
    "DatasetSpec",
    "ImageDataset",
    "candidate_dirs",
    "how_to_obtain",
    "load",
    "load_splits",
    "read_cifar_binary_batch",
    "read_cifar_python_batch",
    "read_idx",
]


DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class DatasetSpec(NamedTuple):
    name: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]
    file_format: str  # "idx" or "cifar"


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", (28, 28, 1), MNIST_CLASSES, {"train": 60000, "test": 10000}, "idx"
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", (28, 28, 1), FASHION_MNIST_CLASSES, {"train": 60000, "test": 10000}, "idx"
    ),
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3), CIFAR10_CLASSES, {"train": 50000, "test": 10000}, "cifar"
    ),
}


class ImageDataset(NamedTuple):
    """One split of an image dataset.

    Attributes:
        images: ``[n, h, w, c]`` uint8.
        labels: ``[n]`` int32 in ``[0, len(class_names))``.
        class_names: the name of each label.
        source: where it was read from (a directory, or ``"tfds:<name>"``).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str


class DatasetNotFoundError(FileNotFoundError):
    """No copy of the dataset was found; the message lists where we looked and how to get it."""


# ----------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class _BoundedGunzip:
    """Decompresses a gzip file a bounded number of bytes at a time: an IDX header says how
    large the data is, so a file that decompresses to far more (a "gzip bomb") is refused
    after reading at most one byte past that size, never inflated in full."""

    def __init__(self, path: Path, raw: bytes):
        self.path = path
        self.pending = raw
        self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def read(self, n: int) -> bytes:
        """Up to ``n`` decompressed bytes (fewer only at the end of the data)."""
        out = bytearray()
        try:
            while len(out) < n:
                if self.inflater.eof:  # another gzip member may follow
                    rest = self.inflater.unused_data
                    if not rest:
                        break
                    self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    self.pending = rest
                if not self.pending and not self.inflater.unconsumed_tail:
                    raise ValueError(f"{self.path}: corrupt or truncated gzip data (ends early)")
                data = self.inflater.unconsumed_tail or self.pending
                self.pending = b""
                out += self.inflater.decompress(data, n - len(out))
        except zlib.error as e:
            raise ValueError(f"{self.path}: corrupt or truncated gzip data ({e})") from e
        return bytes(out)


def _idx_bytes(path: Path) -> tuple[bytes, bytes, bool]:
    """``(header, body, more)``: the IDX header, at most the data size it declares, and
    whether bytes follow beyond it. Gzipped files are decompressed only that far."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        header_len = 4 + 4 * raw[3] if len(raw) >= 4 else len(raw)
        header = raw[:header_len]
        size = _declared_size(path, header)
        return header, raw[header_len : header_len + size], len(raw) > header_len + size
    stream = _BoundedGunzip(path, raw)
    head = stream.read(4)
    header = head + (stream.read(4 * head[3]) if len(head) == 4 else b"")
    size = _declared_size(path, header)
    body = b""
    while len(body) < size:  # in slices: memory follows the data, not the header's claim
        piece = stream.read(min(size - len(body), 1 << 26))
        if not piece:
            break
        body += piece
    return header, body, bool(stream.read(1))


def _declared_size(path: Path, header: bytes) -> int:
    """Data bytes an IDX header declares (0 when the header itself is bad: read_idx reports it)."""
    if len(header) < 4 or header[0] or header[1] or header[2] not in _IDX_DTYPES:
        return 0
    ndim = header[3]
    if len(header) < 4 + 4 * ndim:
        return 0
    shape = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = math.prod(shape) * _IDX_DTYPES[header[2]].itemsize
    limit = physical_memory()
    if size > limit:
        raise ValueError(
            f"{path}: IDX header declares shape {tuple(shape)} ({size} bytes), more than this "
            f"machine's memory ({limit} bytes); the file is corrupt or not an IDX file"
        )
    return size


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzipped or raw) into a NumPy array of its stored dtype and shape.

    The IDX header is two zero bytes, a dtype code, the number of dimensions, then each
    dimension as a big-endian uint32.

    Raises:
        ValueError: naming the file, for a wrong magic number, an unknown dtype code, a
            truncated file or trailing bytes.
    """
    path = Path(path)
    data, body, more = _idx_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, header needs 4)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path}: wrong IDX magic number 0x{data[:4].hex()} "
            "(expected 0x0000 followed by a dtype code and a rank)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x} (allowed: {allowed})")
    if ndim < 1:
        raise ValueError(f"{path}: IDX rank is 0; expected at least 1 dimension")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(body) < expected:
        raise ValueError(
            f"{path}: truncated IDX file: shape {shape} of {dtype} needs "
            f"{expected} data bytes, found {len(body)}"
        )
    if more:
        raise ValueError(
            f"{path}: unexpected trailing bytes after IDX data of shape {shape} "
            f"({expected} data bytes)"
        )
    return np.frombuffer(body, dtype=dtype, count=math.prod(shape)).reshape(shape)


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        p = directory / name
        if p.is_file():
            return p
    return None


def _idx_stems(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _load_idx_split(directory: Path, spec: DatasetSpec, split: str) -> ImageDataset | None:
    img_stem, lbl_stem = _idx_stems(split)
    img_path, lbl_path = _idx_file(directory, img_stem), _idx_file(directory, lbl_stem)
    if img_path is None and lbl_path is None:
        return None
    if img_path is None or lbl_path is None:
        present, missing = (img_path, lbl_stem) if lbl_path is None else (lbl_path, img_stem)
        raise ValueError(f"{present} found but its companion {directory / missing}[.gz] is missing")
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(
            f"wrong dtype: {img_path} holds {images.dtype} and {lbl_path} holds "
            f"{labels.dtype}; (Fashion-)MNIST IDX files hold uint8 (code 0x08)"
        )
    if images.ndim != 3:
        raise ValueError(
            f"{img_path}: images must have 3 dimensions [n, h, w], got shape {images.shape}"
        )
    if labels.ndim != 1:
        raise ValueError(f"{lbl_path}: labels must have 1 dimension [n], got shape {labels.shape}")
    return _validated(images[..., None], labels, spec, f"{img_path}", f"{lbl_path}", str(directory))


def _validated(
    images: np.ndarray,
    labels: np.ndarray,
    spec: DatasetSpec,
    img_src: str,
    lbl_src: str,
    source: str,
) -> ImageDataset:
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"image/label count mismatch: {img_src} has {images.shape[0]} images, "
            f"{lbl_src} has {labels.shape[0]} labels"
        )
    if tuple(images.shape[1:]) != spec.image_shape:
        raise ValueError(
            f"{img_src}: {spec.name} images must be {spec.image_shape}, got "
            f"{tuple(images.shape[1:])}"
        )
    labels = labels.astype(np.int32)
    if labels.size and (labels.min() < 0 or labels.max() >= len(spec.class_names)):
        raise ValueError(
            f"{lbl_src}: labels must lie in [0, {len(spec.class_names) - 1}], found "
            f"range [{labels.min()}, {labels.max()}]"
        )
    return ImageDataset(
        np.ascontiguousarray(images, dtype=np.uint8), labels, spec.class_names, source
    )


# ----------------------------------------------------------------------------- CIFAR-10 files

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: dicts, lists and NumPy arrays only, never arbitrary objects."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # Protocol-2 pickles written by Python 3 store bytes through codecs.encode.
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        if module.startswith("numpy.core"):  # pickles from NumPy 1.x name numpy.core
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any fault of the bytes (unknown codec: LookupError, ...)
        raise ValueError(
            f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: CIFAR-10 batch must be a dict, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar_python_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 python batch: images ``[n, 32, 32, 3]`` uint8, labels ``[n]``."""
    path = Path(path)
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: 'labels' must be integers, got {labels.dtype} (e.g. {labels.ravel()[:3]!r})"
        )
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: wrong dtype: 'data' is {data.dtype}, CIFAR-10 stores uint8")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be [n, 3072], got shape {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"image/label count mismatch in {path}: {data.shape[0]} images, {labels.size} labels"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar_binary_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary batch (records of 1 label byte + 3072 pixel bytes)."""
    path = Path(path)
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise ValueError(
            f"{path}: truncated CIFAR-10 binary batch: {raw.size} bytes is not a "
            "positive multiple of the 3073-byte record"
        )
    rec = raw.reshape(-1, 3073)
    return rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[:, 0]


def _cifar_class_names(directory: Path, default: tuple[str, ...]) -> tuple[str, ...]:
    meta = directory / "batches.meta"
    if not meta.is_file():
        return default
    names_raw = _unpickle(meta).get("label_names")
    if names_raw is None:
        return default
    if not isinstance(names_raw, list | tuple) or not all(
        isinstance(n, bytes | str) for n in names_raw
    ):
        raise ValueError(
            f"{meta}: 'label_names' must be a list of strings, got {type(names_raw).__name__}"
        )
    if len(names_raw) != len(default):
        raise ValueError(
            f"{meta}: 'label_names' must name {len(default)} classes, got {len(names_raw)}"
        )
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names_raw)


def _load_cifar_split(directory: Path, spec: DatasetSpec, split: str) -> ImageDataset | None:
    names = _CIFAR_TRAIN if split == "train" else _CIFAR_TEST
    # (folder, file suffix, reader): the python batches, extracted or flat, then binary ones.
    layouts = (
        (directory / "cifar-10-batches-py", "", read_cifar_python_batch),
        (directory, "", read_cifar_python_batch),
        (directory / "cifar-10-batches-bin", ".bin", read_cifar_binary_batch),
    )
    for d, suffix, reader in layouts:
        paths = [d / f"{n}{suffix}" for n in names]
        if not any(p.is_file() for p in paths):
            continue
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"incomplete CIFAR-10 directory {d}: missing {', '.join(missing)}")
        parts = [reader(p) for p in paths]
        spec = spec._replace(class_names=_cifar_class_names(d, spec.class_names))
        src = str(d)
        return _validated(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            spec,
            src,
            src,
            src,
        )
    return None


# ----------------------------------------------------------------------------- TFDS bridge


def _load_tfds(
    spec: DatasetSpec, split: str, *, download: bool, tfds_data_dir: str | None
) -> ImageDataset:
    import tensorflow_datasets as tfds

    source = tfds.data_source(spec.name, split=split, download=download, data_dir=tfds_data_dir)
    n = len(source)
    images = np.empty((n, *spec.image_shape), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    for i in range(n):
        example = source[i]
        images[i] = example["image"]
        labels[i] = example["label"]
    return _validated(
        images, labels, spec, f"tfds:{spec.name}", f"tfds:{spec.name}", f"tfds:{spec.name}"
    )


# ----------------------------------------------------------------------------- load()


def candidate_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The local directories :func:`load` searches for ``name``, in order."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / name]
    env = os.environ.get("MLJAX_DATA_DIR")
    if env:
        dirs.append(Path(env) / name)
    dirs.append(Path.home() / ".cache" / "mljax" / name)
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return dirs


def how_to_obtain(name: str) -> str:
    """Exact instructions for getting ``name`` onto this machine."""
    spec = DATASETS[name]
    if spec.file_format == "idx":
        layout = (
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
        )
    else:
        layout = (
            "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} "
            "(the extracted cifar-10-python.tar.gz)"
        )
    lines = [f"How to obtain {name}:"]
    if name == "fashion_mnist":
        lines.append("  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist")
    lines += [
        f'  - tensorflow-datasets, on a machine with internet: python -c "import tensorflow_datasets '
        f"as tfds; tfds.data_source('{name}', download=True)\" (prepares ~/tensorflow_datasets/{name}; "
        "copy that directory here or set TFDS_DATA_DIR)",
        f"  - original files: put {layout} in $MLJAX_DATA_DIR/{name}/ or ~/.cache/mljax/{name}/, "
        "or pass --data-dir DIR",
    ]
    return "\n".join(lines)


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    tfds_data_dir: str | None = None,
) -> ImageDataset:
    """Loads one split of an image dataset (see the module docstring for the search order).

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        split: ``"train"`` or ``"test"``.
        data_dir: a directory holding the original files (or ``<name>/`` with them).
        download: let tensorflow-datasets download the data if it is not prepared.
        tfds_data_dir: tensorflow-datasets' data directory (default: its own).

    Returns:
        An :class:`ImageDataset` with uint8 images ``[n, h, w, c]`` and int32 labels.

    Raises:
        ValueError: unknown name or split, or a corrupt file (the message names it).
        DatasetNotFoundError: found nowhere; lists every place looked and how to get it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    spec = DATASETS[name]
    reader = _load_idx_split if spec.file_format == "idx" else _load_cifar_split
    looked: list[str] = []
    for d in candidate_dirs(name, data_dir):
        looked.append(f"{d} (original files)")
        if d.is_dir():
            found = reader(d, spec, split)
            if found is not None:
                return found
    tfds_where = tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    looked.append(f"tensorflow-datasets '{name}' in {tfds_where} (download={download})")
    try:
        return _load_tfds(spec, split, download=download, tfds_data_dir=tfds_data_dir)
    except ValueError:
        raise
    except Exception as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        looked[-1] += f" -> {reason}"
    raise DatasetNotFoundError(
        f"dataset {name!r} (split {split!r}) was found nowhere. Looked in:\n"
        + "\n".join(f"  - {p}" for p in looked)
        + "\n"
        + how_to_obtain(name)
    )


def load_splits(name: str, splits: Sequence[str] = SPLITS, **kwargs) -> dict[str, ImageDataset]:
    """Loads several splits of one dataset: ``{split: ImageDataset}``."""
    return {s: load(name, s, **kwargs) for s in splits}
