"""Hand-written CUDA kernels for the hot primitives of the CuPy backend.

Each kernel replaces a composition of xp operations by one launch that reads its
inputs once and writes its outputs once (all are memory-bound, so passes are the cost):

* ``im2col``: the xp path zero-fills a padded copy, copies ``x`` into it, then copies
  the strided patch view into ``cols`` (3 launches, 2 full temporaries); fused: one
  gather, the border is read as 0 and never stored.
* ``col2im``: conv2d_vjp's stride > 1 loop is k*k strided read-modify-write launches
  over the whole padded ``dx`` plus a zero fill and a crop; fused: one gather per input
  element, summing its taps in the same order.
* ``bn_normalize`` / ``bn_backward_dx``: 4 elementwise launches each, every one a full
  read and write of the (M, C) activations; fused: one pass with two outputs / one.
* ``relu``: ``maximum`` then ``y > 0``; fused: value and mask in one pass.
* ``maxpool``: a transposed copy of the windows, ``argmax``, ``take_along_axis``;
  fused: one scan of each window writing value and arg.
* ``maxpool_vjp``: a k*k one-hot, a k*k product, a transposed copy and a zero-padded
  copy; fused: one gather per input element.

Arithmetic follows reference/primitives.py and conv.py operation by operation, and NVRTC compiles
with ``--fmad=false``, so results match the NumPy reference bit for bit.

The wrappers live on :class:`Kernels`, parameterised by a launcher ``launch(name,
dtype, n, *args)``; the module-level functions use the CuPy launcher, and
tests/cuda_emulator.py supplies a ctypes one running the same source compiled by g++
on the CPU, so CI tests these very wrappers. Importing this module never imports CuPy.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np

from backlink.reference.xp import array_namespace

__all__ = ["SOURCE_PATH", "KERNEL_NAMES", "NVRTC_OPTIONS", "Kernels", "ON_GPU", "source", "launch_cupy",
           "im2col", "col2im", "bn_normalize", "bn_backward_dx", "relu", "maxpool", "maxpool_vjp"]

SOURCE_PATH = Path(__file__).with_name("kernels.cu")
KERNEL_NAMES = ("im2col", "col2im", "bn_normalize", "bn_backward_dx", "relu", "maxpool", "maxpool_backward")
#: No fused multiply-add: a*b+c rounds twice, as NumPy's two ufunc calls do.
NVRTC_OPTIONS = ("--fmad=false",)
_C_TYPES = {"float32": "float", "float64": "double"}
_THREADS = 256
_MAX_BLOCKS = 65536  # enough to fill any current GPU; the grid-stride loop covers the rest

Launcher = Callable[..., None]  # launch(name, dtype, n, *args): run kernel `name` over n outputs


def _dtype_name(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _C_TYPES:
        raise ValueError(f"CUDA kernels: dtype is {name!r}; allowed: 'float32', 'float64'")
    return name


@functools.cache
def _kernel_text() -> str:
    return SOURCE_PATH.read_text()


def source(dtype) -> str:
    """The CUDA source for element type ``dtype``: ``typedef <c type> T;`` + kernels.cu."""
    return f"typedef {_C_TYPES[_dtype_name(dtype)]} T;\n" + _kernel_text()


# --- the CuPy launcher --------------------------------------------------------------

@functools.cache
def _module(dtype_name: str):
    import cupy

    return cupy.RawModule(code=source(dtype_name), options=NVRTC_OPTIONS)


@functools.cache
def _function(name: str, dtype_name: str):
    return _module(dtype_name).get_function(name)


def launch_cupy(name: str, dtype, n: int, *args) -> None:
    """Launch ``name`` for ``dtype`` over ``n`` outputs: 256 threads, a capped grid."""
    blocks = min(-(-n // _THREADS), _MAX_BLOCKS)
    _function(name, _dtype_name(dtype))((blocks,), (_THREADS,), (np.int64(n),) + args)


# --- the wrappers ---------------------------------------------------------------------

def _i64(*values) -> tuple:
    return tuple(np.int64(v) for v in values)


def _check_args(name, dtype, args):
    """RawKernel passes a scalar by its NumPy size and never checks it against the C
    signature (a Python float would arrive as a double): only np.int64 and T pass."""
    scalar_types = (np.int64, dtype.type)
    for i, a in enumerate(args):
        if type(a) in scalar_types:
            continue
        if isinstance(a, np.generic) or not hasattr(a, "flags") or not a.flags.c_contiguous:
            raise TypeError(f"kernel {name}: argument {i} is {type(a).__name__}; "
                            f"allowed: C-contiguous arrays, np.int64, np.{dtype.name}")
        if a.dtype not in (dtype, np.int64, np.bool_):
            raise TypeError(f"kernel {name}: argument {i} has dtype {a.dtype}; "
                            f"allowed: {dtype} (the kernel's T), int64, bool")


def _out_size(size, k, stride, pad, field):
    out = (size + 2 * pad - k) // stride + 1
    if out < 1:
        raise ValueError(f"{field}: {size} + 2*padding {pad} is smaller than kernel {k}")
    return out


class Kernels:
    """The kernel wrappers on arrays of one namespace, launched by ``launch``."""

    def __init__(self, launch: Launcher):
        self._launch = launch

    def _call(self, name, dtype, n, *args):
        _check_args(name, dtype, args)
        if n > 0:
            self._launch(name, dtype, n, *args)

    @staticmethod
    def _prepare(*arrays):
        xp = array_namespace(*arrays)
        arrays = tuple(xp.ascontiguousarray(a) for a in arrays)
        return xp, np.dtype(_dtype_name(arrays[0].dtype)), arrays

    def im2col(self, x, k, stride, pad):
        """(N*Ho*Wo, k*k*C) patches of ``x`` zero-padded by ``pad``, and (n, ho, wo)."""
        xp, dtype, (x,) = self._prepare(x)
        n, h, w, c = x.shape
        ho, wo = _out_size(h, k, stride, pad, "height"), _out_size(w, k, stride, pad, "width")
        cols = xp.empty((n * ho * wo, k * k * c), dtype)
        self._call("im2col", dtype, cols.size, x, cols, *_i64(h, w, c, ho, wo, k, stride, pad))
        return cols, (n, ho, wo)

    def col2im(self, dcols, x_shape, k, stride, pad):
        """The cotangent of im2col: each element of x sums the dcols taps that read it."""
        xp, dtype, (dcols,) = self._prepare(dcols)
        n, h, w, c = x_shape
        ho, wo = _out_size(h, k, stride, pad, "height"), _out_size(w, k, stride, pad, "width")
        if dcols.size != n * ho * wo * k * k * c:
            raise ValueError(f"col2im: dcols has {dcols.size} elements; x_shape {tuple(x_shape)} "
                             f"with kernel {k} needs (N*Ho*Wo, k*k*C) = ({n * ho * wo}, {k * k * c})")
        dx = xp.empty(tuple(x_shape), dtype)
        self._call("col2im", dtype, dx.size, dcols, dx, *_i64(h, w, c, ho, wo, k, stride, pad))
        return dx

    def bn_normalize(self, x2, mu, inv, gamma, beta):
        """xhat = (x2 - mu) * inv and out = xhat * gamma + beta, both (M, C)."""
        xp, dtype, (x2, mu, inv, gamma, beta) = self._prepare(x2, mu, inv, gamma, beta)
        xhat, out = xp.empty(x2.shape, dtype), xp.empty(x2.shape, dtype)
        self._call("bn_normalize", dtype, x2.size, x2, mu, inv, gamma, beta, xhat, out,
                   np.int64(x2.shape[1]))
        return xhat, out

    def bn_backward_dx(self, g2, xhat, dgamma, dbeta, gamma, inv):
        """Training-mode batch-norm dx (M, C), batchnorm_vjp's formula and order."""
        xp, dtype, (g2, xhat, dgamma, dbeta, gamma, inv) = self._prepare(g2, xhat, dgamma, dbeta, gamma, inv)
        m, c = xhat.shape
        dx = xp.empty(xhat.shape, dtype)
        self._call("bn_backward_dx", dtype, dx.size, g2, xhat, dgamma, dbeta, gamma, inv, dx,
                   np.int64(c), dtype.type(m))
        return dx

    def relu(self, x):
        """(maximum(x, 0), x > 0) in one pass."""
        xp, dtype, (x,) = self._prepare(x)
        y, mask = xp.empty(x.shape, dtype), xp.empty(x.shape, xp.bool_)
        self._call("relu", dtype, x.size, x, y, mask)
        return y, mask

    def maxpool(self, x, size):
        """Window = stride = size; (y, arg), arg int64 (n, ho, wo, c), the tap in row-major order."""
        xp, dtype, (x,) = self._prepare(x)
        n, h, w, c = x.shape
        ho, wo = h // size, w // size
        y, arg = xp.empty((n, ho, wo, c), dtype), xp.empty((n, ho, wo, c), xp.int64)
        self._call("maxpool", dtype, y.size, x, y, arg, *_i64(h, w, c, ho, wo, size))
        return y, arg

    def maxpool_vjp(self, g, arg, x_shape, size):
        """dx of shape x_shape: g routed to each window's winning tap, 0 elsewhere."""
        xp, dtype, (g, arg) = self._prepare(g, arg)
        n, h, w, c = x_shape
        ho, wo = h // size, w // size
        if g.shape != (n, ho, wo, c) or arg.shape != g.shape or arg.dtype != np.int64:
            raise ValueError(f"maxpool_vjp: g {g.shape} and arg {arg.shape} ({arg.dtype}) must be "
                             f"{(n, ho, wo, c)} (arg int64) for x_shape {tuple(x_shape)}, size {size}")
        dx = xp.empty(tuple(x_shape), dtype)
        self._call("maxpool_backward", dtype, dx.size, g, arg, dx, *_i64(h, w, c, ho, wo, size))
        return dx


#: The wrappers on CuPy arrays (what reference/primitives.py and conv.py call through ``kernels_for``).
ON_GPU = Kernels(launch_cupy)
im2col = ON_GPU.im2col
col2im = ON_GPU.col2im
bn_normalize = ON_GPU.bn_normalize
bn_backward_dx = ON_GPU.bn_backward_dx
relu = ON_GPU.relu
maxpool = ON_GPU.maxpool
maxpool_vjp = ON_GPU.maxpool_vjp
