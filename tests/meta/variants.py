"""Correct backends with reduced capabilities, for the plugin's own tests (not mutants)."""
from __future__ import annotations

import dataclasses

import numpy as np

from tests.meta.isolated import Mutant

__all__ = ["Float64Only", "NoPrimitives", "HostPretendingCuda"]


class Float64Only(Mutant):
    """Declares float64 only: every float32 test must be skipped with a reason."""

    def __init__(self):
        super().__init__()
        self.capabilities = dataclasses.replace(self.capabilities, dtypes=("float64",))


class NoPrimitives(Mutant):
    """Has no primitive hook: the BL-2.2 tests must be skipped with a reason."""

    def __init__(self):
        super().__init__()
        self.capabilities = dataclasses.replace(self.capabilities, primitives=False)


class HostPretendingCuda(Mutant):
    """Declares 'cuda' but computes with NumPy on the host: the device check must fail."""

    array_module = np

    def __init__(self):
        super().__init__()
        self.capabilities = dataclasses.replace(self.capabilities, devices=("cpu", "cuda"))
