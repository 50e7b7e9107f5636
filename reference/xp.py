"""One code path for NumPy and CuPy: the array namespace comes from the arrays."""
from __future__ import annotations

import numpy as np

__all__ = ["array_namespace", "to_host", "namespace_for"]


def array_namespace(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (CuPy is never imported eagerly)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def namespace_for(device: str):
    """The namespace for a device name: 'cpu' -> numpy, 'cuda'/'gpu' -> cupy (clear error if absent)."""
    if device == "cpu":
        return np
    if device in ("cuda", "gpu"):
        try:
            import cupy
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise RuntimeError("field 'device' is 'cuda' but CuPy is not installed: "
                               "pip install 'backlink[cupy]' on a machine with a CUDA GPU") from e
        return cupy
    raise ValueError(f"field 'device' is {device!r}; allowed: 'cpu', 'cuda'")


def to_host(a):
    """A NumPy copy/view of ``a`` (NumPy or CuPy array, or scalar)."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)
