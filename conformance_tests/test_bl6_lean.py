"""BL-6.5: the lean path for training (optional): train_step, state_dict/load_state_dict, predict.

A backend whose runners lack these members skips this file with the reason; one that
has them must give, through them, what its recorded path (``step``) gives.
"""
import copy

import numpy as np
import pytest

from backlink.reference.backlink import predict as reference_predict
from backlink.spec import DTYPES, METHODS, lean_missing, state_key

from backlink_conformance.compare import assert_close, assert_equal, assert_keys, fail
from backlink_conformance.oracle import all_param_ids, run_reference
from backlink_conformance.strategies import SMOKE_OPTIMIZER, cases, smoke_case, sweep


def _prepare(backend, case):
    return backend.prepare(case.problem, copy.deepcopy(dict(case.params)), copy.deepcopy(dict(case.buffers)))


def _lean_runner(backend, case):
    runner = _prepare(backend, case)
    missing = lean_missing(runner)
    if missing:
        pytest.skip(f"backend {backend.name!r}: its runner has no {', '.join(missing)} "
                    f"(the BL-6.5 lean path is optional)")
    return runner


def _expected_keys(problem) -> set[str]:
    units = problem.graph.units + tuple(problem.partition.heads)
    buffers = {b.id for u in units for b in u.buffers}
    params = all_param_ids(problem)
    return ({state_key("param", k) for k in params} | {state_key("momentum", k) for k in params}
            | {state_key("buffer", k) for k in buffers} | {state_key("step")})


def _check_train_step(backend, case):
    dtype = case.problem.dtype
    lean = _lean_runner(backend, case)
    recorded = _prepare(backend, case)
    for b in case.batches:
        rec = recorded.step(copy.deepcopy(b))
        losses = lean.train_step(copy.deepcopy(b))
        assert_keys(losses, rec.losses, clause="BL-6.5.1", name=f"train_step losses (batch {b.id})", case=case)
        if not all(isinstance(k, int) and isinstance(v, float) for k, v in losses.items()):
            fail("BL-6.5.1", f"train_step must return int loss ids -> float values, got {losses!r}", case)
        for k in rec.losses:
            assert_close(losses[k], rec.losses[k], clause="BL-6.5.1", name=f"loss {k} of batch {b.id}",
                         dtype=dtype, what="params", case=case)
    state = lean.state_dict()
    for k in rec.params:
        assert_close(state[state_key("param", k)], rec.params[k], clause="BL-6.5.1",
                     name=f"state_dict param {k!r} after {len(case.batches)} lean steps", dtype=dtype,
                     what="params", case=case, note=" (the recorded path's value)")
    for k in rec.buffers:
        assert_close(state[state_key("buffer", k)], rec.buffers[k], clause="BL-6.5.1",
                     name=f"state_dict buffer {k!r}", dtype=dtype, what="params", case=case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_bl6_5_1_train_step_is_step(conformance_backend, method, dtype):
    _check_train_step(conformance_backend, smoke_case(method, dtype, steps=3, optimizer=SMOKE_OPTIMIZER))


@sweep(case=cases("backlink", "float64", steps=3))
def test_bl6_5_1_train_step_is_step_sweep(conformance_backend, case):
    _check_train_step(conformance_backend, case)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bl6_5_2_state_dict_round_trip(conformance_backend, dtype):
    case = smoke_case("backlink", dtype, steps=3, optimizer=SMOKE_OPTIMIZER)
    first = _lean_runner(conformance_backend, case)
    for b in case.batches[:2]:
        first.train_step(copy.deepcopy(b))
    state = first.state_dict()
    assert_keys(state, _expected_keys(case.problem), clause="BL-6.5.2", name="state_dict()", case=case)
    for key, a in state.items():
        if type(a) is not np.ndarray:
            fail("BL-6.5.2", f"state_dict()[{key!r}] is a {type(a).__module__}.{type(a).__name__}; "
                             f"it must be a host numpy.ndarray", case)
        want = np.dtype(np.int64) if key == state_key("step") else np.dtype(dtype)
        if a.dtype != want:
            fail("BL-6.5.2", f"state_dict()[{key!r}] has dtype {a.dtype}; expected {want}", case)
    assert_equal(int(state[state_key("step")]), 2, clause="BL-6.5.2", name="state_dict()['step']", case=case)
    second = _prepare(conformance_backend, case)  # a fresh runner, then the saved state: continues identically
    second.load_state_dict(copy.deepcopy(state))
    last = case.batches[2]
    a, b = first.train_step(copy.deepcopy(last)), second.train_step(copy.deepcopy(last))
    for k in a:
        assert_close(b[k], a[k], clause="BL-6.5.2", name=f"loss {k} after load_state_dict", dtype=dtype,
                     what="params", case=case)
    sa, sb = first.state_dict(), second.state_dict()
    for key in sa:
        assert_close(sb[key], sa[key], clause="BL-6.5.2", name=f"{key} one step after load_state_dict",
                     dtype=dtype, what="params", case=case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ("bp", "backlink"))
def test_bl6_5_3_predict_is_reference_eval_mode(conformance_backend, method, dtype):
    case = smoke_case(method, dtype, steps=2, optimizer=SMOKE_OPTIMIZER)
    runner = _lean_runner(conformance_backend, case)
    for b in case.batches:
        runner.train_step(copy.deepcopy(b))
    expected_run = run_reference(case)[-1]
    x = np.random.default_rng([case.seed, 7]).standard_normal((6, *case.problem.graph.input_shape))
    x = x.astype(dtype)
    before = runner.state_dict()
    logits = runner.predict(x.copy())
    if type(logits) is not np.ndarray:
        fail("BL-6.5.3", f"predict returned a {type(logits).__module__}.{type(logits).__name__}; "
                         f"it must be a host numpy.ndarray", case)
    expected = reference_predict(case.problem.graph, expected_run.params, expected_run.buffers,
                                 x.astype(np.float64))
    assert_close(logits, expected, clause="BL-6.5.3", name="predict(x) logits", dtype=dtype, what="steps",
                 case=case, note=" (the reference's eval-mode logits after the same steps)")
    after = runner.state_dict()
    for key in before:
        if not np.array_equal(after[key], before[key]):
            fail("BL-6.5.3", f"predict changed {key!r}; evaluation must not move parameters or "
                             f"batch-norm running statistics", case)
