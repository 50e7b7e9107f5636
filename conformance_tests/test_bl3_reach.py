"""BL-3.6 / BL-3.7.3: reach sets are exact -- which parameters each loss's gradient reaches.

Each loss is isolated by one-hot loss weights. A parameter outside the loss's reach set
must then get no gradient or an exactly zero one; a parameter inside must get a nonzero
gradient unless the reference's own gradient is exactly zero there (a dead ReLU can do
that legitimately). Values are compared with the reference as well.
"""
import numpy as np
import pytest

from backlink.spec import DTYPES, reach_sets

from backlink_conformance.compare import assert_keys, assert_maps_close, fail
from backlink_conformance.oracle import reach_union, run_backend, run_reference, with_method
from backlink_conformance.strategies import cases, smoke_case, sweep


def check_keys(conformance_backend, case):
    rec = run_backend(conformance_backend, case)[0]
    assert_keys(rec.grads, reach_union(case.problem), clause="BL-3.7",
                name="record.grads (must be exactly the union of the reach sets)", case=case)


def check_reach_exact(conformance_backend, case):
    problem = case.problem
    reach = reach_sets(problem.graph, problem.partition, problem.method)
    for r in reach:
        weights = tuple(1.0 if j == r.loss else 0.0 for j in range(1, len(reach) + 1))
        iso = case if problem.method.kind == "bp" else with_method(case, loss_weights=weights)
        got, want = run_backend(conformance_backend, iso)[0], run_reference(iso)[0]
        support = {k for k, g in got.grads.items() if np.any(np.asarray(g) != 0)}
        allowed = r.own | r.tail
        sets = f"reach set of loss {r.loss}: own {sorted(r.own)}, tail {sorted(r.tail)}; loss weights {weights}"
        outside = sorted(support - allowed)
        if outside:
            fail("BL-3.6", f"loss {r.loss}'s gradient reaches {outside}, outside its reach set ({sets})", iso)
        reference_zero = {k for k, g in want.grads.items() if not np.any(g != 0)}
        missing = sorted(allowed - support - reference_zero)
        if missing:
            fail("BL-3.6", f"loss {r.loss}'s gradient does not reach {missing}, which are in its reach set "
                           f"({sets})", iso)
        assert_maps_close({k: got.grads[k] for k in allowed if k in got.grads},
                          {k: want.grads[k] for k in allowed}, clause="BL-3.6", dtype=problem.dtype,
                          name=f"grads of loss {r.loss} alone", case=iso)


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl3_6_grad_keys_are_union_of_reach_sets_smoke(conformance_backend, method):
    check_keys(conformance_backend, smoke_case(method))


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("method", ["greedy", "backlink"])
def test_bl3_6_reach_sets_exact_smoke(conformance_backend, method):
    check_reach_exact(conformance_backend, smoke_case(method))


@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl3_6_grad_keys_are_union_of_reach_sets(conformance_backend, method):
    @sweep(case=cases(method, "float64"))
    def check(case):
        check_keys(conformance_backend, case)
    check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl3_6_reach_sets_exact(conformance_backend, method, dtype):
    @sweep(case=cases(method, dtype))
    def check(case):
        check_reach_exact(conformance_backend, case)
    check()
