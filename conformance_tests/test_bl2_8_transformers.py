"""BL-2.8 / BL-4.7: Vision Transformers through the gradient, reach, schedule and optimizer checks.

The same checks as ``test_bl3_gradients``, ``test_bl3_reach``, ``test_bl4_schedule`` and
``test_bl4_2_pipeline``, on drawn ViTs (depth, width, heads, patch, grain, cuts, heads,
P, beta), plus AdamW (BL-4.7): its update rule replayed on the backend's own gradients,
and parameters after several steps against the reference. Sweeps run a quarter of
``--conformance-examples`` (at least 2), so the default run stays quick.
"""
import copy
import dataclasses

import numpy as np
import pytest

from backlink.reference import optim
from backlink.spec import DTYPES, state_key

from backlink_conformance.compare import assert_close, assert_equal
from backlink_conformance.oracle import run_backend, run_reference
from backlink_conformance.strategies import (SMOKE_ADAMW, TRANSFORMER_KINDS, adamw_optimizers, cases, optimizers,
                                             sweep, transformer_examples, transformer_smoke_case)
from backlink_conformance.test_bl3_gradients import check_gradients
from backlink_conformance.test_bl3_reach import check_reach_exact
from backlink_conformance.test_bl4_2_pipeline import check_ticks, drained_feed, run_feed
from backlink_conformance.test_bl4_optimizer import decay_ids, f64
from backlink_conformance.test_bl4_schedule import check_several_steps
from backlink_conformance.test_bl6_lean import _check_train_step, _lean_runner, _prepare

METHODS = ["bp", "greedy", "backlink"]


def vit_cases(method, dtype, **kw):
    return cases(method, dtype, kinds=TRANSFORMER_KINDS, **kw)


def check_adamw_rule(conformance_backend, case, clause="BL-4.7"):
    """Replay AdamW on the backend's own grads, step by step from its own parameters."""
    problem, opt = case.problem, case.problem.optimizer
    decay = decay_ids(problem)
    before, state = f64(case.params), optim.init_state(f64(case.params), opt)
    for t, rec in enumerate(run_backend(conformance_backend, case)):
        want, state = optim.adamw(before, f64(rec.grads), state, opt, t, decay)
        for k in want:
            assert_close(rec.params[k], want[k], clause=clause, dtype=problem.dtype, what="params", case=case,
                         name=f"step {t} params[{k!r}]",
                         note=f"\n  AdamW from the backend's own grads, lr(t={t}) = "
                              f"{optim.lr_at(opt.lr, opt.schedule, t):g}, "
                              f"{'decoupled decay' if k in decay else 'no decay'}, moments of {t + 1} step(s)")
        before = f64(rec.params)


# ---------------------------------------------------------------- fixed cases

