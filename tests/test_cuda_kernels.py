"""The CUDA kernels of the CuPy backend against the NumPy primitives they replace.

Every comparison runs twice: on the CPU through tests/cuda_emulator.py (kernels.cu
compiled by g++, kernels.py's own wrappers; runs in CI) and on a GPU through CuPy
(skips without one). Gathers and the col2im sum compare exactly; the arithmetic
kernels too on the CPU (same operations, no FMA), within a few ulps on the GPU.
``nvcc --ptx`` is the CUDA syntax check. A mutant kernel proves the comparisons bite.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from backlink.backends.cupy_backend import kernels
from backlink.reference.conv import _im2col, conv2d_vjp
from backlink.reference.primitives import batchnorm, batchnorm_vjp, maxpool, maxpool_vjp, relu
from cuda_emulator import emulated

DTYPES = ("float32", "float64")


def _gpu():
    cupy = pytest.importorskip("cupy", reason="needs CuPy and a CUDA GPU")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("needs CuPy and a CUDA GPU (no device)")
    except cupy.cuda.runtime.CUDARuntimeError as e:
        pytest.skip(f"needs CuPy and a CUDA GPU ({e})")
    return SimpleNamespace(k=kernels, put=cupy.asarray, get=cupy.asnumpy, exact=False)


@pytest.fixture(scope="module", params=["cpu-emulator", "gpu"])
def impl(request):
    """The kernel wrappers and how arrays go to (put) and come back from (get) them."""
    if request.param == "gpu":
        return _gpu()
    return SimpleNamespace(k=emulated(), put=lambda a: a, get=np.asarray, exact=True)


def close(impl, got, ref):
    """Arithmetic results: bit for bit on the CPU, within 4 ulps of the scale on the GPU."""
    got = impl.get(got)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    if impl.exact:
        np.testing.assert_array_equal(got, ref)
    else:
        eps = np.finfo(ref.dtype).eps
        np.testing.assert_allclose(got, ref, rtol=4 * eps, atol=4 * eps * max(1.0, np.abs(ref).max()))


def same(impl, got, ref):
    """Gathers: exactly the reference's values, dtype and shape."""
    got = impl.get(got)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def rand(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- im2col / col2im ---------------------------------------------------------------

CONV_CASES = [  # (x shape, kernel, stride, padding)
    ((2, 5, 5, 3), 3, 1, 1), ((2, 7, 6, 4), 3, 2, 1), ((1, 8, 8, 2), 2, 2, 0),
    ((2, 5, 7, 3), 3, 3, 2), ((1, 9, 9, 2), 3, 2, 0), ((3, 4, 4, 5), 1, 1, 0), ((1, 6, 5, 1), 2, 3, 1),
]


def check_im2col(impl, x, k, stride, pad):
    cols, shape = impl.k.im2col(impl.put(x), k, stride, pad)
    ref, ref_shape = _im2col(x, k, stride, pad)
    assert shape == ref_shape
    same(impl, cols, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,stride,pad", CONV_CASES)
def test_im2col(impl, dtype, shape, k, stride, pad):
    check_im2col(impl, rand(shape, dtype, 0), k, stride, pad)


def test_im2col_of_a_view(impl):
    x = rand((2, 6, 6, 3), "float32", 1)[:, ::-1, 1:]  # not C-contiguous
    check_im2col(impl, x, 3, 2, 1)


def conv_dx(x_shape, k, stride, pad, dtype, seed):
    """conv2d_vjp's dx and the dcols it scatters (the same GEMM, so col2im can be exact)."""
    x, w = rand(x_shape, dtype, seed), rand((k, k, x_shape[3], 4), dtype, seed + 1)
    _, (n, ho, wo) = _im2col(x, k, stride, pad)
    g = rand((n, ho, wo, 4), dtype, seed + 2)
    dx, _ = conv2d_vjp((x, w, stride, pad), g)
    return dx, g.reshape(-1, 4) @ w.reshape(-1, 4).T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,stride,pad", [c for c in CONV_CASES if c[2] > 1])
def test_col2im_equals_the_strided_loop(impl, dtype, shape, k, stride, pad):
    ref, dcols = conv_dx(shape, k, stride, pad, dtype, 3)
    same(impl, impl.k.col2im(impl.put(dcols), shape, k, stride, pad), ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,stride,pad", [c for c in CONV_CASES if c[2] == 1])
def test_col2im_stride_1_matches_the_transposed_convolution(impl, dtype, shape, k, stride, pad):
    ref, dcols = conv_dx(shape, k, stride, pad, dtype, 4)  # another summation order: tolerance
    got = impl.get(impl.k.col2im(impl.put(dcols.reshape(-1)), shape, k, stride, pad))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, ref, rtol=64 * eps, atol=64 * eps * np.abs(ref).max())


def test_col2im_rejects_a_wrong_size(impl):
    with pytest.raises(ValueError, match="dcols"):
        impl.k.col2im(impl.put(np.zeros((5, 9), np.float32)), (1, 4, 4, 1), 3, 1, 1)


# --- batch norm ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 3, 5), (2, 1, 1, 7), (7, 2, 5, 3)])
def test_batchnorm_forward_and_backward(impl, dtype, shape):
    c = shape[-1]
    x, g = rand(shape, dtype, 5) * 3 + 1, rand(shape, dtype, 6)
    gamma, beta = rand((c,), dtype, 7), rand((c,), dtype, 8)
    out, saved = batchnorm(x, gamma, beta, np.zeros(c, dtype), np.ones(c, dtype), training=True)
    xhat, _, inv, _, mu, _ = saved
    got_xhat, got_out = impl.k.bn_normalize(*map(impl.put, (x.reshape(-1, c), mu, inv, gamma, beta)))
    close(impl, got_xhat, xhat)
    close(impl, got_out, out.reshape(-1, c))
    dx, dgamma, dbeta = batchnorm_vjp(saved, g)
    got_dx = impl.k.bn_backward_dx(*map(impl.put, (g.reshape(-1, c), xhat, dgamma, dbeta, gamma, inv)))
    close(impl, got_dx, dx.reshape(-1, c))


def test_batchnorm_rejects_mixed_dtypes(impl):
    x2, v = np.zeros((4, 3), np.float32), np.zeros(3, np.float64)
    with pytest.raises(TypeError, match="float64"):
        impl.k.bn_normalize(*map(impl.put, (x2, v, v, v, v)))


# --- relu -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(impl, dtype):
    x = rand((3, 4, 5, 6), dtype, 9)
    x.flat[:4] = [0.0, -0.0, np.nan, -np.inf]
    y, mask = impl.k.relu(impl.put(x))
    ref_y, ref_mask = relu(x)
    same(impl, y, ref_y)
    same(impl, mask, ref_mask)


# --- max pool -------------------------------------------------------------------------

POOL_CASES = [((2, 4, 4, 3), 2), ((2, 5, 7, 3), 2), ((1, 7, 8, 2), 3), ((2, 3, 3, 4), 3), ((1, 6, 6, 2), 1)]


def pool_input(shape, dtype, seed, ties):
    rng = np.random.default_rng(seed)
    # small integers: many windows hold their maximum twice or more (first one wins)
    return (rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,size", POOL_CASES)
def test_maxpool_forward_and_backward(impl, dtype, ties, shape, size):
    x = pool_input(shape, dtype, 10, ties)
    ref, saved = maxpool(x, size=size)
    y, arg = impl.k.maxpool(impl.put(x), size)
    same(impl, y, ref)
    same(impl, arg, saved[2].astype(np.int64))
    g = rand(ref.shape, dtype, 11)
    (ref_dx,) = maxpool_vjp(saved, g)
    same(impl, impl.k.maxpool_vjp(impl.put(g), arg, shape, size), ref_dx)


def test_maxpool_nan_wins_as_in_argmax(impl):
    x = pool_input((1, 4, 4, 2), "float64", 12, ties=False)
    x[0, 1, 1, 0] = x[0, 1, 0, 0] = np.nan  # first NaN of the window (tap 2) wins
    y, arg = impl.k.maxpool(impl.put(x), 2)
    ref, saved = maxpool(x, size=2)
    same(impl, y, ref)
    same(impl, arg, saved[2])
    assert impl.get(arg)[0, 0, 0, 0] == 2


def test_gpu_grid_stride_loop_covers_more_than_the_capped_grid():
    gpu = _gpu()
    x = rand((kernels._THREADS * kernels._MAX_BLOCKS + 1000,), "float32", 14)
    y, mask = gpu.k.relu(gpu.put(x))
    ref_y, ref_mask = relu(x)
    same(gpu, y, ref_y)
    same(gpu, mask, ref_mask)


# --- argument discipline, source, CUDA syntax ---------------------------------------

def test_launch_arguments_must_have_exact_c_types():
    """RawKernel would pass a Python float as a double into a float slot: refuse it."""
    launched = []
    k = kernels.Kernels(lambda *a: launched.append(a))
    k.relu(np.ones(3, np.float32))
    assert launched and launched[0][:3] == ("relu", np.float32, 3)
    for bad in (3, 1.5, np.float64(1.5), np.int32(3), np.ones(4, np.float32)[::2]):
        with pytest.raises(TypeError, match="argument 0"):
            k._call("relu", np.dtype("float32"), 1, bad)


def test_dtype_must_be_float32_or_float64():
    with pytest.raises(ValueError, match="float32"):
        kernels.source("float16")
    with pytest.raises(ValueError, match="'int64'"):
        kernels.Kernels(lambda *a: None).relu(np.ones(3, np.int64))


def test_import_never_needs_cupy():
    code = "import sys, backlink.backends.cupy_backend.kernels as k; assert 'cupy' not in sys.modules; k.source('float32')"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvcc_compiles_every_kernel(dtype, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("the CUDA syntax check needs nvcc on PATH")
    src = tmp_path / "kernels.cu"
    src.write_text(kernels.source(dtype))
    done = subprocess.run([nvcc, "--ptx", "-arch=sm_90", *kernels.NVRTC_OPTIONS, str(src), "-o", str(tmp_path / "k.ptx")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    for name in kernels.KERNEL_NAMES:  # extern "C": the names get_function looks up
        assert f".entry {name}(" in ptx
    if dtype == "float32":  # no silent promotion to double (it would round differently)
        assert ".f64" not in ptx


# --- the tests can fail ---------------------------------------------------------------

def test_a_wrong_kernel_is_rejected():
    """im2col with its padding off by one, through the same wrapper and comparison."""
    def off_by_one(dtype):
        text = kernels.source(dtype)
        assert text.count("ho * stride + ki - pad;") == 1
        return text.replace("ho * stride + ki - pad;", "ho * stride + ki - pad + 1;")

    mutant = SimpleNamespace(k=emulated(off_by_one), put=lambda a: a, get=np.asarray, exact=True)
    with pytest.raises(AssertionError):
        check_im2col(mutant, rand((1, 5, 5, 2), "float64", 13), 3, 1, 1)


# --- the wiring: reference/primitives.py and conv.py routed through the kernels ----------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", ["cnn", "resnet8"])
def test_engine_through_emulated_kernels_is_bit_identical(monkeypatch, model, dtype):
    """BackLink gradients, losses and BN statistics of a whole step with every kernel
    dispatch point of primitives.py and conv.py taken (as on CuPy), against the plain NumPy path."""
    from backlink.reference import conv, primitives
    from backlink.reference.backlink import gradients
    from backlink.reference.models import build_model, init_params, make_partition
    from backlink.spec import Method

    kw = dict(input_shape=(9, 9, 3), num_classes=4)
    graph = build_model(model, **kw, **({"widths": (3, 4, 5), "granularity": "layer"} if model == "resnet8" else {}))
    part = make_partition(graph, (1, 2) if model == "cnn" else (3, 5))
    params, buffers = init_params(graph, part, seed=1, dtype=dtype)
    x = rand((5, 9, 9, 3), dtype, 2)
    y = np.arange(5) % 4
    method = Method("backlink", link_length=1, beta=0.5, allow_cross_module=True)
    plain_buffers, kernel_buffers = dict(buffers), dict(buffers)
    plain = gradients(graph, part, method, params, plain_buffers, x, y)
    calls = []
    emu = emulated()

    def route(module):
        def kernels_for(*arrays):
            calls.append(module.__name__)
            return emu
        return kernels_for
    for module in (conv, primitives):
        monkeypatch.setattr(module, "kernels_for", route(module))
    routed = gradients(graph, part, method, params, kernel_buffers, x, y)
    assert set(calls) == {conv.__name__, primitives.__name__}, "a module's primitives never asked for kernels"
    assert routed[1] == plain[1]
    assert routed[0].keys() == plain[0].keys()
    for k in plain[0]:
        np.testing.assert_array_equal(routed[0][k], plain[0][k], err_msg=k)
    for k in plain_buffers:
        np.testing.assert_array_equal(kernel_buffers[k], plain_buffers[k], err_msg=k)
