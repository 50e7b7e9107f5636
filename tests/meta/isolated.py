"""A private copy of the reference to plant bugs in, and the base of every mutant backend.

``fresh_reference(tag)`` imports the reference's modules again under a new package
name, so a mutant can patch its copy's primitive table, optimizer or gradient function
without touching ``backlink.reference``, which the conformance suite uses as its oracle.
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
import types

import numpy as np

import backlink.reference as real_reference
from backlink.reference.backend import ReferenceRunner
from backlink.spec import StepRecord

__all__ = ["fresh_reference", "Mutant", "MutantRunner"]

MODULES = ("xp", "primitives", "engine", "optim", "backlink", "backend")


def fresh_reference(tag: str) -> types.ModuleType:
    """An independent copy of ``backlink.reference`` (its modules in MODULES) as package ``_mutant_<tag>``."""
    name = f"_mutant_{tag}"
    if name in sys.modules:
        return sys.modules[name]
    pkg = types.ModuleType(name)
    pkg.__path__ = list(real_reference.__path__)
    pkg.__package__ = name
    sys.modules[name] = pkg
    for mod in MODULES:
        setattr(pkg, mod, importlib.import_module(f"{name}.{mod}"))
    return pkg


def host(d):
    return {k: np.array(v) for k, v in d.items()}


class MutantRunner(ReferenceRunner):
    """The reference's synchronous step, cut into the hooks a mutant may override."""

    def __init__(self, mutant, problem, params, buffers):
        super().__init__(problem, params, buffers)
        self.mutant = mutant

    def step(self, batch):
        m, p = self.mutant, self.problem
        x = np.asarray(batch.x, dtype=np.dtype(p.dtype))
        grads, losses = m.compute(self, x, np.asarray(batch.y))
        applied = m.apply(self, grads)
        events = m.events(self, batch)
        self.t += 1
        return StepRecord(host(m.report(self, grads, applied)), losses, events, host(self.params),
                          host(self.buffers))


class Mutant:
    """The reference backend with one planted bug (``bug`` says which).

    Hooks, each the reference's behaviour unless a mutant overrides it: ``plant`` patches
    the private reference copy; ``check`` validates at prepare; ``compute`` gives
    (grads, losses); ``apply`` steps the optimizer; ``report`` picks the grads to record;
    ``events`` makes the update events. Mutants declare the synchronous schedule only.
    """

    bug = "none (the reference itself, validating at prepare)"
    version = "0.0-mutant"

    def __init__(self):
        self.ref = fresh_reference(type(self).__name__)
        self.plant(self.ref)
        self._base = self.ref.backend.ReferenceBackend()
        self.name = f"mutant-{type(self).__name__}"
        self.capabilities = dataclasses.replace(self._base.capabilities, schedules=("synchronous",))

    # -- hooks
    def plant(self, ref):
        pass

    def check(self, problem):
        problem.validate()  # BL-2.9.2: reject forbidden problems before computing

    def compute(self, runner, x, y):
        p = runner.problem
        return self.ref.backend.gradients(p.graph, p.partition, p.method, runner.params, runner.buffers,
                                          x, y, validated=True)

    def apply(self, runner, grads):
        runner.params, runner.state = self.ref.optim.step(runner.params, grads, runner.state,
                                                         runner.problem.optimizer, runner.t, runner.decay)
        return grads

    def report(self, runner, grads, applied):
        return grads

    def events(self, runner, batch):
        return self.ref.backend.synchronous_events(runner.problem, runner.t, batch.id)

    # -- the backend protocol
    def prepare(self, problem, params, buffers):
        self.check(problem)
        return MutantRunner(self, problem, params, buffers)

    def primitive(self, name, args, attrs, cotangent):
        return self._base.primitive(name, args, attrs, cotangent)
