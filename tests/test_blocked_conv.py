"""The blocked convolution (groups of images, optional worker threads) equals the one-block one.

reference/conv.py builds the patch matrix of a few images at a time (COLUMN_BYTES)
and, inside ``parallel.threads(n)``, shares the groups among n threads. Tiny gradcheck
inputs fit in one group, so these tests force one image per group and compare with the
whole batch in one group; then with 2 threads, which must give the very same numbers.
Every test runs with both patch designs: im2col, and row patches (stride 1 only; used by
default on large images, forced here by ROWS_PER_DROPPED = 0), which must agree.
"""
import numpy as np
import pytest

from backlink.reference import conv, parallel, primitives
from backlink.reference.gradcheck import check_primitive

CASES = [  # (x shape, kernel, out channels, stride, padding)
    ((5, 7, 6, 3), 3, 4, 1, 1), ((5, 7, 6, 3), 3, 4, 2, 1), ((4, 8, 8, 2), 1, 3, 2, 0),
    ((3, 9, 9, 2), 3, 2, 1, 0), ((3, 7, 5, 2), 2, 3, 3, 1), ((4, 6, 6, 3), 3, 2, 1, 2),
]


def conv_all(x, w, k, o, stride, pad, g):
    y, saved = conv.conv2d(x, w, kernel=k, out=o, stride=stride, padding=pad)
    dx, dw = conv.conv2d_vjp(saved, g)
    return y, dx, dw, conv.conv2d_dx(saved, g)[0], conv.conv2d_dw(saved, g)[0]


def arrays(case, dtype, seed=0):
    shape, k, o, stride, pad = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((k, k, shape[3], o)).astype(dtype)
    ho, wo = ((s + 2 * pad - k) // stride + 1 for s in shape[1:3])
    return x, w, rng.standard_normal((shape[0], ho, wo, o)).astype(dtype)


@pytest.fixture(params=["im2col", "rows"], autouse=True)
def design(request, monkeypatch):
    """The patch design of stride-1 convolutions: im2col everywhere, or row patches everywhere."""
    monkeypatch.setattr(conv, "ROWS_PER_DROPPED", 10 ** 9 if request.param == "im2col" else 0)
    monkeypatch.setattr(conv, "ROW_CHANNELS", 0)
    return request.param


@pytest.fixture
def one_image_per_group(monkeypatch):
    monkeypatch.setattr(conv, "COLUMN_BYTES", 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", [c for c in CASES if c[3] == 1] + [((2, 17, 18, 3), 3, 5, 1, 1)])
def test_row_patches_equal_im2col(case, dtype, monkeypatch):
    x, w, g = arrays(case, dtype, seed=4)
    _, k, o, stride, pad = case
    monkeypatch.setattr(conv, "ROWS_PER_DROPPED", 10 ** 9)
    cols = conv_all(x, w, k, o, stride, pad, g)
    monkeypatch.setattr(conv, "ROWS_PER_DROPPED", 0)
    assert conv._row_plan(x, k, stride, pad)
    rows = conv_all(x, w, k, o, stride, pad, g)
    eps = np.finfo(dtype).eps
    for name, a, b in zip(("y", "dx", "dw", "dx alone", "dw alone"), cols, rows):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(b, a, rtol=64 * eps, atol=64 * eps * np.abs(a).max(), err_msg=name)


def test_large_images_take_row_patches_small_ones_im2col(monkeypatch):
    monkeypatch.undo()  # the module's own setting, not the design fixture's
    big, small, thin = np.zeros((1, 16, 16, 8)), np.zeros((1, 15, 16, 8)), np.zeros((1, 16, 16, 7))
    assert conv._row_plan(big, 3, 1, 1) and conv._row_plan(big, 1, 1, 0)
    assert not conv._row_plan(small, 3, 1, 1) and not conv._row_plan(big, 3, 2, 1)
    assert not conv._row_plan(thin, 3, 1, 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_groups_of_one_image_equal_one_group(case, dtype, monkeypatch):
    x, w, g = arrays(case, dtype)
    _, k, o, stride, pad = case
    whole = conv_all(x, w, k, o, stride, pad, g)
    assert len(conv._groups(x, 1, 1)) == 1
    monkeypatch.setattr(conv, "COLUMN_BYTES", 1)
    assert len(conv._groups(x, 1, 1)) == x.shape[0]
    blocked = conv_all(x, w, k, o, stride, pad, g)
    eps = np.finfo(dtype).eps
    for name, a, b in zip(("y", "dx", "dw", "dx alone", "dw alone"), whole, blocked):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(b, a, rtol=64 * eps, atol=64 * eps * np.abs(a).max(), err_msg=name)
    np.testing.assert_array_equal(blocked[1], blocked[3])  # the halves are the VJP's parts
    np.testing.assert_array_equal(blocked[2], blocked[4])


@pytest.mark.parametrize("case", CASES)
def test_two_threads_give_the_same_bits(case, one_image_per_group):
    pytest.importorskip("threadpoolctl")
    x, w, g = arrays(case, "float32", seed=1)
    _, k, o, stride, pad = case
    serial = conv_all(x, w, k, o, stride, pad, g)
    with parallel.threads(2):
        assert parallel.active_threads() == 2
        threaded = conv_all(x, w, k, o, stride, pad, g)
    assert parallel.active_threads() == 1
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", CASES[:3])
def test_blocked_gradcheck(case, one_image_per_group):
    """Finite differences in float64 with a random cotangent, one image per group."""
    x, w, _ = arrays(case, "float64", seed=2)
    _, k, o, stride, pad = case
    check_primitive("conv2d", [x, w], seed=3, kernel=k, out=o, stride=stride, padding=pad)


def test_threads_rejects_a_bad_count():
    with pytest.raises(ValueError, match="threads"):
        with parallel.threads(0):
            pass


def test_batchnorm_and_relu_give_the_same_bits_on_two_threads(monkeypatch):
    """Their row blocks (forced small here) are shared among the threads; sums in block order."""
    pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(primitives, "ROW_BYTES", 64)
    rng = np.random.default_rng(5)
    x, g = (rng.standard_normal((6, 5, 4, 3)).astype("float32") for _ in range(2))
    gamma, beta = rng.standard_normal(3).astype("float32"), rng.standard_normal(3).astype("float32")

    def both():
        y, saved = primitives.batchnorm(x, gamma, beta, np.zeros(3, "float32"), np.ones(3, "float32"))
        r, mask = primitives.relu(x)
        return (y, *primitives.batchnorm_vjp(saved, g), r, *primitives.relu_vjp(mask, g))

    assert len(primitives._row_blocks(x.reshape(-1, 3))) > 2
    serial = both()
    with parallel.threads(2):
        threaded = both()
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)
