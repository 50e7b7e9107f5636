"""Deliberately broken backends: the reference with ONE planted bug each.

The conformance suite must reject every one of them (``tests/meta/test_mutants.py``).
Use one as ``--backend tests.meta.mutants:LinkPlusOne``. Bugs live in a private copy of
the reference (:func:`isolated.fresh_reference`) or in the runner hooks of
:class:`isolated.Mutant`; ``backlink.reference`` itself, the suite's oracle, is untouched.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from backlink.reference.models import init_params
from backlink.spec import Method, module_bounds, reach_sets

from tests.meta.isolated import Mutant

__all__ = ["MUTANTS", "Baseline"]


def _replace_prim(ref, name, **fields):
    ref.primitives.PRIMS[name] = dataclasses.replace(ref.primitives.PRIMS[name], **fields)


def _with_method(runner, **changes):
    return dataclasses.replace(runner.problem, method=dataclasses.replace(runner.problem.method, **changes))


class Baseline(Mutant):
    """No bug: the mutant machinery itself must pass the suite (checked by the meta tests)."""


# ---------------------------------------------------------------- primitives (BL-2.2)

class VjpSignRelu(Mutant):
    bug = "relu's VJP returns -g * mask"

    def plant(self, ref):
        _replace_prim(ref, "relu", vjp=lambda mask, g: (-(g * mask),))


class AvgpoolForwardScale(Mutant):
    bug = "avgpool's forward divides the window sum by k instead of k*k"

    def plant(self, ref):
        fwd = ref.primitives.PRIMS["avgpool"].fwd
        _replace_prim(ref, "avgpool", fwd=lambda x, *, size: (fwd(x, size=size)[0] * size, fwd(x, size=size)[1]))


# ---------------------------------------------------------------- links and reach (BL-3)

class _MethodChange(Mutant):
    """Computes the gradient with a changed method (the events keep the true one)."""

    def changed(self, method: Method) -> Method:
        raise NotImplementedError

    def compute(self, runner, x, y):
        p = runner.problem
        m = self.changed(p.method)
        return self.ref.backend.gradients(p.graph, p.partition, m, runner.params, runner.buffers, x, y,
                                          validated=True)


class LinkPlusOne(_MethodChange):
    bug = "link length P + 1"

    def changed(self, m):
        return dataclasses.replace(m, link_length=m.link_length + 1, allow_cross_module=True) \
            if m.kind == "backlink" else m


class LinkMinusOne(_MethodChange):
    bug = "link length P - 1"

    def changed(self, m):
        return dataclasses.replace(m, link_length=max(0, m.link_length - 1)) if m.kind == "backlink" else m


class BetaIgnored(_MethodChange):
    bug = "the link weight beta is taken as 1"

    def changed(self, m):
        return dataclasses.replace(m, beta=1.0)


class LossWeightIgnored(_MethodChange):
    bug = "the loss weights w_k are taken as 1"

    def changed(self, m):
        return dataclasses.replace(m, loss_weights=None)


class GradsBeforeWeighting(Mutant):
    bug = "record.grads holds the terms before scaling by w_k (the update itself is right)"

    def report(self, runner, grads, applied):
        p = runner.problem
        unweighted = dataclasses.replace(p.method, loss_weights=None)
        return self.ref.backend.gradients(p.graph, p.partition, unweighted, runner.saved_params,
                                          dict(runner.saved_buffers), runner.saved_x, runner.saved_y,
                                          validated=True)[0]

    def compute(self, runner, x, y):
        runner.saved_params, runner.saved_buffers = dict(runner.params), dict(runner.buffers)
        runner.saved_x, runner.saved_y = x, y
        return super().compute(runner, x, y)


class _Reach(Mutant):
    """Assembles g from true partials dL_k/dtheta with a (wrong) table of coefficients."""

    def coefficients(self, problem) -> list[dict[str, float]]:
        """Per loss k: {parameter id: coefficient}. The spec's own table is right."""
        return [{**{p: r.weight for p in r.own}, **{p: r.tail_weight for p in r.tail}}
                for r in reach_sets(problem.graph, problem.partition, problem.method)]

    def compute(self, runner, x, y):
        p = runner.problem
        _, losses = super().compute(runner, x, y)  # the true call: losses, and buffers updated once
        K = len(module_bounds(len(p.graph.units), p.partition, p.method))
        wide = Method("backlink", link_length=len(p.graph.units), allow_cross_module=True)
        grads = {}
        for k, table in enumerate(self.coefficients(p)):
            w = (1.0,) if p.method.kind == "bp" else tuple(float(j == k) for j in range(K))
            method = p.method if p.method.kind == "bp" else dataclasses.replace(wide, loss_weights=w)
            partial, _ = self.ref.backend.gradients(p.graph, p.partition, method, runner.params,
                                                    dict(runner.buffers), x, y, validated=True)
            for pid, c in table.items():
                grads[pid] = grads.get(pid, 0) + c * partial[pid]
        return grads, losses


