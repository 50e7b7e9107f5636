"""Run the CUDA kernels on the CPU: kernels.cu compiled by g++ behind a tiny shim.

The shim makes ``__global__`` and ``__device__`` vanish and pins threadIdx/blockIdx to 0 and
blockDim/gridDim to 1, so each kernel's grid-stride loop visits every index in turn on
one thread. :func:`emulated` returns kernels.py's own :class:`Kernels` wrappers with a
ctypes launcher, so the host-side code (shapes, argument order and types) under test is
the code that runs on the GPU; only the launch differs. Test helper, not a test file.
"""
from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from backlink.backends.cupy_backend.kernels import Kernels, source

__all__ = ["SHIM", "emulated", "compile_on_cpu"]

SHIM = r"""
struct emulated_dim3 { unsigned x, y, z; };
static const emulated_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
static const emulated_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__
"""
# -ffp-contract=off: no fused multiply-add, as NVRTC with --fmad=false and as NumPy.
GXX_FLAGS = ("-O1", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror", "-x", "c++")


def _require_gxx() -> str:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("the CUDA kernel emulator needs g++ on PATH")
    return gxx


@functools.cache
def compile_on_cpu(text: str) -> ctypes.CDLL:
    """Compile CUDA source ``text`` (one dtype) with the shim into a loaded shared library."""
    gxx = _require_gxx()
    with tempfile.TemporaryDirectory(prefix="backlink-cuda-emu-") as tmp:
        src, lib = Path(tmp) / "kernels.cpp", Path(tmp) / "kernels.so"
        src.write_text(SHIM + text)
        done = subprocess.run([gxx, *GXX_FLAGS, str(src), "-o", str(lib)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"g++ rejected the kernels:\n{done.stderr}")
        return ctypes.CDLL(str(lib))  # loaded: the file may go with the directory


_C_SCALARS = {np.int64: ctypes.c_longlong, np.float32: ctypes.c_float, np.float64: ctypes.c_double}


def _c_arg(a):
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    if type(a) in _C_SCALARS:
        return _C_SCALARS[type(a)](a)
    raise TypeError(f"the emulator passes ndarrays, np.int64, np.float32, np.float64; got {type(a).__name__}")


def emulated(source_for: Callable[[np.dtype], str] = source) -> Kernels:
    """kernels.py's wrappers on NumPy arrays, the kernels from ``source_for(dtype)`` run by g++."""
    _require_gxx()

    def launch(name, dtype, n, *args):
        function = getattr(compile_on_cpu(source_for(dtype)), name)
        function.restype = None
        function(ctypes.c_longlong(n), *(_c_arg(a) for a in args))

    return Kernels(launch)
