"""Deliberately broken *torch* backends: :class:`TorchBackend` with ONE planted bug each.

The reference mutants (``tests/meta/mutants.py``) wrap the reference's functions; these
plant the bugs a PyTorch author of local training makes -- a missing ``detach``, a
forgotten beta, a recomputed forward that bumps the BN statistics again, ``eval()``
left on -- inside the torch backend's own code. The conformance suite must reject each
(``tests/meta/test_mutants.py``). Use one as ``--conformance-backend tests.meta.mutants_torch:NoDetach``.
They run the synchronous schedule on CPU (the pipelined tests skip by capability).
"""
from __future__ import annotations

import dataclasses

from backlink.backends.torch_backend.backend import TorchBackend
from backlink.backends.torch_backend.ops import OPS
from backlink.backends.torch_backend.runner import TorchRunner

__all__ = ["MUTANTS", "Baseline", "TorchMutant"]


class TorchMutant(TorchBackend):
    """The torch backend (CPU, synchronous) whose runner is ``runner``; a subclass plants a bug."""

    bug = "none"

    def __init__(self):
        super().__init__("cpu")
        self.capabilities = dataclasses.replace(self.capabilities, schedules=("synchronous",))


def mutant(bug: str):
    """A :class:`TorchMutant` whose runner is the decorated TorchRunner subclass."""
    def make(runner_cls):
        return type(runner_cls.__name__, (TorchMutant,), {"bug": bug, "runner": runner_cls,
                                                          "__doc__": runner_cls.__doc__})
    return make


class Baseline(TorchMutant):
    """No bug: the mutant machinery itself must pass the suite."""


def _plan_as(runner, **method_changes):
    """Plan the segments for a changed method; the runner keeps reporting the true problem."""
    true = runner.problem
    runner.problem = dataclasses.replace(true, method=dataclasses.replace(true.method, **method_changes))
    try:
        TorchRunner._prepare_plan(runner)
    finally:
        runner.problem = true


@mutant("module inputs not detached: every loss back-propagates through all earlier modules")
class NoDetach(TorchRunner):
    """Each loss's walk runs to the input with the full cotangent (``h.detach()`` missing)."""

    def _prepare_plan(self):
        m = self.problem.method
        if m.kind == "bp":
            return super()._prepare_plan()
        _plan_as(self, kind="backlink", link_length=len(self.problem.graph.units), beta=1.0,
                 allow_cross_module=True)


@mutant("link length P + 1 (tails one unit too long)")
class LinkTooLong(TorchRunner):
    def _prepare_plan(self):
        m = self.problem.method
        if m.kind != "backlink":
            return super()._prepare_plan()
        _plan_as(self, link_length=m.link_length + 1, allow_cross_module=True)


@mutant("beta ignored: the linked tail gets the full cotangent")
class BetaAsOne(TorchRunner):
    def _prepare_plan(self):
        _plan_as(self, beta=1.0)


@mutant("loss weights w_k ignored")
class LossWeightsIgnored(TorchRunner):
    def _prepare_plan(self):
        super()._prepare_plan()
        self.weights = (1.0,) * len(self.weights)


@mutant("auxiliary heads get no gradient (head parameters left out of the backward)")
class HeadFrozen(TorchRunner):
    def gradients(self, x, y):
        grads, losses = super().gradients(x, y)
        heads = {p.id for h in self.problem.partition.heads for p in h.params}
        return {k: v for k, v in grads.items() if k not in heads}, losses


@mutant("each segment's forward is run twice (recomputation for the link): BN running stats move twice")
class RecomputeForward(TorchRunner):
    def _forward_segment(self, j, orig, producer):
        super()._forward_segment(j, orig, producer)
        return super()._forward_segment(j, orig, producer)


@mutant("batch norm left in eval mode: running statistics normalise the batch")
class BatchnormEval(TorchRunner):
    def _forward_segment(self, j, orig, producer):
        train_bn = OPS["batchnorm"]
        OPS["batchnorm"] = lambda *a, training=True, **kw: train_bn(*a, training=False, **kw)
        try:
            return super()._forward_segment(j, orig, producer)
        finally:
            OPS["batchnorm"] = train_bn


@mutant("weight decay applied to every parameter (biases and BN too)")
class DecayEverything(TorchRunner):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.decay = frozenset(self.params)


MUTANTS = sorted(name for name, obj in list(globals().items())
                 if isinstance(obj, type) and issubclass(obj, TorchMutant) and obj not in (TorchMutant, Baseline))