def _units_params(graph, a, b):
    return [q.id for u in graph.units[max(0, a):b] for q in u.params]


class MissingStopGradient(_Reach):
    bug = "the tail of loss k is the whole previous module, not its last P units"

    def coefficients(self, problem):
        table = super().coefficients(problem)
        bounds = module_bounds(len(problem.graph.units), problem.partition, problem.method)
        for r, row in zip(reach_sets(problem.graph, problem.partition, problem.method), table):
            if r.tail:
                a, b = bounds[r.loss - 2]
                row.update({q: r.tail_weight for q in _units_params(problem.graph, a, b)})
        return table


class LinkIntoWrongModule(_Reach):
    bug = "loss k links into module k-2 (the last P units before it) instead of module k-1"

    def coefficients(self, problem):
        table = super().coefficients(problem)
        bounds = module_bounds(len(problem.graph.units), problem.partition, problem.method)
        for r, row in zip(reach_sets(problem.graph, problem.partition, problem.method), table):
            for q in r.tail:
                del row[q]
            if r.tail and r.loss >= 3:
                start = bounds[r.loss - 3][1]
                row.update({q: r.tail_weight for q in _units_params(problem.graph, start - problem.method.P, start)})
        return table


class CrossModuleSilent(Mutant):
    bug = "a link longer than the previous module is silently allowed (no SpecError)"

    def check(self, problem):
        if problem.method.kind == "backlink":
            problem = dataclasses.replace(problem, method=dataclasses.replace(problem.method,
                                                                              allow_cross_module=True))
        super().check(problem)

    def compute(self, runner, x, y):
        p = runner.problem
        return self.ref.backend.gradients(p.graph, p.partition, dataclasses.replace(p.method, allow_cross_module=True),
                                          runner.params, runner.buffers, x, y, validated=True)


# ---------------------------------------------------------------- batch norm (BL-2.5)

class BnStatsTwice(Mutant):
    bug = "batch-norm running statistics are updated twice per forward"

    def plant(self, ref):
        update = ref.primitives.PRIMS["batchnorm"].update

        def twice(saved, mean, var, **kw):
            return update(saved, *update(saved, mean, var, **kw), **kw)
        _replace_prim(ref, "batchnorm", update=twice)


class BnEvalInTraining(Mutant):
    bug = "batch norm normalises with the running statistics during training"

    def plant(self, ref):
        fwd = ref.primitives.PRIMS["batchnorm"].fwd
        _replace_prim(ref, "batchnorm", fwd=lambda *a, training=True, **kw: fwd(*a, training=False, **kw))


class BnBiasedRunningVar(Mutant):
    bug = "the running variance takes the biased batch variance"

    def plant(self, ref):
        def biased(saved, mean, var, *, momentum=0.1, eps=1e-5, training=True):
            _, _, _, v, mu, _ = saved
            return (1 - momentum) * mean + momentum * mu, (1 - momentum) * var + momentum * v
        _replace_prim(ref, "batchnorm", update=biased)


# ---------------------------------------------------------------- updates (BL-4.1, BL-4.3, BL-4.4)

class UpdateNotApplied(Mutant):
    bug = "the optimizer update is computed but never applied (stale parameters)"

    def apply(self, runner, grads):
        return grads


class UpdateOneStepLate(Mutant):
    bug = "each step applies the previous step's gradients"

    def apply(self, runner, grads):
        late, runner.pending = getattr(runner, "pending", None), grads
        if late is not None:
            super().apply(runner, late)
        return late


class OneParamNeverUpdated(Mutant):
    bug = "the classifier bias fc.b is never updated"

    def apply(self, runner, grads):
        return super().apply(runner, {k: g for k, g in grads.items() if k != "fc.b"})


class ModulesUpdatedInSequence(Mutant):
    bug = "modules are updated one after another, each later module's gradient taken after the earlier updates"

    def compute(self, runner, x, y):
        runner.last_x, runner.last_y = x, y
        return super().compute(runner, x, y)  # the true gradients (and buffers updated once)

    def apply(self, runner, grads):
        p = runner.problem
        used = {}
        for ids in self.ref.backend.module_params(p):
            g, _ = self.ref.backend.gradients(p.graph, p.partition, p.method, runner.params, dict(runner.buffers),
                                              runner.last_x, runner.last_y, validated=True)
            part = {k: g[k] for k in ids if k in g}
            used.update(part)
            runner.params, runner.state = self.ref.optim.sgd(runner.params, part, runner.state, p.optimizer,
                                                             runner.t, runner.decay)
        return used

    def report(self, runner, grads, applied):
        return applied


