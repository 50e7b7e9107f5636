"""BL-4.2: the pipelined (decoupled) schedule, all modules in one process.

Each module is a :class:`Stage`. A tick is: every stage that has a batch forwards it
with its current parameters, computes its local loss and back-props through its head
and its own units (the own term); every stage that receives a link cotangent (sent by
the next stage one tick earlier) back-props it through the tail residuals it stored
when it forwarded that batch (the link term: weight stashing by construction, since
the residuals hold the parameter arrays of that forward); then every stage that has a
term makes one optimizer update. All computation in a tick reads the parameters as
they were at the start of the tick, so the order of stages within a tick is free.

The MPI runner (:mod:`.distributed`) drives one :class:`Stage` per rank with the same
methods, so both produce the same events and parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from backlink.spec import (INPUT, Batch, Problem, SpecError, StepRecord, UpdateEvent, check_labels, check_values,
                           module_bounds)
from backlink.spec.pipeline import link_param_ids, module_param_ids, validate_pipelined

from . import engine, optim
from .backlink import check_finite
from .primitives import cross_entropy, cross_entropy_vjp
from .xp import to_host

__all__ = ["Stage", "OwnTerm", "PipelinedRunner", "check_problem", "summed_terms", "update_event"]


@dataclass
class OwnTerm:
    """What a stage's forward + own backward of one batch produced."""

    batch: int
    loss: float
    grads: dict
    output: object = None      # h_k, sent to the next stage (None for the last one)
    cotangent: object = None   # w_k dL_k/dh_{k-1}, sent to the previous stage when it is linked


def check_problem(problem: Problem, params: Mapping) -> None:
    """Validate what the pipelined runners need (raises SpecError naming the field)."""
    if problem.schedule != "pipelined":
        raise SpecError(f"field 'schedule' is {problem.schedule!r}; this runner implements 'pipelined'")
    optim.check_optimizer(problem.optimizer)
    validate_pipelined(problem)
    wanted = {p for ids in module_param_ids(problem) for p in ids}
    missing = sorted(wanted - set(params))
    if missing:
        raise SpecError(f"field 'params' lacks ids {missing[:5]}{'...' if len(missing) > 5 else ''}")


def summed_terms(own: OwnTerm | None, link: tuple[int, dict] | None) -> dict:
    """BL-4.2.4: the gradient of one update, the own term plus the link term."""
    grads = dict(own.grads) if own else {}
    for p, g in (link[1].items() if link else ()):
        grads[p] = grads[p] + g if p in grads else g
    return grads


def update_event(tick: int, k: int, param_ids: tuple[str, ...], own: OwnTerm | None,
                 link: tuple[int, dict] | None, grads: Mapping) -> UpdateEvent:
    """BL-4.2.4: the event of module ``k``'s update; a link-only update lists its tail only."""
    losses = ((k,) if own else ()) + ((k + 1,) if link else ())
    batches = ((own.batch,) if own else ()) + ((link[0],) if link else ())
    ids = param_ids if own else tuple(p for p in param_ids if p in grads)
    return UpdateEvent(tick, k, ids, losses, batches)


