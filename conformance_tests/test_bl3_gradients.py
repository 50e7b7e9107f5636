"""BL-3.2 / BL-3.7: loss values and the gradient g of BP, greedy and BackLink(P, beta, w).

Drawn graphs (MLP, small CNN, ResNet-8 at block and layer granularity), partitions,
heads, link lengths, link weights, loss weights, batch sizes and seeds; expected values
from the reference in float64 on the same arrays. Last, BL-3.5: tails longer than the
previous module, for backends that declare ``cross_module``.
"""
import pytest

from backlink.spec import DTYPES, reach_sets

from backlink_conformance.compare import assert_close, assert_equal, assert_keys, check_against_reference
from backlink_conformance.oracle import run_backend, run_reference
from backlink_conformance.strategies import BOUNDARY_CASES, boundary_case, cases, smoke_case, sweep

#: The fixed boundary cases of BL-3 checked here (the others sit with their clauses).
BOUNDARIES = ("k1-greedy", "k1-backlink", "kN-backlink-P1", "beta-zero")


def reach_note(problem, pid):
    terms = []
    for r in reach_sets(problem.graph, problem.partition, problem.method):
        if pid in r.own:
            terms.append(f"own term of loss {r.loss}, coefficient w={r.weight}")
        if pid in r.tail:
            terms.append(f"tail term of loss {r.loss}, coefficient beta*w={r.tail_weight}")
    return f"\n  {pid} receives: {'; '.join(terms) or 'no term'}"


def check_losses(got, want, case):
    assert_keys(got.losses, want.losses, clause="BL-3.2", name="record.losses", case=case)
    for k, v in want.losses.items():
        assert_close(got.losses[k], v, clause="BL-3.2", dtype=case.problem.dtype, name=f"loss L_{k}", case=case)


def check_gradients(conformance_backend, case, clause="BL-3.7"):
    got, want = run_backend(conformance_backend, case)[0], run_reference(case)[0]
    check_losses(got, want, case)
    assert_keys(got.grads, want.grads, clause=clause, name="record.grads", case=case)
    for k, g in want.grads.items():
        assert_close(got.grads[k], g, clause=clause, dtype=case.problem.dtype, name=f"grads[{k!r}]",
                     case=case, note=reach_note(case.problem, k))


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl3_2_loss_values_smoke(conformance_backend, method):
    case = smoke_case(method)
    check_losses(run_backend(conformance_backend, case)[0], run_reference(case)[0], case)


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("head", ["linear", "conv"])
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl3_7_gradients_smoke(conformance_backend, method, head):
    """Every method with every head type (conv heads hold a batch norm)."""
    check_gradients(conformance_backend, smoke_case(method, head=head))


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("name", BOUNDARIES)
def test_bl3_7_boundaries_smoke(conformance_backend, name):
    """K = 1, K = N with P = |M_{k-1}|, beta = 0: two steps, every record against the reference."""
    clause = BOUNDARY_CASES[name][0]
    check_against_reference(conformance_backend, boundary_case(name), clause=clause)


@pytest.mark.conformance_smoke
@pytest.mark.conformance_requires(cross_module=True)
@pytest.mark.parametrize("method", ["backlink"])
def test_bl3_5_cross_module_tail_smoke(conformance_backend, method):
    """P = 3 over modules of 3, 2, 3 units: loss 3's tail is all of module 2 and the last unit of
    module 1, scaled by beta once (not once per module); module 1's event lists loss 3."""
    case = boundary_case("cross-module")
    check_gradients(conformance_backend, case, clause="BL-3.5")
    check_against_reference(conformance_backend, case, clause="BL-3.5")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["bp", "greedy", "backlink"])
def test_bl3_7_gradients_match_reference(conformance_backend, method, dtype):
    @sweep(case=cases(method, dtype))
    def check(case):
        check_gradients(conformance_backend, case)
    check()


@pytest.mark.conformance_requires(cross_module=True)
@pytest.mark.parametrize("method", ["backlink"])
def test_bl3_5_cross_module_tail_matches_reference(conformance_backend, method):
    @sweep(case=cases(method, "float64", cross_module=True))
    def check(case):
        check_gradients(conformance_backend, case, clause="BL-3.5")
        got, want = run_backend(conformance_backend, case)[0], run_reference(case)[0]
        assert_equal(got.events, want.events, clause="BL-3.5", name="update events", case=case)
    check()
