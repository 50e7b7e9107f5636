"""The autograd engine: an interpreter over the graph's ops.

The graph already lists ops in topological order, so forward is a loop over ops that
keeps each op's VJP residuals, and backward is the same loop reversed: it pops the
cotangent of each op's output, applies the op's VJP and accumulates into the
cotangents of its inputs and the gradients of its parameters. Running backward over a
*subset* of ops is how a loss's backward pass is cut (BL-3.7): values read by those ops
but produced outside them are constants. The caller says which cotangents it will
discard (``stop``) and which weight VJPs to postpone (``defer``/``pending``), so that no
VJP is computed for nothing and a tail's weight VJP is taken once (BL-7.2).
"""
from __future__ import annotations

from typing import Container, Iterable, Mapping, MutableMapping, Sequence

from backlink.spec import PRIMITIVES, Op

from .primitives import PRIMS

__all__ = ["forward", "backward", "flush", "live_bytes"]


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


def backward(ops: Sequence[Op], saved: Mapping, cot: MutableMapping, grads: MutableMapping, *,
             stop: Container[str] = frozenset(), defer: MutableMapping | None = None,
             pending: MutableMapping | None = None) -> MutableMapping:
    """Reverse-mode pass over ``ops`` (given in forward order).

    ``cot`` maps value names to cotangents (seeds in, results out); parameter
    gradients are accumulated into ``grads``. Returns ``cot``, which then holds the
    cotangents of values read by ``ops`` but produced before them, except those in ``stop``.

    Work whose result nobody reads is skipped, which changes no gradient:

    - ``stop``: values whose cotangent the caller discards (a module's or a tail's
      input, BL-3.4; the input batch). No VJP is taken into them: an op none of whose
      inputs needs a cotangent runs only its parameter half (``Primitive.vjp_params``).
    - ``defer``: a dict; an op whose primitive splits its VJP computes only its input
      cotangents here and keeps its output cotangent in ``defer[op.out]``;
    - ``pending``: such a dict from an earlier pass over the same ops; an op found in it
      takes one parameter VJP on the sum of the kept cotangent and this pass's (every
      VJP is linear in the cotangent, so this equals the two VJPs added: BL-3.7).
    """
    for op in reversed(ops):
        g = cot.pop(op.out, None)
        if g is None:  # the output does not reach the loss being differentiated
            continue
        wanted = [v not in stop for v in op.inputs]
        if not any(wanted) and not op.params:
            continue
        ds_in, ds_params = _vjp(op, saved[op.out], g, any(wanted), defer, pending)
        for v, d, w in zip(op.inputs, ds_in, wanted):
            if w:
                _accumulate(cot, v, d)
        for p, d in zip(op.params, ds_params):
            _accumulate(grads, p, d)
    return cot


def _vjp(op: Op, res, g, inputs: bool, defer, pending) -> tuple[tuple, tuple]:
    """(input cotangents, parameter cotangents) of one op, each half only where needed."""
    prim = PRIMS[op.prim]
    split = prim.vjp_inputs is not None and prim.vjp_params is not None
    if split and op.params and defer is not None:
        defer[op.out] = g  # the parameter half waits for the next pass (``pending``)
        return (prim.vjp_inputs(res, g) if inputs else ()), ()
    if split and pending is not None and op.out in pending:
        return (prim.vjp_inputs(res, g) if inputs else ()), prim.vjp_params(res, g + pending.pop(op.out))
    if not inputs and prim.vjp_params is not None:
        return (), prim.vjp_params(res, g)
    ds = prim.vjp(res, g)
    n_in = PRIMITIVES[op.prim][0]
    return ds[:n_in], ds[n_in:]


def flush(ops: Sequence[Op], saved: Mapping, pending: MutableMapping, grads: MutableMapping) -> None:
    """The parameter VJPs still ``pending`` among ``ops`` (kept cotangents no later pass reached)."""
    for op in ops:
        if op.out in pending:
            for p, d in zip(op.params, PRIMS[op.prim].vjp_params(saved[op.out], pending.pop(op.out))):
                _accumulate(grads, p, d)


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