class Stage:
    """Module ``k`` (1-based) of the pipeline: its parameters, buffers, optimizer state,
    update counter and stash of tail residuals keyed by batch id."""

    def __init__(self, problem: Problem, k: int, params: Mapping, buffers: Mapping, xp=np):
        self.problem, self.k, self.xp = problem, k, xp
        g, part, method = problem.graph, problem.partition, problem.method
        bounds = module_bounds(len(g.units), part, method)
        self.K = len(bounds)
        a, b = bounds[k - 1]
        self.units = g.units[a:b]
        self.head = part.heads[k - 1] if k < self.K else None
        self.input = INPUT if a == 0 else g.units[a - 1].output
        self.logits = self.head.output if self.head else self.units[-1].output
        weights = (1.0,) if method.kind == "bp" else (method.loss_weights or (1.0,) * self.K)
        self.weight = float(weights[k - 1])
        self.beta = float(method.beta)
        links = link_param_ids(problem)
        self.param_ids = module_param_ids(problem)[k - 1]
        self.link_ids = links[k - 1]                       # tail params that loss k+1 reaches
        self.sends_link = k > 1 and bool(links[k - 2])    # loss k links into module k-1
        n_tail = b - max(a, b - method.P) if self.link_ids else 0
        self.tail = range(len(self.units) - n_tail, len(self.units))  # local unit indices
        dtype = np.dtype(problem.dtype)
        self.params = {p: xp.asarray(params[p], dtype=dtype) for p in self.param_ids}
        own_buffers = [s.id for u in (*self.units, *([self.head] if self.head else ())) for s in u.buffers]
        self.buffers = {s: xp.asarray(buffers[s], dtype=dtype) for s in own_buffers}
        self.decay = frozenset(s.id for u in (*self.units, *([self.head] if self.head else ()))
                               for s in u.params if s.decay)
        self.state = optim.init_state(self.params, problem.optimizer)
        self.updates = 0   # BL-4.2.8: the optimizer step counter is the number of updates made
        self.stash: dict[int, dict] = {}
        self.last_grads: dict = {}

    # -- the own term ---------------------------------------------------------------
    def forward(self, batch: int, h, y) -> tuple[dict, dict, object]:
        """Forward module k (and head k) on ``h`` with the current parameters.

        Returns (residuals by local unit index, head residuals, values). Stashes the
        tail residuals of ``batch`` when a link into this module exists.
        """
        values = {self.input: h}
        saved = {i: engine.forward(u.ops, values, self.params, self.buffers) for i, u in enumerate(self.units)}
        head_saved = engine.forward(self.head.ops, values, self.params, self.buffers) if self.head else {}
        if self.tail:
            self.stash[batch] = self._stash_entry(saved, values)
        return saved, head_saved, values

    def _stash_entry(self, saved: dict, values: dict) -> dict:
        """What the link backward of this batch needs later: the tail residuals."""
        return {i: saved[i] for i in self.tail}

    def backward_own(self, batch: int, saved: dict, head_saved: dict, values: dict, y) -> OwnTerm:
        """Loss k on this batch, back-propagated through head k and module k (BL-3.7 step 2)."""
        loss, ce = cross_entropy(values[self.logits], y)
        cot = {self.logits: cross_entropy_vjp(ce, self.weight)}
        grads: dict = {}
        if self.head:
            engine.backward(self.head.ops, head_saved, cot, grads)
        for i in reversed(range(len(self.units))):
            engine.backward(self.units[i].ops, saved[i], cot, grads)
        out = values[self.units[-1].output] if self.k < self.K else None
        return OwnTerm(batch, float(loss), grads, out, cot.get(self.input) if self.sends_link else None)

    def own_term(self, batch: int, h, y) -> OwnTerm:
        saved, head_saved, values = self.forward(batch, h, y)
        return self.backward_own(batch, saved, head_saved, values, y)

    # -- the link term --------------------------------------------------------------
    def link_term(self, batch: int, cotangent) -> dict:
        """beta * w_{k+1} dL_{k+1}/dtheta on the tail, from the residuals stored for ``batch``."""
        residuals = self.tail_residuals(batch)
        cot = {self.units[-1].output: self.beta * cotangent}
        grads: dict = {}
        for i in reversed(self.tail):
            engine.backward(self.units[i].ops, residuals[i], cot, grads)
        return grads

    def tail_residuals(self, batch: int) -> dict:
        """BL-4.2.3: the residuals of ``batch``'s own forward (activations and parameter version)."""
        try:
            return self.stash.pop(batch)
        except KeyError:
            raise RuntimeError(f"module {self.k}: no stored tail for batch {batch} (stored: "
                               f"{sorted(self.stash)}); the link arrived for a batch this module "
                               f"did not forward") from None

    # -- the update -----------------------------------------------------------------
    def update(self, tick: int, own: OwnTerm | None, link: tuple[int, dict] | None) -> UpdateEvent | None:
        """One optimizer update summing the terms that exist (BL-4.2.4); None if neither does."""
        if own is None and link is None:
            return None
        grads = summed_terms(own, link)
        self.params, self.state = optim.step(self.params, grads, self.state, self.problem.optimizer,
                                             self.updates, self.decay)
        self.updates += 1
        self.last_grads = grads
        return update_event(tick, self.k, self.param_ids, own, link, grads)


