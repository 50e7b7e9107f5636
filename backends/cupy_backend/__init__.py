"""CuPy backend: the reference engine on a CUDA GPU, by the same code path (``xp = cupy``).

Importing this module never imports CuPy; creating :class:`CupyBackend` does, and fails
with a clear message when CuPy or a GPU is missing. Results come back to the host only
in the :class:`~backlink.spec.StepRecord`; the runner's state lives on the device
(``array_module`` lets the conformance suite check that nothing fell back to NumPy).
"""
from __future__ import annotations

from backlink.reference.backend import ReferenceBackend
from backlink.reference.xp import require_cupy
from backlink.spec import Capabilities

__all__ = ["CupyBackend", "require_gpu"]


#: The ``cupy`` module once a CUDA device is checked usable (clear DeviceUnavailable otherwise).
require_gpu = require_cupy


class CupyBackend(ReferenceBackend):
    """The reference implementation with ``xp = cupy`` (BL-6)."""

    name = "cupy"
    capabilities = Capabilities(devices=("cuda",), primitives=True,
                                schedules=ReferenceBackend.capabilities.schedules)

    def __init__(self):
        self.xp = require_gpu()

    @property
    def array_module(self):
        return self.xp

    @property
    def version(self) -> str:
        return f"0.1.0 (cupy {self.xp.__version__})"