class NesterovAsMomentum(Mutant):
    bug = "Nesterov momentum is applied as plain momentum"

    def plant(self, ref):
        sgd = ref.optim.sgd
        ref.optim.sgd = lambda params, grads, state, opt, t, decay: sgd(
            params, grads, state, dataclasses.replace(opt, nesterov=False), t, decay)


class WeightDecayOnAllParams(Mutant):
    bug = "weight decay is applied to every parameter, not only those flagged decay"

    def apply(self, runner, grads):
        runner.decay = frozenset(runner.params)
        return super().apply(runner, grads)


class MomentumDampened(Mutant):
    bug = "the momentum buffer is dampened: buf = m*buf + (1-m)*d"

    def plant(self, ref):
        def sgd(params, grads, state, opt, t, decay):
            lr, params, state = ref.optim.lr_at(opt.lr, opt.schedule, t), dict(params), dict(state)
            for k, g in grads.items():
                d = g + opt.weight_decay * params[k] if (opt.weight_decay and k in decay) else g
                if opt.momentum:
                    state[k] = opt.momentum * state[k] + (1 - opt.momentum) * d
                    d = d + opt.momentum * state[k] if opt.nesterov else state[k]
                params[k] = params[k] - lr * d
            return params, state
        ref.optim.sgd = sgd


class WarmupOffByOne(Mutant):
    bug = "cosine warmup gives base*t/warmup (off by one: lr 0 at t = 0)"

    def plant(self, ref):
        lr_at = ref.optim.lr_at
        ref.optim.lr_at = lambda base, s, t: base * t / s.warmup if (s.kind == "cosine" and t < s.warmup) \
            else lr_at(base, s, t)


class StepScheduleOffByOne(Mutant):
    bug = "the step schedule decays one step early: gamma ** ((t + 1) // step_size)"

    def plant(self, ref):
        lr_at = ref.optim.lr_at
        ref.optim.lr_at = lambda base, s, t: base * s.gamma ** ((t + 1) // s.step_size) if s.kind == "step" \
            else lr_at(base, s, t)


class Float32Accumulation(Mutant):
    bug = "a float64 problem's gradients are computed in float32"

    def compute(self, runner, x, y):
        p = runner.problem
        low = lambda d: {k: np.asarray(v, dtype=np.float32) for k, v in d.items()}  # noqa: E731
        buffers = low(runner.buffers)
        grads, losses = self.ref.backend.gradients(p.graph, p.partition, p.method, low(runner.params), buffers,
                                                   x.astype(np.float32), y, validated=True)
        runner.buffers.update({k: v.astype(p.dtype) for k, v in buffers.items()})
        return {k: g.astype(p.dtype) for k, g in grads.items()}, losses


# ---------------------------------------------------------------- events (BL-4.6)

class EventsWrongLossIds(Mutant):
    bug = "update events carry 0-based loss ids"

    def events(self, runner, batch):
        return [dataclasses.replace(e, losses=tuple(k - 1 for k in e.losses)) for e in super().events(runner, batch)]


class EventsModulesReversed(Mutant):
    bug = "update events are listed from the last module to the first"

    def events(self, runner, batch):
        return list(reversed(super().events(runner, batch)))


# ---------------------------------------------------------------- inputs (BL-2.4, BL-6.1)

class MutatesInputs(Mutant):
    bug = "the parameter arrays given to prepare are updated in place"

    def prepare(self, problem, params, buffers):
        runner = super().prepare(problem, params, buffers)
        runner.given = params
        return runner

    def apply(self, runner, grads):
        out = super().apply(runner, grads)
        for k, v in runner.params.items():
            if runner.given[k].dtype == v.dtype:
                np.copyto(runner.given[k], v)
                runner.params[k] = runner.given[k]
        return out


class DrawsOwnInit(Mutant):
    bug = "the backend draws its own initial parameters instead of using the given ones"

    def prepare(self, problem, params, buffers):
        own, _ = init_params(problem.graph, problem.partition, seed=12345, dtype=problem.dtype)
        return super().prepare(problem, {**params, **own}, buffers)


MUTANTS = sorted(name for name, obj in list(globals().items())
                 if isinstance(obj, type) and issubclass(obj, Mutant) and obj not in (Mutant, Baseline)
                 and not name.startswith("_"))