@pytest.mark.conformance_smoke
@pytest.mark.parametrize("method", METHODS)
def test_bl2_8_transformer_gradients_smoke(conformance_backend, method):
    check_gradients(conformance_backend, transformer_smoke_case(method))


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("dtype", DTYPES)
def test_bl4_7_adamw_update_rule_smoke(conformance_backend, dtype):
    check_adamw_rule(conformance_backend, transformer_smoke_case("backlink", dtype, steps=6, optimizer=SMOKE_ADAMW))


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("method", METHODS)
def test_bl4_7_adamw_several_steps_smoke(conformance_backend, method):
    check_several_steps(conformance_backend, transformer_smoke_case(method, steps=4, optimizer=SMOKE_ADAMW), clause="BL-4.7")


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("dtype", DTYPES)
def test_bl4_7_adamw_lean_path_and_state_dict(conformance_backend, dtype):
    """BL-6.5 with AdamW: train_step == step, and the state dict (m as 'momentum', v as
    'adam_v', the update count as 'adam_n') restores a runner that continues identically."""
    case = transformer_smoke_case("backlink", dtype, steps=3, optimizer=SMOKE_ADAMW)
    _check_train_step(conformance_backend, case)
    first = _lean_runner(conformance_backend, case)
    for b in case.batches[:2]:
        first.train_step(copy.deepcopy(b))
    state = first.state_dict()
    for k in (p.id for u in case.problem.graph.units + case.problem.partition.heads for p in u.params):
        for kind in ("momentum", "adam_v", "adam_n"):
            if state_key(kind, k) not in state:
                pytest.fail(f"BL-4.7: state_dict() lacks {state_key(kind, k)!r} (AdamW's m, v and update count)")
        assert_equal(int(np.asarray(state[state_key("adam_n", k)])), 2, clause="BL-4.7",
                     name=f"state_dict()[{state_key('adam_n', k)!r}] after 2 steps", case=case)
    second = _prepare(conformance_backend, case)
    second.load_state_dict(copy.deepcopy(state))
    for runner in (first, second):
        runner.train_step(copy.deepcopy(case.batches[2]))
    sa, sb = first.state_dict(), second.state_dict()
    for key in sa:
        assert_close(sb[key], sa[key], clause="BL-4.7", name=f"{key} one step after load_state_dict",
                     dtype=dtype, what="params", case=case)


# ---------------------------------------------------------------- sweeps

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_bl2_8_transformer_gradients(conformance_backend, method, dtype):
    @sweep(transformer_examples, case=vit_cases(method, dtype))
    def check(case):
        check_gradients(conformance_backend, case)
    check()


@pytest.mark.parametrize("method", ["greedy", "backlink"])
def test_bl2_8_transformer_reach_sets_exact(conformance_backend, method):
    @sweep(transformer_examples, case=vit_cases(method, "float64"))
    def check(case):
        check_reach_exact(conformance_backend, case)
    check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_bl2_8_transformer_several_steps(conformance_backend, method, dtype):
    """Schedule BL-4.1 with SGD or AdamW (BL-4.7): events exact, parameters after 3 steps.

    AdamW trajectories are compared in float64 only: AdamW divides each gradient by its
    running RMS, so float32 rounding of a small gradient becomes an O(lr) change of the
    parameter, and the float32 and float64 trajectories part after a step or two. Float32
    AdamW is checked step by step on the conformance_backend's own gradients (the update rule test).
    Float32 SGD runs 2 steps at a tenth of the drawn rate (a transformer's usual scale):
    at SGD's CNN rates a tiny ViT's float32 gradients part from float64 within 3 steps by
    more than the ``steps`` tolerance in about one example in twenty, in the reference too.
    """
    if dtype == "float64":
        opt, steps = optimizers() | adamw_optimizers(), 3
    else:
        opt, steps = optimizers().map(lambda o: dataclasses.replace(o, lr=o.lr / 10)), 2

    @sweep(transformer_examples, case=vit_cases(method, dtype, steps=steps, optimizer=opt))
    def check(case):
        check_several_steps(conformance_backend, case)
    check()


@pytest.mark.parametrize("dtype", DTYPES)
def test_bl4_7_adamw_update_rule(conformance_backend, dtype):
    eps = (1e-6, 1e-3) if dtype == "float64" else (1e-3,)

    @sweep(transformer_examples, case=vit_cases("backlink", dtype, steps=4, optimizer=adamw_optimizers(eps)))
    def check(case):
        check_adamw_rule(conformance_backend, case)
    check()


@pytest.mark.parametrize("schedule", ["pipelined"])
@pytest.mark.parametrize("method", ["greedy", "backlink"])
def test_bl2_8_transformer_pipelined(conformance_backend, method, schedule):
    @sweep(transformer_examples, case=vit_cases(method, "float64", steps=3, schedule=schedule,
                                                optimizer=adamw_optimizers()))
    def check(case):
        feed = drained_feed(case)
        check_ticks(run_feed(conformance_backend, case, feed), run_reference(case), case, feed)
    check()
