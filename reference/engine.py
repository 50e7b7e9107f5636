"""The autograd engine: an interpreter over the graph's ops.

The graph already lists ops in topological order, so forward is a loop over ops that
keeps each op's VJP residuals, and backward is the same loop reversed: it pops the
cotangent of each op's output, applies the op's VJP and accumulates into the
cotangents of its inputs and the gradients of its parameters. Running backward over a
*subset* of ops is how a loss's backward pass is cut (BL-3.7): values read by those ops
but produced outside them are constants.
"""
from __future__ import annotations

from typing import Iterable, Mapping, MutableMapping, Sequence

from backlink.spec import PRIMITIVES, Op

from .primitives import PRIMS

__all__ = ["forward", "backward", "live_bytes"]


def forward(ops: Sequence[Op], values: MutableMapping, params: Mapping, buffers: MutableMapping,
            training: bool = True) -> dict:
    """Evaluate ``ops`` in order into ``values``; return ``{op.out: residuals}``.

    In training mode, batch-norm running statistics in ``buffers`` are replaced by their
    updated values: exactly once per op per call (BL-2.5).
    """
    saved = {}
    for op in ops:
        prim = PRIMS[op.prim]
        args = [values[v] for v in op.inputs] + [params[p] for p in op.params]
        kw = op.kw
        if op.buffers:
            stats = [buffers[b] for b in op.buffers]
            out, res = prim.fwd(*args, *stats, training=training, **kw)
            if training:
                for b, new in zip(op.buffers, prim.update(res, *stats, **kw)):
                    buffers[b] = new
        else:
            out, res = prim.fwd(*args, **kw)
        values[op.out] = out
        saved[op.out] = res
    return saved


def _accumulate(store: MutableMapping, key: str, d) -> None:
    store[key] = d if key not in store else store[key] + d


def backward(ops: Sequence[Op], saved: Mapping, cot: MutableMapping, grads: MutableMapping) -> MutableMapping:
    """Reverse-mode pass over ``ops`` (given in forward order).

    ``cot`` maps value names to cotangents (seeds in, results out); parameter
    gradients are accumulated into ``grads``. Returns ``cot``, which then holds the
    cotangents of values read by ``ops`` but produced before them.
    """
    for op in reversed(ops):
        g = cot.pop(op.out, None)
        if g is None:  # the output does not reach the loss being differentiated
            continue
        n_in = PRIMITIVES[op.prim][0]
        ds = PRIMS[op.prim].vjp(saved[op.out], g)
        for v, d in zip(op.inputs, ds[:n_in]):
            _accumulate(cot, v, d)
        for p, d in zip(op.params, ds[n_in:]):
            _accumulate(grads, p, d)
    return cot


def live_bytes(*containers: Iterable) -> int:
    """Bytes of the distinct arrays reachable from dicts/tuples of arrays and residuals."""
    seen, total, stack = set(), 0, list(containers)
    while stack:
        a = stack.pop()
        if isinstance(a, Mapping):
            stack.extend(a.values())
        elif isinstance(a, (tuple, list)):
            stack.extend(a)
        elif hasattr(a, "nbytes") and getattr(a, "ndim", 0) > 0 and id(a) not in seen:
            seen.add(id(a))
            base = a.base if getattr(a, "base", None) is not None else a
            if id(base) != id(a) and id(base) in seen:
                continue  # a view of an array already counted
            total += a.nbytes
    return total
