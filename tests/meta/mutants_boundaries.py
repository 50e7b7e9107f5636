"""Mutant backends whose bug shows only at a clause's boundary value (issue 17).

Each one passed the 0.1 suite: the bug sits at a value no test drew (t past T, M = 1,
K = 1, beta = 0, batch-norm heads under BP, tails across modules). The suite MUST now
reject each one with a quick fixed-case test (``conformance_smoke``), not only with a
hypothesis sweep; ``tests/meta/test_mutants.py`` checks both and prints the catching
test. Use one as ``--conformance-backend tests.meta.mutants_boundaries:BetaCompounding``.
"""
from __future__ import annotations

import dataclasses
import math
import types

import numpy as np

from backlink.spec import INPUT, Method, module_bounds, reach_sets, tail_bounds

from tests.meta.isolated import Mutant
from tests.meta.mutants import Baseline, _MethodChange, _Reach, _replace_prim, _units_params

__all__ = ["MUTANTS", "Baseline", "QUICK"]

#: Every mutant here must be caught by a quick fixed-case test.
QUICK = True


class CosineUnclampedPastT(Mutant):
    bug = "the cosine schedule has no clamp: past T the rate rises again (BL-4.4)"

    def plant(self, ref):
        lr_at = ref.optim.lr_at

        def unclamped(base, s, t):
            if s.kind == "cosine" and t >= s.warmup:
                return base * 0.5 * (1 + math.cos(math.pi * (t - s.warmup) / (s.total - s.warmup)))
            return lr_at(base, s, t)
        ref.optim.lr_at = unclamped


class BnVarianceOverMMinusOne(Mutant):
    bug = "the running variance takes M / (M - 1), not M / max(M - 1, 1): NaN at M = 1 (BL-2.5.2)"

    def plant(self, ref):
        def update(saved, mean, var, *, momentum=0.1, eps=1e-5, training=True):
            xhat, _, _, v, mu, _ = saved
            m = xhat.shape[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                unbiased = v * (np.asarray(m, v.dtype) / np.asarray(m - 1, v.dtype))
            return (1 - momentum) * mean + momentum * mu, (1 - momentum) * var + momentum * unbiased
        _replace_prim(ref, "batchnorm", update=update)


class BnEvalInHeads(Mutant):
    bug = "the heads' batch norms normalise with their running statistics during training"

    def plant(self, ref):
        forward = ref.engine.forward

        def head_eval(ops, values, params, buffers, training=True):
            in_head = bool(ops) and ops[0].out.startswith("head")
            return forward(ops, values, params, buffers, training=training and not in_head)
        engine = types.ModuleType(f"{ref.engine.__name__}_heads_eval")
        engine.__dict__.update({k: v for k, v in vars(ref.engine).items() if not k.startswith("__")})
        engine.forward = head_eval
        ref.backlink.engine = engine


class BpRunsHeads(Mutant):
    bug = "BP runs the heads forward (their batch-norm statistics move), though no head loss is used"

    def compute(self, runner, x, y):
        out = super().compute(runner, x, y)
        p = runner.problem
        if p.method.kind == "bp" and p.partition.heads:
            values, trunk_stats = {INPUT: x}, dict(runner.buffers)  # the trunk's moved once already
            for u in p.graph.units:
                self.ref.engine.forward(u.ops, values, runner.params, trunk_stats)
            for head in p.partition.heads:
                self.ref.engine.forward(head.ops, values, runner.params, runner.buffers)
        return out


class DecayWithoutGradient(Mutant):
    bug = "weight decay and momentum also step parameters no loss reaches (the heads under BP), as g = 0"

    def apply(self, runner, grads):
        super().apply(runner, {k: grads.get(k, 0 * v) for k, v in runner.params.items()})
        return grads


class SingleModuleAsBp(Mutant):
    bug = "a partition of one module (K = 1) is run as BP, so the loss weight w_1 is ignored"

    def compute(self, runner, x, y):
        p = runner.problem
        method = Method("bp") if p.partition.K == 1 else p.method
        return self.ref.backend.gradients(p.graph, p.partition, method, runner.params, runner.buffers, x, y,
                                          validated=True)


class BetaZeroAsOne(_MethodChange):
    bug = "beta = 0 is taken for 'unset' and read as 1 (beta or 1.0)"

    def changed(self, m):
        return dataclasses.replace(m, beta=m.beta or 1.0)


class BetaCompounding(_Reach):
    bug = "a tail across a module boundary takes beta once per module it enters (beta**2 in M_{k-2})"

    def coefficients(self, problem):
        table = super().coefficients(problem)
        bounds = module_bounds(len(problem.graph.units), problem.partition, problem.method)
        for r, row in zip(reach_sets(problem.graph, problem.partition, problem.method), table):
            if r.tail:
                for q in _units_params(problem.graph, 0, bounds[r.loss - 2][0]):
                    if q in r.tail:
                        row[q] *= problem.method.beta
        return table


class CrossModuleEventsPreviousOnly(Mutant):
    bug = "update events list a loss only in its own and the previous module's event, not further back"

    def events(self, runner, batch):
        return [dataclasses.replace(e, losses=tuple(j for j in e.losses if j - e.module <= 1))
                for e in super().events(runner, batch)]


class LinkStopsInsideModule(_Reach):
    bug = "a tail as long as the previous module (P = |M_{k-1}|) stops one unit short of the module's input"

    def coefficients(self, problem):
        table = super().coefficients(problem)
        bounds = module_bounds(len(problem.graph.units), problem.partition, problem.method)
        for r, row in zip(reach_sets(problem.graph, problem.partition, problem.method), table):
            start = bounds[r.loss - 2][0] if r.loss >= 2 else None
            if r.tail and tail_bounds(bounds, r.loss - 1, problem.method)[0] <= start:
                for q in _units_params(problem.graph, start, start + 1):
                    row.pop(q, None)
        return table


MUTANTS = sorted(name for name, obj in list(globals().items())
                 if isinstance(obj, type) and issubclass(obj, Mutant) and obj.__module__ == __name__
                 and obj is not Baseline)
