"""Deliberately broken pipelined backends (BL-4.2): the conformance suite MUST fail each one.

Each mutant is the reference backend with one plausible pipeline bug, as a subclass of
:class:`~backlink.reference.pipeline.Stage` or
:class:`~backlink.reference.pipeline.PipelinedRunner`. Synchronous problems go to the
unmodified reference, so only the BL-4.2 tests can catch these.
Use one as ``--backend tests.meta.mutants_pipeline:LateLink``; ``MUTANTS`` lists their
names (the convention of ``tests/meta/mutants.py``), ``Baseline`` has no bug.
"""
from __future__ import annotations

from backlink.reference import engine
from backlink.reference.backend import ReferenceBackend
from backlink.reference.pipeline import PipelinedRunner, Stage
from backlink.spec import Problem

__all__ = ["MUTANTS", "Baseline", "PipelineMutant"]


# ---------------------------------------------------------------- broken stages

class RecomputedTailStage(Stage):
    """Stale tail activations: keeps only the module input and recomputes the module's
    forward at link time with the *current* parameters (no weight stashing)."""

    def _stash_entry(self, saved, values):
        return {"input": values[self.input]}

    def tail_residuals(self, batch):
        values, scratch = {self.input: self.stash.pop(batch)["input"]}, dict(self.buffers)
        saved = {i: engine.forward(u.ops, values, self.params, scratch) for i, u in enumerate(self.units)}
        return {i: saved[i] for i in self.tail}


class CurrentWeightsStage(Stage):
    """Wrong parameter version: stored activations, but the VJP uses today's parameters."""

    def _stash_entry(self, saved, values):
        return {"residuals": {i: saved[i] for i in self.tail}, "params": dict(self.params)}

    def tail_residuals(self, batch):
        entry = self.stash.pop(batch)
        then = {id(v): k for k, v in entry["params"].items()}

        def swap(res):
            if isinstance(res, tuple):
                return tuple(self.params[then[id(r)]] if id(r) in then else r for r in res)
            return res
        return {i: {out: swap(r) for out, r in ops.items()} for i, ops in entry["residuals"].items()}


class LatestBatchStage(Stage):
    """A one-slot stash: the link term uses the tail of the batch forwarded last."""

    def tail_residuals(self, batch):
        latest = self.stash[max(self.stash)]
        self.stash.pop(batch)
        return latest


class DoubleBatchNormStage(Stage):
    """Replays the tail's forward at link time (right parameters, result unused) on the real
    buffers: batch-norm running statistics move twice per batch."""

    def _stash_entry(self, saved, values):
        made = {op.out for i in self.tail for op in self.units[i].ops}
        reads = {v for i in self.tail for op in self.units[i].ops for v in op.inputs if v not in made}
        return {"residuals": {i: saved[i] for i in self.tail}, "params": dict(self.params),
                "inputs": {v: values[v] for v in reads}}

    def tail_residuals(self, batch):
        entry = self.stash.pop(batch)
        values = dict(entry["inputs"])
        for i in self.tail:
            engine.forward(self.units[i].ops, values, entry["params"], self.buffers)
        return entry["residuals"]


class TickCounterStage(Stage):
    """The learning-rate schedule reads the tick instead of the module's update count."""

    def update(self, tick, own, link):
        self.updates = tick
        return super().update(tick, own, link)


class LinkOnlyStepsAllStage(Stage):
    """A link-only update steps every parameter of the module (zero gradients elsewhere)."""

    def update(self, tick, own, link):
        if own is None and link is not None:
            link = (link[0], {p: link[1].get(p, 0 * self.params[p]) for p in self.param_ids})
        return super().update(tick, own, link)


# ---------------------------------------------------------------- broken runners

class LateLinkRunner(PipelinedRunner):
    """The link cotangent is applied two ticks after it was computed instead of one."""

    def deliver_links(self, sent):
        held, self._held = getattr(self, "_held", [None] * len(sent)), sent
        return held


def _runner_with(stage_cls):
    return type(f"{stage_cls.__name__}Runner", (PipelinedRunner,), {"stage_class": stage_cls})


# ---------------------------------------------------------------- the backends

class PipelineMutant(ReferenceBackend):
    """The reference backend whose pipelined runner has one planted bug (``bug``, violating
    ``clause``); synchronous problems go to the unmodified reference."""

    bug = "none (the reference's own pipelined runner)"
    clause = ""
    version = "0.0-mutant"
    runner_class = PipelinedRunner

    def __init__(self):
        self.name = f"mutant-{type(self).__name__}"

    def prepare(self, problem, params, buffers):
        Problem.__post_init__(problem)  # validate at prepare, as tests.meta.mutants' Mutant.check does
        if problem.schedule == "pipelined":
            return self.runner_class(problem, params, buffers, xp=self.xp)
        return super().prepare(problem, params, buffers)


class Baseline(PipelineMutant):
    """No bug: the mutant machinery itself must pass the suite."""


class LateLink(PipelineMutant):
    bug, clause = "the link term is applied two ticks after module k+1 computed it", "BL-4.2.3"
    runner_class = LateLinkRunner


class RecomputedTail(PipelineMutant):
    bug, clause = "the tail is recomputed at link time with the current parameters", "BL-4.2.3"
    runner_class = _runner_with(RecomputedTailStage)


class CurrentWeights(PipelineMutant):
    bug, clause = "stored tail activations, but the link VJP uses the current parameters", "BL-4.2.3"
    runner_class = _runner_with(CurrentWeightsStage)


class LatestBatchStash(PipelineMutant):
    bug, clause = "the link term uses the tail stored for the latest batch, not its own", "BL-4.2.3"
    runner_class = _runner_with(LatestBatchStage)


class DoubleBatchNorm(PipelineMutant):
    bug, clause = "the tail's forward is replayed at link time, moving BN statistics twice", "BL-4.2.9"
    runner_class = _runner_with(DoubleBatchNormStage)


class TickCounter(PipelineMutant):
    bug, clause = "the learning-rate schedule reads the tick, not the module's update count", "BL-4.2.8"
    runner_class = _runner_with(TickCounterStage)


class LinkOnlyStepsAll(PipelineMutant):
    bug, clause = "a link-only update steps (and lists) every parameter of the module", "BL-4.2.4"
    runner_class = _runner_with(LinkOnlyStepsAllStage)


#: Names of the mutant backends, each usable as ``--backend tests.meta.mutants_pipeline:NAME``.
MUTANTS = sorted(name for name, obj in list(globals().items())
                 if isinstance(obj, type) and issubclass(obj, PipelineMutant)
                 and obj not in (PipelineMutant, Baseline))
