"""A compiling backend: the torch backend with each unit's forward run through ``torch.compile``.

A demonstration that the conformance suite is cheap for backends that compile: the suite
draws its graphs from a few fixed structures per run (``backlink_conformance.strategies``),
and this backend compiles once per *unit structure* -- the unit's ops and attributes, its
input, parameter and buffer shapes and strides, dtype and device -- so every partition,
method, optimizer and seed of the same graph reuses the same compiled callables, and so do
repeated identical units (the blocks of a ResNet stage). :data:`COMPILATIONS` counts them.

Each structure gets its own generated Python function (a distinct code object), because
``torch.compile`` caches on the code object: one shared interpreter loop compiled for many
structures would recompile on every new one and, past ``torch._dynamo.config.
recompile_limit``, silently run eagerly. Compilation is ``dynamic=False`` (a new batch size
is a new structure). Batch-norm running statistics are updated in place inside the compiled
unit: the compiler functionalizes the mutation and writes the buffer back after the call.
Buffer donation is off: a segment's backward is walked again (``retain_graph=True``) by
the loss after (BL-3.4's tail), which donated buffers forbid.

Everything else is the eager :class:`~backlink.backends.torch_backend.runner.TorchRunner`:
the segment plan, the backward walks (``torch.autograd.grad`` through the compiled units'
backward graphs), the heads, the optimizer, ``predict`` and the primitive hook. Only the
synchronous schedule is offered.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
import torch._functorch.config as functorch_config

from .backend import TorchBackend
from .ops import OPS
from .runner import TorchRunner

__all__ = ["CompiledTorchBackend", "CompiledTorchRunner", "COMPILATIONS", "compiled_units"]

#: unit structure -> compiled callable, shared by every runner of the process
_CACHE: dict[tuple, Callable] = {}
#: cache misses: how many unit structures this process has compiled
COMPILATIONS = 0


def compiled_units() -> int:
    """The number of unit structures compiled so far in this process."""
    return COMPILATIONS


def _structure(unit, exports) -> tuple[tuple, list[str]]:
    """The unit with its names replaced by positions, and its external inputs in that order.

    Two units with the same ops, attributes and wiring get the same structure whatever
    their value and parameter names; the caller adds the argument shapes to the key."""
    inputs: list[str] = []
    local = {op.out: i for i, op in enumerate(unit.ops)}
    params = {p.id: i for i, p in enumerate(unit.params)}
    buffers = {b.id: i for i, b in enumerate(unit.buffers)}

    def ref(v):
        if v in local:
            return ("op", local[v])
        if v not in inputs:
            inputs.append(v)
        return ("in", inputs.index(v))

    ops = tuple((op.prim, tuple(ref(v) for v in op.inputs), tuple(params[p] for p in op.params),
                 tuple(buffers[b] for b in op.buffers), op.attrs) for op in unit.ops)
    return (ops, tuple(local[v] for v in exports)), inputs


def _generate(structure, n_in: int, n_par: int, n_buf: int) -> Callable:
    """Python source for one unit structure, exec'd into a fresh function (its own code object)."""
    ops, exports = structure
    args = [f"x{i}" for i in range(n_in)] + [f"p{i}" for i in range(n_par)] + [f"b{i}" for i in range(n_buf)]
    lines = [f"def unit_forward({', '.join(args)}):"]
    kws = []
    for i, (prim, ins, pars, bufs, attrs) in enumerate(ops):
        kw = dict(attrs, training=True) if bufs else dict(attrs)
        kws.append(kw)
        operands = ([f"x{j}" if kind == "in" else f"v{j}" for kind, j in ins]
                    + [f"p{j}" for j in pars] + [f"b{j}" for j in bufs] + [f"**KW[{i}]"])
        lines.append(f"    v{i} = OPS[{prim!r}]({', '.join(operands)})")
    lines.append(f"    return ({''.join(f'v{i}, ' for i in exports)})")
    namespace = {"OPS": OPS, "KW": kws}
    exec(compile("\n".join(lines), f"<backlink unit {len(_CACHE)}>", "exec"), namespace)
    return namespace["unit_forward"]


def _compiled(structure, args, n_in: int, n_par: int, n_buf: int) -> Callable:
    global COMPILATIONS
    key = (structure, n_in, n_par, n_buf,
           tuple((tuple(t.shape), t.stride(), t.dtype, t.device, t.requires_grad) for t in args))
    fn = _CACHE.get(key)
    if fn is None:
        COMPILATIONS += 1
        fn = _CACHE[key] = torch.compile(_generate(structure, n_in, n_par, n_buf), dynamic=False, fullgraph=True)
    return fn


class CompiledTorchRunner(TorchRunner):
    """:class:`TorchRunner` whose trunk units run as compiled callables (heads stay eager)."""

    def _prepare_plan(self) -> None:
        super()._prepare_plan()
        g = self.problem.graph
        later: set[str] = set()  # values read by units after unit i
        self._units = [None] * len(g.units)
        for i in reversed(range(len(g.units))):
            unit = g.units[i]
            exports = [op.out for op in unit.ops if op.out in later or op.out == unit.output]
            structure, inputs = _structure(unit, exports)
            self._units[i] = (structure, inputs, exports)
            later |= unit.consumed()

    def gradients(self, x, y):
        # BackLink walks a segment's backward again for the next loss (retain_graph=True),
        # which AOTAutograd's donated buffers forbid; it reads the setting when a unit's
        # forward compiles and again when its backward first runs: both happen in here
        with functorch_config.patch(donated_buffer=False):
            return super().gradients(x, y)

    def _run_unit(self, i: int, vals: dict) -> None:
        unit = self.problem.graph.units[i]
        structure, inputs, exports = self._units[i]
        args = ([vals[v] for v in inputs] + [self.params[p.id] for p in unit.params]
                + [self.buffers[b.id] for b in unit.buffers])
        fn = _compiled(structure, args, len(inputs), len(unit.params), len(unit.buffers))
        vals.update(zip(exports, fn(*args)))


class CompiledTorchBackend(TorchBackend):
    """:class:`TorchBackend` with ``torch.compile``-d units (inductor; CPU needs a C++ compiler)."""

    name = "torch-compiled"
    version = f"0.1.0+torch{torch.__version__}"
    capabilities = replace(TorchBackend.capabilities, schedules=("synchronous",))
    runner = CompiledTorchRunner

    def __init__(self, device: str | None = None):
        super().__init__(device)
        self.capabilities = replace(self.capabilities, schedules=("synchronous",))
