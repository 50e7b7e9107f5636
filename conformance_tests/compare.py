"""Assertions that name the clause, the array, the worst element and the tolerance (BL-5)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from backlink.spec import tolerance

__all__ = ["fail", "assert_close", "assert_maps_close", "assert_keys", "assert_equal", "check_against_reference"]


def fail(clause: str, message: str, case=None) -> None:
    __tracebackhide__ = True
    where = f"\n  case: {case.describe()}" if case is not None else ""
    raise AssertionError(f"{clause}: {message}{where}")


def assert_close(actual, expected, *, clause: str, name: str, dtype: str, what: str = "grad",
                 case=None, note: str = "") -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` elementwise, (rtol, atol) = tolerance(dtype, what)."""
    __tracebackhide__ = True
    rtol, atol = tolerance(dtype, what)
    a = np.asarray(actual)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        fail(clause, f"{name} has shape {a.shape}, expected {b.shape}{note}", case)
    err = np.abs(a.astype(np.float64) - b)
    bound = atol + rtol * np.abs(b)
    bad = ~(err <= bound)  # NaN counts as bad
    if bad.any():
        excess = np.where(np.isnan(err), np.inf, err - bound)
        idx = np.unravel_index(int(np.argmax(excess)), a.shape) if a.ndim else ()
        fail(clause, f"{name} differs from the expected value at index {tuple(int(i) for i in idx)}: "
                     f"got {float(a[idx])!r}, expected {float(b[idx])!r} (|diff| {err[idx]:.3g} > {atol:g} + {rtol:g}"
                     f" * |expected|; {int(bad.sum())} of {bad.size} elements out of {dtype} '{what}' "
                     f"tolerance){note}", case)


def assert_keys(actual: Mapping, expected, *, clause: str, name: str, case=None) -> None:
    __tracebackhide__ = True
    got, want = set(actual), set(expected)
    if got != want:
        fail(clause, f"{name} keys differ: missing {sorted(want - got)}, unexpected {sorted(got - want)}",
             case)


def assert_maps_close(actual: Mapping, expected: Mapping, *, clause: str, name: str, dtype: str,
                      what: str = "grad", case=None, note: str = "") -> None:
    __tracebackhide__ = True
    assert_keys(actual, expected, clause=clause, name=name, case=case)
    for key in expected:
        assert_close(actual[key], expected[key], clause=clause, name=f"{name}[{key!r}]", dtype=dtype,
                     what=what, case=case, note=note)


def assert_equal(actual, expected, *, clause: str, name: str, case=None) -> None:
    __tracebackhide__ = True
    if actual != expected:
        fail(clause, f"{name} is {actual!r}, expected {expected!r}", case)


def check_against_reference(backend, case, clause: str = "BL-4.1") -> None:
    """Every record of ``case`` against the reference: events exactly (BL-4.6), losses, then
    grads, params and running statistics after every step within tolerance."""
    __tracebackhide__ = True
    from .oracle import run_backend, run_reference

    got, want = run_backend(backend, case), run_reference(case)
    assert_equal(len(got), len(want), clause="BL-4.6", name="number of step records", case=case)
    dtype = case.problem.dtype
    for t, (g, w) in enumerate(zip(got, want)):
        assert_equal(list(g.events), list(w.events), clause="BL-4.6", name=f"update events of step/tick {t}",
                     case=case)
        what = "grad" if t == 0 else "steps"
        assert_keys(g.losses, w.losses, clause="BL-3.2", name=f"step {t} record.losses", case=case)
        for k in w.losses:
            assert_close(g.losses[k], w.losses[k], clause="BL-3.2", dtype=dtype, what=what,
                         name=f"step {t} loss L_{k}", case=case)
        assert_maps_close(g.grads, w.grads, clause=clause, dtype=dtype, what=what, name=f"step {t} grads",
                          case=case)
        assert_maps_close(g.params, w.params, clause=clause, dtype=dtype, what="steps",
                          name=f"params after step {t}", case=case)
        assert_maps_close(g.buffers, w.buffers, clause="BL-2.5", dtype=dtype, what="steps",
                          name=f"running statistics after step {t}", case=case)
