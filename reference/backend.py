"""The reference as a conformance backend (BL-6): NumPy, or CuPy by the same code."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from backlink.spec import (Batch, Capabilities, Problem, SpecError, StepRecord, UpdateEvent, check_values,
                           module_bounds, reach_sets, state_key)

from . import optim, parallel
from .backlink import gradients, predict
from .xp import to_host

__all__ = ["ReferenceBackend", "ReferenceRunner", "module_params", "synchronous_events", "state_entry"]


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
    """One synchronous step per call; ``threads`` > 1 runs convolutions on that many
    threads with single-threaded BLAS (:mod:`.parallel`), the same numbers as 1."""

    def __init__(self, problem: Problem, params: Mapping, buffers: Mapping, xp=np, threads: int = 1):
        optim.check_optimizer(problem.optimizer)
        check_values(problem, params, buffers)
        parallel.check_threads(threads)
        self.problem, self.xp, self.threads = problem, xp, threads
        dtype = np.dtype(problem.dtype)
        self.params = {k: xp.asarray(v, dtype=dtype) for k, v in params.items()}
        self.buffers = {k: xp.asarray(v, dtype=dtype) for k, v in buffers.items()}
        specs = problem.graph.params + tuple(p for h in problem.partition.heads for p in h.params)
        self.decay = frozenset(p.id for p in specs if p.decay)
        self.state = optim.init_state(self.params, problem.optimizer)
        self.t = 0

    def step(self, batch: Batch) -> StepRecord:
        t = self.t
        grads, losses = self._update(batch)
        events = synchronous_events(self.problem, t, batch.id)
        host = lambda d: {k: to_host(v) for k, v in d.items()}  # noqa: E731
        return StepRecord(host(grads), losses, events, host(self.params), host(self.buffers))

    def _update(self, batch: Batch) -> tuple[dict, dict[int, float]]:
        p = self.problem
        x = self.xp.asarray(batch.x, dtype=np.dtype(p.dtype))
        y = self.xp.asarray(batch.y)
        with parallel.threads(self.threads):
            grads, losses = gradients(p.graph, p.partition, p.method, self.params, self.buffers, x, y,
                                      validated=True)
        self.params, self.state = optim.step(self.params, grads, self.state, p.optimizer, self.t, self.decay)
        self.t += 1
        return grads, losses

    # ------------------------------------------------ BL-6.5 lean path: nothing copied to the host

    def train_step(self, batch: Batch) -> dict[int, float]:
        """The update of ``step`` (BL-6.5), returning only the losses."""
        return self._update(batch)[1]

    def predict(self, x) -> np.ndarray:
        logits = predict(self.problem.graph, self.params, self.buffers,
                         self.xp.asarray(x, dtype=np.dtype(self.problem.dtype)))
        return to_host(logits)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {state_key("step"): np.asarray(self.t, dtype=np.int64)}
        for kind, d in (("param", self.params), ("buffer", self.buffers)):
            out.update({state_key(kind, k): to_host(v) for k, v in d.items()})
        for (kind, k), v in optim.state_arrays(self.state, self.problem.optimizer).items():
            out[state_key(kind, k)] = np.asarray(v, dtype=np.int64) if kind == "adam_n" else to_host(v)
        return out

    def load_state_dict(self, state) -> None:
        dtype = np.dtype(self.problem.dtype)
        for kind, d in (("param", self.params), ("buffer", self.buffers)):
            for k in d:
                d[k] = self.xp.asarray(state_entry(state, kind, k, d[k].shape), dtype=dtype)

        def entry(kind, k, shape):
            a = state_entry(state, kind, k, shape)
            return a if kind == "adam_n" else self.xp.asarray(a, dtype=dtype)
        self.state = optim.load_state(entry, self.params, self.problem.optimizer)
        self.t = int(state_entry(state, "step", "", ()))


def state_entry(state, kind: str, id: str, shape) -> np.ndarray:
    """One entry of a BL-6.5 state dict, checked against the runner's own shape."""
    key = state_key(kind, id)
    if key not in state:
        raise SpecError(f"field 'state[{key!r}]' is missing; a state dict holds every parameter, "
                        f"buffer and momentum buffer and 'step' (BL-6.5.2)")
    a = np.asarray(state[key]) if not hasattr(state[key], "shape") else state[key]
    if tuple(a.shape) != tuple(shape):
        raise SpecError(f"field 'state[{key!r}]' has shape {tuple(a.shape)}; the runner's is {tuple(shape)}")
    return a


class ReferenceBackend:
    """The reference implementation run as a backend, on NumPy (``device='cpu'``);
    ``threads``: see :class:`ReferenceRunner` (synchronous schedule)."""

    name = "reference"
    version = "0.1.0"
    capabilities = Capabilities(primitives=True, schedules=("synchronous", "pipelined"))
    xp = np
    threads = 1  # subclasses that skip __init__ keep one thread

    def __init__(self, threads: int = 1):
        self.threads = threads

    def prepare(self, problem: Problem, params: Mapping, buffers: Mapping) -> ReferenceRunner:
        problem.validate()
        if problem.schedule != "synchronous":
            from .pipeline import PipelinedRunner  # BL-4.2, issue: pipelined schedule

            return PipelinedRunner(problem, params, buffers, xp=self.xp)
        return ReferenceRunner(problem, params, buffers, xp=self.xp, threads=self.threads)

    def primitive(self, name: str, args, attrs, cotangent):
        """BL-2.2 check hook: (output, cotangents of args) for one primitive."""
        from .primitives import PRIMS

        prim = PRIMS[name]
        xs = [self.xp.asarray(a) for a in args]
        out, saved = prim.fwd(*xs, **attrs)
        cots = prim.vjp(saved, self.xp.asarray(cotangent))
        return to_host(out), [None if c is None else to_host(c) for c in cots]