class PipelinedRunner:
    """BL-4.2 in one process: ``step(batch)`` is one tick, ``step(None)`` a tick without input."""

    stage_class = Stage

    def __init__(self, problem: Problem, params: Mapping, buffers: Mapping, xp=np):
        check_problem(problem, params)
        check_values(problem, params, buffers)
        self.problem, self.xp = problem, xp
        K = len(module_param_ids(problem))
        self.stages = [self.stage_class(problem, k, params, buffers, xp) for k in range(1, K + 1)]
        self.t = 0
        self.inbox: list = [None] * K   # (batch id, h, y) each stage forwards this tick
        self.links: list = [None] * K   # (batch id, cotangent) each stage receives this tick

    @property
    def params(self) -> dict:
        return {p: v for s in self.stages for p, v in s.params.items()}

    @property
    def buffers(self) -> dict:
        return {b: v for s in self.stages for b, v in s.buffers.items()}

    def _admit(self, batch: Batch | None):
        if batch is None:
            return None
        p = self.problem
        x = self.xp.asarray(batch.x, dtype=np.dtype(p.dtype))
        if x.shape[1:] != tuple(p.graph.input_shape):
            raise SpecError(f"field 'x' has per-sample shape {x.shape[1:]}, graph {p.graph.name!r} "
                            f"needs {tuple(p.graph.input_shape)}")
        check_finite("input batch", x)
        check_labels(batch.y, x.shape[0], p.graph.num_classes)
        return (int(batch.id), x, self.xp.asarray(batch.y))

    def deliver_links(self, sent: list) -> list:
        """Links sent this tick are received next tick (BL-4.2.3); a hook for mutants."""
        return sent

    def step(self, batch: Batch | None) -> StepRecord:
        self.inbox[0] = self._admit(batch)
        own_terms, losses = [], {}
        for s, msg in zip(self.stages, self.inbox):
            term = s.own_term(*msg) if msg else None
            own_terms.append(term)
            if term:
                losses[s.k] = term.loss
        link_terms = [(m[0], s.link_term(*m)) if m else None for s, m in zip(self.stages, self.links)]
        events, grads = [], {}
        for s, own, link in zip(self.stages, own_terms, link_terms):
            event = s.update(self.t, own, link)
            if event:
                events.append(event)
                grads.update(s.last_grads)
        # messages for the next tick: h_k to stage k+1, cotangent of h_{k-1} to stage k-1
        sent = [None] * len(self.stages)
        for i, own in enumerate(own_terms):
            if own is not None and own.cotangent is not None:  # only stages k > 1 send one
                sent[i - 1] = (own.batch, own.cotangent)
        self.inbox = [None] + [(own.batch, own.output, msg[2]) if own is not None else None
                               for msg, own in zip(self.inbox[:-1], own_terms[:-1])]
        self.links = self.deliver_links(sent)
        self.t += 1
        host = lambda d: {k: self._host(v) for k, v in d.items()}  # noqa: E731
        return StepRecord(host(grads), losses, events, host(self.params), host(self.buffers),
                          extra={"tick": self.t - 1})

    @staticmethod
    def _host(a):
        return to_host(a)

    def pending(self) -> bool:
        """True while a batch or a link is still in flight (the pipeline is not drained)."""
        return any(self.inbox[1:]) or any(self.links) or any(s.stash for s in self.stages)
