"""BL-7.1 to BL-7.4: the activation-memory model of the reference execution order.

:func:`activation_bytes` predicts, from the graph's per-sample shapes alone, the live
activation bytes that :func:`backlink.reference.backlink.gradients` holds at each of
its meter points (BL-7.2), and so its peak; :func:`measure` reads the same numbers
off a real run. The two agree exactly (``tests/test_memory.py``).

The model names every memory block the engine holds: a *value* (an op output, or the
input batch; ``flatten``/``reshape`` outputs are views, so they share their input's
block), a *residual* an op keeps for its VJP (BL-7.1, table ``RESIDUALS``), the
loss's log-probabilities, and *cotangents*. Cotangents are replayed symbolically:
the same reverse walk as :func:`backlink.reference.engine.backward`, with a token per
buffer instead of an array, so aliasing (``add`` hands one buffer to both inputs) and
padded buffers (a padded strided conv's input cotangent) are counted as the engine holds them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from backlink.spec import (DTYPES, INPUT, Graph, Method, Optimizer, Partition, SpecError, module_bounds, tail_bounds,
                           validate)
from backlink.spec.shapes import infer_shapes

from .primitives import PRIMS

__all__ = ["KINDS", "RESIDUALS", "ModuleMemory", "MemoryReport", "activation_bytes", "state_bytes",
           "measure", "measure_trace"]

ITEMSIZE = {"float32": 4, "float64": 8}
KINDS = ("values", "head", "residuals", "tail", "loss", "cotangents")
#: BL-7.1: what each primitive's forward keeps for its VJP, parameters excluded.
RESIDUALS = {
    "conv2d": "its input x (a value: shares the value's block)",
    "linear": "its input x (a value: shares the value's block)",
    "batchnorm": "xhat (shape of x) + batch mean, variance and 1/std (3 C elements)",
    "relu": "a bool mask, 1 byte per element",
    "maxpool": "int64 argmax indices, 8 bytes per output element",
    "avgpool": "nothing", "global_avgpool": "nothing", "add": "nothing",
    "flatten": "nothing", "reshape": "nothing",
    # BL-2.7 token sequences
    "patch_embed": "its input x (a value)", "token_linear": "its input x (a value)",
    "gelu": "its input x (a value)", "matmul": "both inputs (values)",
    "softmax": "its output (a value)",
    "layernorm": "xhat (shape of x) + 1/std (one element per token)",
    "pos_embed": "nothing", "transpose": "nothing (its output is a copy)", "scale": "nothing",
    "token_mean": "nothing",
}
_VIEWS = ("flatten", "reshape")  # outputs that are views of their input


class _Cot:
    """One cotangent buffer; identity matters (two entries may share one buffer)."""

    __slots__ = ("nbytes", "dense")

    def __init__(self, nbytes: int, dense: bool = True):
        self.nbytes, self.dense = nbytes, dense  # dense: C-contiguous, so a reshape is a view


class _Layout:
    """Block sizes of one graph (and its heads) at batch ``n`` and ``s`` bytes per float."""

    def __init__(self, graph: Graph, partition: Partition, n: int, s: int):
        self.n, self.s, self.classes = n, s, graph.num_classes
        self.shapes = dict(graph.shapes)
        for c, head in zip(partition.cuts, partition.heads):
            src = graph.units[c - 1].output
            self.shapes.update(infer_shapes([head], {src: graph.shapes[src]}, where=head.name))
        self.owner = {INPUT: INPUT}
        for unit in tuple(graph.units) + tuple(partition.heads):
            for op in unit.ops:
                self.owner[op.out] = self.owner[op.inputs[0]] if op.prim in _VIEWS else op.out

    def nbytes(self, v: str, itemsize: int | None = None) -> int:
        return self.n * math.prod(self.shapes[v]) * (itemsize or self.s)

    def value(self, v: str) -> tuple[tuple, int]:
        return ("value", self.owner[v]), self.nbytes(self.owner[v])

    def residuals(self, op) -> list[tuple[tuple, int]]:
        """BL-7.1: the blocks ``op``'s residuals hold (a conv/linear input is a value block)."""
        x = op.inputs[0]
        if op.prim in ("conv2d", "linear"):
            return [self.value(x)]
        if op.prim == "batchnorm":
            c = self.shapes[x][-1]
            return [(("xhat", op.out), self.nbytes(x)), (("stats", op.out), 3 * c * self.s)]
        if op.prim == "relu":
            return [(("mask", op.out), self.nbytes(x, 1))]
        if op.prim == "maxpool":
            return [(("argmax", op.out), self.nbytes(op.out, 8))]
        if op.prim in ("patch_embed", "token_linear", "gelu", "matmul"):
            return [self.value(v) for v in op.inputs]
        if op.prim == "softmax":
            return [self.value(op.out)]
        if op.prim == "layernorm":
            per_token = math.prod(self.shapes[x][:-1])
            return [(("xhat", op.out), self.nbytes(x)), (("stats", op.out), self.n * per_token * self.s)]
        return []

    def input_cotangents(self, op, g: _Cot) -> list[_Cot]:
        """BL-7.3: the buffers the op's VJP returns for its inputs, given the output's ``g``."""
        x = op.inputs[0]
        if op.prim == "add":
            return [g, g]  # the same buffer for both inputs
        if op.prim == "pos_embed":
            return [g]  # the input's cotangent is the output's
        if op.prim == "token_mean":  # a broadcast of an (n, D) buffer
            return [_Cot(self.n * self.shapes[x][-1] * self.s, dense=False)]
        if op.prim in _VIEWS:
            return [g if g.dense else _Cot(self.nbytes(x))]
        if op.prim == "conv2d" and op.kw.get("padding", 0) and op.kw.get("stride", 1) > 1:
            p = op.kw["padding"]
            h, w, c = self.shapes[x]  # strided: col2im fills a padded buffer, returns its interior
            return [_Cot(self.n * (h + 2 * p) * (w + 2 * p) * c * self.s, dense=False)]
        if op.prim == "global_avgpool":  # a broadcast of an (n, C) buffer
            return [_Cot(self.n * self.shapes[x][-1] * self.s, dense=False)]
        return [_Cot(self.nbytes(x))]

    def backward(self, ops, cot: dict, stop=(), defer: dict | None = None, pending: dict | None = None) -> None:
        """The reverse walk of ``engine.backward``, on buffer tokens: no cotangent for a
        ``stop`` value; a split op's output token moves to ``defer``, or leaves ``pending``."""
        for op in reversed(ops):
            g = cot.pop(op.out, None)
            if g is None:
                continue
            wanted = [v not in stop for v in op.inputs]
            if op.params and _splits(op.prim):
                if defer is not None:
                    defer[op.out] = g
                elif pending is not None:
                    pending.pop(op.out, None)
            for v, d, want in zip(op.inputs, self.input_cotangents(op, g), wanted):
                if want:
                    cot[v] = _Cot(self.nbytes(v)) if v in cot else d  # a sum is a new buffer

    def entering(self, graph: Graph, i: int) -> set:
        """The values made before unit i and read from it on (the input batch at 0)."""
        return graph.crossing(i) if i > 0 else {INPUT}


