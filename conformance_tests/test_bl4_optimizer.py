"""BL-4.3 / BL-4.4: the SGD update rule and the learning-rate schedules.

These checks use the backend's *own* reported gradients, so they test the optimizer
alone: whatever ``record.grads`` says, the parameters after the step must be what SGD
(momentum, Nesterov, weight decay on ``decay`` parameters only) makes of them with
lr(t) from the schedule.
"""
import numpy as np
import pytest

from backlink.reference import optim
from backlink.spec import DTYPES, LRSchedule, Optimizer

from backlink_conformance.compare import assert_close, fail
from backlink_conformance.oracle import run_backend
from backlink_conformance.strategies import SMOKE_OPTIMIZER, cases, optimizers, smoke_case, sweep

f64 = lambda d: {k: np.asarray(v, dtype=np.float64) for k, v in d.items()}  # noqa: E731


def decay_ids(problem):
    return frozenset(p.id for u in problem.graph.units + problem.partition.heads for p in u.params if p.decay)


def check_update_rule(conformance_backend, case, clause="BL-4.3"):
    """Replay SGD on the backend's own grads, step by step from its own parameters."""
    problem, opt = case.problem, case.problem.optimizer
    records = run_backend(conformance_backend, case)
    decay = decay_ids(problem)
    before, state = f64(case.params), optim.init_state(f64(case.params))
    for t, rec in enumerate(records):
        grads = f64(rec.grads)
        want, state = optim.sgd(before, grads, state, opt, t, decay)
        lr = optim.lr_at(opt.lr, opt.schedule, t)
        for k in want:
            assert_close(rec.params[k], want[k], clause=clause, dtype=problem.dtype, what="params", case=case,
                         name=f"step {t} params[{k!r}]",
                         note=f"\n  expected from the backend's own grads with lr(t={t}) = {lr:g}, "
                              f"{'decay' if k in decay else 'no decay'} flag, "
                              f"{'updated' if k in grads else 'no gradient, so unchanged'}")
        before = f64(rec.params)


#: Six steps t = 0..5 reach every boundary: the step schedule's first two decays (t = 2, 4);
#: cosine with warmup: t = 0, W - 1, W = 2, T = 4 and past T (t = 5, where lr stays 0);
#: cosine without warmup: W = 0 (no warmup division), T = 3 and two steps past it.
SCHEDULES = {"constant": LRSchedule(), "step": LRSchedule("step", step_size=2, gamma=0.5),
             "cosine": LRSchedule("cosine", warmup=2, total=4),
             "cosine-no-warmup": LRSchedule("cosine", warmup=0, total=3)}


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_bl4_4_lr_schedule(conformance_backend, kind):
    opt = Optimizer(lr=0.2, schedule=SCHEDULES[kind])
    case = smoke_case("greedy", steps=6, optimizer=opt)
    before = f64(case.params)
    for t, rec in enumerate(run_backend(conformance_backend, case)):
        after, grads = f64(rec.params), f64(rec.grads)
        lr = optim.lr_at(opt.lr, opt.schedule, t)
        implied = {k: float((before[k] - after[k]).ravel() @ g.ravel() / (g.ravel() @ g.ravel()))
                   for k, g in grads.items() if np.any(g != 0)}
        typical = float(np.median(list(implied.values())))
        past = f" (t > T = {opt.schedule.total}: the cosine schedule stays at 0)" \
            if opt.schedule.kind == "cosine" and t > opt.schedule.total else ""
        odd = {k: v for k, v in implied.items() if not np.isclose(v, typical, rtol=1e-6, atol=1e-9)}
        if odd:
            fail("BL-4.3", f"step t={t}: most parameters moved with lr {typical:.6g}, but "
                           f"{ {k: round(v, 6) for k, v in list(odd.items())[:4]} } did not", case)
        if not np.isclose(typical, lr, rtol=1e-6, atol=1e-9):
            fail("BL-4.4", f"step t={t}: the parameter update implies lr {typical:.6g}, the {kind} schedule "
                           f"{opt.schedule} gives lr({t}) = {lr:.6g}{past}", case)
        before = after


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("nesterov", [False, True])
def test_bl4_3_momentum_and_nesterov(conformance_backend, nesterov):
    opt = Optimizer(lr=0.1, momentum=0.9, nesterov=nesterov)
    check_update_rule(conformance_backend, smoke_case("greedy", steps=3, optimizer=opt))


@pytest.mark.conformance_smoke
def test_bl4_3_weight_decay_only_on_decay_params(conformance_backend):
    opt = Optimizer(lr=0.1, weight_decay=0.1)
    case = smoke_case("backlink", optimizer=opt)
    rec, = run_backend(conformance_backend, case)
    decay = decay_ids(case.problem)
    for k, g in rec.grads.items():
        theta, g = np.asarray(case.params[k], dtype=np.float64), np.asarray(g, dtype=np.float64)
        moved = theta - np.asarray(rec.params[k], dtype=np.float64)
        plain, decayed = opt.lr * g, opt.lr * (g + opt.weight_decay * theta)
        want, other = (decayed, plain) if k in decay else (plain, decayed)
        if not np.allclose(moved, want, rtol=1e-4, atol=1e-7) and np.allclose(moved, other, rtol=1e-4, atol=1e-7):
            fail("BL-4.3", f"params[{k!r}] (ArraySpec.decay={k in decay}) was updated "
                           f"{'without' if k in decay else 'with'} weight decay", case)
        assert_close(rec.params[k], theta - want, clause="BL-4.3", dtype="float64", what="params", case=case,
                     name=f"params[{k!r}] after one step (decay={k in decay}, lr 0.1, weight_decay 0.1)")


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("dtype", DTYPES)
def test_bl4_3_sgd_update_rule_smoke(conformance_backend, dtype):
    check_update_rule(conformance_backend, smoke_case("backlink", dtype, steps=3, optimizer=SMOKE_OPTIMIZER))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bl4_3_sgd_update_rule(conformance_backend, dtype):
    @sweep(case=cases("backlink", dtype, steps=4, optimizer=optimizers()))
    def check(case):
        check_update_rule(conformance_backend, case)
    check()
