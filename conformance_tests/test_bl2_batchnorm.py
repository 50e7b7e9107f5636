"""BL-2.5: batch-norm running statistics after a step (updated exactly once, unbiased variance),
including the degenerate size M = 1 of BL-2.5.2's max(M - 1, 1)."""
import pytest

from backlink.spec import DTYPES

from backlink_conformance.compare import assert_maps_close, check_against_reference
from backlink_conformance.oracle import run_backend, run_reference
from backlink_conformance.strategies import BN_KINDS, boundary_case, cases, smoke_case, sweep


def check_running_stats(conformance_backend, case):
    got, want = run_backend(conformance_backend, case), run_reference(case)
    for t, (g, w) in enumerate(zip(got, want)):
        assert_maps_close(g.buffers, w.buffers, clause="BL-2.5", dtype=case.problem.dtype,
                          what="params" if t == 0 else "steps", name=f"step {t} running statistics",
                          case=case)


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl2_5_running_stats_after_step_smoke(conformance_backend, method):
    check_running_stats(conformance_backend, smoke_case(method, head="conv"))


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("dtype", DTYPES)
def test_bl2_5_2_degenerate_batch_smoke(conformance_backend, dtype):
    """A batch of one 1x1 image: every batch norm (trunk and conv heads) sees M = 1, so the
    output is beta, its input gets no gradient and the running variance moves towards 0."""
    case = boundary_case("m1-batchnorm", dtype)
    check_running_stats(conformance_backend, case)
    check_against_reference(conformance_backend, case, clause="BL-2.5.2")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl2_5_running_stats_after_step(conformance_backend, method, dtype):
    @sweep(case=cases(method, dtype, kinds=BN_KINDS))
    def check(case):
        check_running_stats(conformance_backend, case)
    check()
