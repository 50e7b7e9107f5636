"""Finite-difference checks of VJPs (float64 only, random seeded cotangents and directions).

For f: (a_1..a_n) -> y, a VJP is correct when for random cotangent u and direction
v = (v_1..v_n):   <u, (f(a + eps v) - f(a - eps v)) / (2 eps)>  ==  sum_i <vjp_i(u), v_i>.
Each argument is also checked on its own (v_j = 0 for j != i), so a wrong VJP of one
argument cannot hide behind another.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["GradcheckError", "gradcheck", "check_primitive"]


class GradcheckError(AssertionError):
    pass


def _dot(a, b):
    return float(np.vdot(np.asarray(a, np.float64), np.asarray(b, np.float64)))


def gradcheck(f: Callable, vjp: Callable, args: Sequence[np.ndarray], *, seed: int = 0,
              eps: float = 1e-6, rtol: float = 1e-7, atol: float = 1e-9, wrt: Sequence[int] | None = None,
              directions: int = 2, name: str = "f") -> None:
    """Check ``vjp(u) -> cotangents of args`` against central differences of ``f(*args)``.

    ``wrt`` lists the argument positions to check (default all). Raises
    :class:`GradcheckError` with both values when they disagree.
    """
    args = [np.asarray(a) for a in args]
    for a in args:
        if a.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 arguments (finite differences in lower "
                            f"precision are meaningless), got {a.dtype}")
    rng = np.random.default_rng(seed)
    wrt = list(range(len(args))) if wrt is None else list(wrt)
    y = np.asarray(f(*args))
    for _ in range(directions):
        u = rng.standard_normal(y.shape)
        cots = vjp(u)
        for i in wrt + [None]:
            idx = wrt if i is None else [i]
            v = {j: rng.standard_normal(args[j].shape) for j in idx}
            plus = [a + eps * v[j] if j in v else a for j, a in enumerate(args)]
            minus = [a - eps * v[j] if j in v else a for j, a in enumerate(args)]
            delta = (np.asarray(f(*plus)) - np.asarray(f(*minus))) / (2 * eps)
            numeric = _dot(u, delta)
            analytic = sum(_dot(cots[j], v[j]) for j in idx)
            # Scale by ||u|| ||delta|| (>= |numeric|): a cancelling dot product must not turn
            # finite-difference noise into a failure; a wrong VJP is off by O(1) of it.
            scale = max(float(np.linalg.norm(u) * np.linalg.norm(delta)), abs(analytic))
            if not abs(numeric - analytic) <= atol + rtol * scale:
                which = "all arguments" if i is None else f"argument {i}"
                raise GradcheckError(f"{name}: VJP disagrees with finite differences for {which}: "
                                     f"analytic {analytic!r} vs numeric {numeric!r} "
                                     f"(diff {abs(numeric - analytic):.3e}, rtol {rtol}, atol {atol})")


def check_primitive(name: str, args: Sequence[np.ndarray], *, seed: int = 0,
                    wrt: Sequence[int] | None = None, **attrs) -> None:
    """Gradcheck primitive ``name`` of the VJP table at ``args`` (inputs, params, buffers).

    Buffers (batch-norm running statistics) are not differentiated: pass ``wrt``.
    """
    from .primitives import PRIMS

    prim = PRIMS[name]
    _, saved = prim.fwd(*args, **attrs)
    gradcheck(lambda *a: prim.fwd(*a, **attrs)[0], lambda u: prim.vjp(saved, u), args,
              seed=seed, wrt=wrt, name=name)
