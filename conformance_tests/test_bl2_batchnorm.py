"""BL-2.5: batch-norm running statistics after a step (updated exactly once, unbiased variance)."""
import pytest

from backlink.spec import DTYPES

from backlink_conformance.compare import assert_maps_close
from backlink_conformance.oracle import run_backend, run_reference
from backlink_conformance.strategies import BN_KINDS, cases, smoke_case, sweep


def check_running_stats(backend, case):
    got, want = run_backend(backend, case), run_reference(case)
    for t, (g, w) in enumerate(zip(got, want)):
        assert_maps_close(g.buffers, w.buffers, clause="BL-2.5", dtype=case.problem.dtype,
                          what="params" if t == 0 else "steps", name=f"step {t} running statistics",
                          case=case)


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl2_5_running_stats_after_step_smoke(backend, method):
    check_running_stats(backend, smoke_case(method))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl2_5_running_stats_after_step(backend, method, dtype):
    @sweep(case=cases(method, dtype, kinds=BN_KINDS))
    def check(case):
        check_running_stats(backend, case)
    check()
