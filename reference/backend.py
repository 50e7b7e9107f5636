"""The reference as a conformance backend (BL-6): NumPy, or CuPy by the same code."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from backlink.spec import (Batch, Capabilities, Problem, SpecError, StepRecord, UpdateEvent,
                           module_bounds, reach_sets)

from . import optim
from .backlink import gradients
from .xp import to_host

__all__ = ["ReferenceBackend", "ReferenceRunner", "module_params", "synchronous_events"]


def module_params(problem: Problem) -> list[tuple[str, ...]]:
    """Parameter ids of each module in graph order, head after trunk (BL-4.6)."""
    g, part = problem.graph, problem.partition
    bounds = module_bounds(len(g.units), part, problem.method)
    out = []
    for k, (a, b) in enumerate(bounds):
        units = list(g.units[a:b]) + ([part.heads[k]] if k < len(bounds) - 1 else [])
        out.append(tuple(p.id for u in units for p in u.params))
    return out


def synchronous_events(problem: Problem, step: int, batch_id: int) -> list[UpdateEvent]:
    """BL-4.6: one event per module; losses = those whose reach meets the module's params."""
    reach = reach_sets(problem.graph, problem.partition, problem.method)
    events = []
    for k, ids in enumerate(module_params(problem)):
        mine = set(ids)
        losses = tuple(r.loss for r in reach if mine & (r.own | r.tail))
        events.append(UpdateEvent(step, k + 1, ids, losses, (batch_id,)))
    return events


class ReferenceRunner:
    def __init__(self, problem: Problem, params: Mapping, buffers: Mapping, xp=np):
        optim.check_optimizer(problem.optimizer)
        self.problem, self.xp = problem, xp
        dtype = np.dtype(problem.dtype)
        self.params = {k: xp.asarray(v, dtype=dtype) for k, v in params.items()}
        self.buffers = {k: xp.asarray(v, dtype=dtype) for k, v in buffers.items()}
        specs = problem.graph.params + tuple(p for h in problem.partition.heads for p in h.params)
        missing = sorted({p.id for p in specs} - set(self.params))
        if missing:
            raise SpecError(f"field 'params' lacks ids {missing[:5]}{'...' if len(missing) > 5 else ''}")
        self.decay = frozenset(p.id for p in specs if p.decay)
        self.state = optim.init_state(self.params, problem.optimizer)
        self.t = 0

    def step(self, batch: Batch) -> StepRecord:
        p = self.problem
        x = self.xp.asarray(batch.x, dtype=np.dtype(p.dtype))
        y = self.xp.asarray(batch.y)
        grads, losses = gradients(p.graph, p.partition, p.method, self.params, self.buffers, x, y,
                                  validated=True)
        self.params, self.state = optim.step(self.params, grads, self.state, p.optimizer, self.t, self.decay)
        events = synchronous_events(p, self.t, batch.id)
        self.t += 1
        host = lambda d: {k: to_host(v) for k, v in d.items()}  # noqa: E731
        return StepRecord(host(grads), losses, events, host(self.params), host(self.buffers))


class ReferenceBackend:
    """The reference implementation run as a backend, on NumPy (``device='cpu'``)."""

    name = "reference"
    version = "0.1.0"
    capabilities = Capabilities(primitives=True, schedules=("synchronous", "pipelined"))
    xp = np

    def prepare(self, problem: Problem, params: Mapping, buffers: Mapping) -> ReferenceRunner:
        problem.validate()
        if problem.schedule != "synchronous":
            from .pipeline import PipelinedRunner  # BL-4.2, issue: pipelined schedule

            return PipelinedRunner(problem, params, buffers, xp=self.xp)
        return ReferenceRunner(problem, params, buffers, xp=self.xp)

    def primitive(self, name: str, args, attrs, cotangent):
        """BL-2.2 check hook: (output, cotangents of args) for one primitive."""
        from .primitives import PRIMS

        prim = PRIMS[name]
        xs = [self.xp.asarray(a) for a in args]
        out, saved = prim.fwd(*xs, **attrs)
        cots = prim.vjp(saved, self.xp.asarray(cotangent))
        return to_host(out), [None if c is None else to_host(c) for c in cots]
