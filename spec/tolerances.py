"""BL-5: the dtype-keyed tolerance table for comparing continuous values.

Discrete things (reach sets, events, shapes) compare exactly. Arrays compare with
``|a - b| <= atol + rtol * |b|`` elementwise, ``b`` the reference value. ``steps``
values allow the error of several optimizer steps to compound.
"""
from __future__ import annotations

__all__ = ["TOLERANCES", "tolerance"]

TOLERANCES = {
    #            (rtol,  atol)
    "float64": {"grad": (1e-9, 1e-11), "params": (1e-9, 1e-11), "steps": (1e-7, 1e-9)},
    "float32": {"grad": (2e-3, 2e-5), "params": (1e-4, 1e-6), "steps": (5e-3, 5e-5)},
}


def tolerance(dtype: str, what: str = "grad") -> tuple[float, float]:
    """(rtol, atol) for comparing ``what`` ('grad', 'params', 'steps') in ``dtype``."""
    return TOLERANCES[str(dtype)][what]