def _splits(prim: str) -> bool:
    """Whether the engine can take ``prim``'s input and parameter VJPs apart (and so keep
    an output cotangent for a later parameter VJP)."""
    p = PRIMS[prim]
    return p.vjp_inputs is not None and p.vjp_params is not None


def _cot_bytes(*tokens: dict) -> int:
    return sum({id(t): t.nbytes for d in tokens for t in d.values()}.values())


@dataclass(frozen=True)
class ModuleMemory:
    """BL-7.2 breakdown while module ``module`` (1-based) runs; ``cotangents`` is the
    largest cotangent working set at its meter points."""

    module: int
    values: int
    head: int
    residuals: int
    tail: int
    loss: int
    cotangents: int

    @property
    def stored(self) -> int:
        return self.values + self.head + self.residuals + self.tail + self.loss

    @property
    def peak(self) -> int:
        return self.stored + self.cotangents


@dataclass(frozen=True)
class MemoryReport:
    """Activation memory of one training step (bytes) and, separately, parameter state."""

    method: str
    link_length: int
    batch: int
    dtype: str
    modules: tuple[ModuleMemory, ...]
    trace: tuple[tuple[str, int, int], ...]  # (phase, 1-based module, bytes), as the meter sees it
    params: int
    grads: int
    optimizer: int  # optimizer-state bytes (BL-7.4)

    @property
    def peak(self) -> int:
        return max(b for _, _, b in self.trace)

    @property
    def peak_module(self) -> int:
        return max(self.modules, key=lambda m: m.peak).module

    def by_kind(self) -> dict[str, int]:
        """The peak module's breakdown, by kind (the names in ``KINDS``)."""
        m = self.modules[self.peak_module - 1]
        return {kind: getattr(m, kind) for kind in KINDS}


def _check(graph, partition, method, batch, dtype) -> int:
    validate(graph, partition, method)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise SpecError(f"field 'batch' = {batch!r}: needs an integer batch size >= 1")
    if dtype not in ITEMSIZE:
        raise SpecError(f"field 'dtype' = {dtype!r}; allowed: {', '.join(DTYPES)}")
    return ITEMSIZE[dtype]


def _stored(lay: _Layout, graph: Graph, partition: Partition, method: Method, bounds, k: int) -> dict:
    """BL-7.2: the blocks held from module k's forward to its frees, by kind (first kind wins)."""
    units, (a, b) = graph.units, bounds[k]
    head = partition.heads[k] if k < len(bounds) - 1 else None
    head_ops = head.ops if head else ()
    own_ops = [op for u in units[a:b] for op in u.ops]
    t0, _ = tail_bounds(bounds, k, method)
    tail_ops = [op for u in units[t0:a] for op in u.ops]
    entering = graph.crossing(a) if a > 0 else {INPUT}
    groups = {
        "values": [lay.value(v) for v in sorted(entering)] + [lay.value(op.out) for op in own_ops],
        "head": [lay.value(op.out) for op in head_ops] + [r for op in head_ops for r in lay.residuals(op)],
        "residuals": [r for op in own_ops for r in lay.residuals(op)],
        "tail": [r for op in tail_ops for r in lay.residuals(op)],
        "loss": [(("logp", k), lay.n * lay.classes * lay.s)],
    }
    seen, out = set(), {}
    for kind, blocks in groups.items():
        out[kind] = 0
        for key, nbytes in blocks:
            if key not in seen:
                seen.add(key)
                out[kind] += nbytes
    return out


