"""BL-4.1 / BL-4.6: update events (exact) and parameters after several synchronous steps.

One update per module per step, events as the reference records them, parameters and
running statistics after every step within the ``steps`` tolerance. The pipelined
schedule (BL-4.2) has its own module, ``test_bl4_2_pipeline.py``.
"""
import pytest

from backlink.spec import DTYPES

from backlink_conformance.compare import assert_equal, check_against_reference
from backlink_conformance.oracle import run_backend, run_reference
from backlink_conformance.strategies import SMOKE_OPTIMIZER, cases, optimizers, smoke_case, sweep


def check_events(got, want, case, clause="BL-4.6"):
    assert_equal(len(got), len(want), clause=clause, name="number of step records", case=case)
    for t, (g, w) in enumerate(zip(got, want)):
        assert_equal(list(g.events), list(w), clause=clause, name=f"update events of step/tick {t}", case=case)


def check_several_steps(conformance_backend, case, clause="BL-4.1"):
    check_against_reference(conformance_backend, case, clause)


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl4_6_update_events_smoke(conformance_backend, method):
    case = smoke_case(method, steps=2)
    check_events(run_backend(conformance_backend, case), [w.events for w in run_reference(case)], case)


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl4_1_params_after_several_steps_smoke(conformance_backend, method):
    check_several_steps(conformance_backend, smoke_case(method, steps=3, optimizer=SMOKE_OPTIMIZER))


@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl4_6_update_events_exact(conformance_backend, method):
    @sweep(case=cases(method, "float64", steps=2))
    def check(case):
        check_events(run_backend(conformance_backend, case), [w.events for w in run_reference(case)], case)
    check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl4_1_params_after_several_steps(conformance_backend, method, dtype):
    @sweep(case=cases(method, dtype, steps=4, optimizer=optimizers()))
    def check(case):
        check_several_steps(conformance_backend, case)
    check()
