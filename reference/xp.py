"""One code path for NumPy and CuPy: the array namespace comes from the arrays."""
from __future__ import annotations

import importlib
import os

import numpy as np

__all__ = ["array_namespace", "to_host", "namespace_for", "require_cupy", "DeviceUnavailable", "kernels_for"]


def array_namespace(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (CuPy is never imported eagerly)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


#: Hand-written kernels per array namespace: module name -> (module, attribute) of a
#: ``Kernels`` object. NumPy has none: its path is the xp composition itself.
KERNELS = {"cupy": ("backlink.backends.cupy_backend.kernels", "ON_GPU")}


def kernels_for(*arrays):
    """The hand-written kernels for these arrays' namespace, or None (NumPy; or
    ``BACKLINK_CUDA_KERNELS=0``, which runs the plain xp path on the GPU for comparison)."""
    where = KERNELS.get(array_namespace(*arrays).__name__)
    if where is None or os.environ.get("BACKLINK_CUDA_KERNELS", "1") == "0":
        return None
    return getattr(importlib.import_module(where[0]), where[1])


class DeviceUnavailable(RuntimeError):
    """The asked-for device (CuPy, a CUDA GPU) is not on this machine; the message says what is missing."""


def require_cupy():
    """The ``cupy`` module, after checking that a CUDA device is usable (DeviceUnavailable if not)."""
    try:
        import cupy
    except ImportError as e:
        raise DeviceUnavailable("the GPU path (--backend cupy / --device cuda) needs CuPy and a CUDA GPU: "
                                "pip install 'backlink[cupy]' (cupy-cuda13x) on a machine with an NVIDIA "
                                "GPU, or use --backend numpy") from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise DeviceUnavailable(f"CuPy is installed but found no usable CUDA device ({e}); "
                                "use --backend numpy") from e
    if n < 1:
        raise DeviceUnavailable("CuPy is installed but found no CUDA device; use --backend numpy")
    return cupy


def namespace_for(device: str):
    """The namespace for a device name: 'cpu' -> numpy, 'cuda'/'gpu' -> cupy (clear error if absent)."""
    if device == "cpu":
        return np
    if device in ("cuda", "gpu"):
        return require_cupy()
    raise ValueError(f"field 'device' is {device!r}; allowed: 'cpu', 'cuda'")


def to_host(a):
    """A NumPy copy/view of ``a`` (NumPy or CuPy array, or scalar)."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)