def _module_trace(lay: _Layout, graph: Graph, partition: Partition, method: Method, bounds, k: int,
                  stored: int, kept: dict) -> list[tuple[str, int, int]]:
    """The meter points of module k in engine order (see ``backlink.gradients``); ``kept``
    holds the tokens of kept own-loss cotangents (BL-7.3), carried from module to module."""
    units, (a, b) = graph.units, bounds[k]
    head = partition.heads[k] if k < len(bounds) - 1 else None
    cot = {(head.output if head else units[b - 1].output): _Cot(lay.n * lay.classes * lay.s)}
    trace = [("forward", k + 1, stored + _cot_bytes(kept))]
    if head:
        lay.backward(head.ops, cot)
    trace.append(("head", k + 1, stored + _cot_bytes(cot, kept)))
    t0, t1 = tail_bounds(bounds, k, method)
    n0, n1 = tail_bounds(bounds, k + 1, method) if k + 1 < len(bounds) else (0, 0)
    stop = () if t1 > t0 else lay.entering(graph, a)
    for i in reversed(range(a, b)):
        lay.backward(units[i].ops, cot, stop, defer=kept if n0 <= i < n1 else None)
        trace.append((f"unit:{i}", k + 1, stored + _cot_bytes(cot, kept)))
    if t1 > t0:
        cot = {v: _Cot(lay.nbytes(v)) for v in cot}  # beta * g: one new buffer per entry
        for i in reversed(range(t0, t1)):
            lay.backward(units[i].ops, cot, lay.entering(graph, t0), pending=kept)
            for op in units[i].ops:  # engine.flush: what the link did not reach
                kept.pop(op.out, None)
            trace.append((f"link:{i}", k + 1, stored + _cot_bytes(cot, kept)))
    return trace


def state_bytes(graph: Graph, partition: Partition, method: Method, dtype: str = "float32",
                optimizer: Optimizer | None = None) -> dict:
    """BL-7.4: parameter, gradient and optimizer-state bytes (heads count unless BP).

    ``optimizer``: SGD keeps one momentum buffer per parameter when momentum > 0, none
    otherwise; AdamW keeps two moments (its integer update counts are not counted).
    None means SGD with momentum, the setups of the paper.
    """
    validate(graph, partition, method)
    if dtype not in ITEMSIZE:
        raise SpecError(f"field 'dtype' = {dtype!r}; allowed: {', '.join(DTYPES)}")
    units = tuple(graph.units) + (() if method.kind == "bp" else tuple(partition.heads))
    n = sum(math.prod(p.shape) for u in units for p in u.params) * ITEMSIZE[dtype]
    if optimizer is None:
        buffers = 1
    else:
        buffers = 2 if optimizer.kind == "adamw" else int(optimizer.momentum > 0)
    return {"params": n, "grads": n, "optimizer": buffers * n}


def activation_bytes(graph: Graph, partition: Partition, method: Method, batch: int,
                     dtype: str = "float32", optimizer: Optimizer | None = None) -> MemoryReport:
    """BL-7.2/7.3: predicted live activation bytes of one step, per meter point and module."""
    s = _check(graph, partition, method, batch, dtype)
    lay = _Layout(graph, partition, batch, s)
    bounds = module_bounds(len(graph.units), partition, method)
    modules, trace, kept = [], [], {}
    for k in range(len(bounds)):
        kinds = _stored(lay, graph, partition, method, bounds, k)
        stored = sum(kinds.values())
        points = _module_trace(lay, graph, partition, method, bounds, k, stored, kept)
        trace += points
        modules.append(ModuleMemory(k + 1, cotangents=max(b for _, _, b in points) - stored, **kinds))
    state = state_bytes(graph, partition, method, dtype, optimizer)
    return MemoryReport(method.kind, method.P, batch, dtype, tuple(modules), tuple(trace), **state)


def measure_trace(graph: Graph, partition: Partition, method: Method, params, buffers, x, y
                  ) -> list[tuple[str, int, int]]:
    """BL-7.2, measured: (phase, module, live bytes) at every meter point of one step.

    Runs :func:`~backlink.reference.backlink.gradients` on a copy of ``x`` (so the batch
    owns its memory) and of the buffers (so batch-norm statistics do not move).
    """
    from .backlink import gradients

    trace = []
    gradients(graph, partition, method, params, dict(buffers), x.copy(), y,
              meter=lambda phase, k, n: trace.append((phase, k, n)))
    return trace


def measure(graph: Graph, partition: Partition, method: Method, params, buffers, x, y) -> int:
    """BL-7.2, measured: the peak live activation bytes of one step."""
    return max(n for _, _, n in measure_trace(graph, partition, method, params, buffers, x, y))
