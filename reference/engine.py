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


def _arrays(containers: Iterable):
    """Every array reachable from (nested) dicts, tuples and lists; 0-d arrays are scalars."""
    stack = list(containers)
    while stack:
        a = stack.pop()
        if isinstance(a, Mapping):
            stack.extend(a.values())
        elif isinstance(a, (tuple, list)):
            stack.extend(a)
        elif hasattr(a, "nbytes") and getattr(a, "ndim", 0) > 0:
            yield a


def _owner(a):
    """The array that owns ``a``'s memory: NumPy and CuPy keep it in ``.base``."""
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
        a = a.base
    return a


def live_bytes(*containers: Iterable, exclude: Iterable = ()) -> int:
    """BL-7.2: bytes of the distinct memory blocks reachable from ``containers``.

    An array counts as the block that owns its memory, once however many views of it
    are reachable (a reshape or a broadcast costs nothing; a padded buffer sliced to
    its interior costs the whole buffer). Blocks reachable from ``exclude`` (the
    parameters and buffers) are not counted. Pass a batch that owns its memory: a
    view of a whole data set would count the data set.
    """
    skip = {id(_owner(a)) for a in _arrays([exclude])}
    owners = {id(o): o for o in map(_owner, _arrays(containers))}
    return sum(o.nbytes for i, o in owners.items() if i not in skip)
