"""BL-2.4 / BL-2.6: parameter and buffer ids, shapes, and use of the given initial values."""
import pytest

from backlink.spec import DTYPES, Optimizer

from backlink_conformance.compare import assert_close, assert_keys, assert_equal
from backlink_conformance.oracle import run_backend
from backlink_conformance.strategies import cases, smoke_case, sweep


def check_ids_and_shapes(conformance_backend, case):
    rec = run_backend(conformance_backend, case)[0]
    problem = case.problem
    units = problem.graph.units + problem.partition.heads
    params = {a.id: a.shape for u in units for a in u.params}
    buffers = {a.id: a.shape for u in units for a in u.buffers}
    assert_keys(rec.params, params, clause="BL-2.4", name="record.params", case=case)
    assert_keys(rec.buffers, buffers, clause="BL-2.4", name="record.buffers", case=case)
    for field, shapes in (("params", params), ("buffers", buffers)):
        for k, shape in shapes.items():
            assert_equal(tuple(getattr(rec, field)[k].shape), tuple(shape), clause="BL-2.6",
                         name=f"record.{field}[{k!r}].shape", case=case)


@pytest.mark.conformance_smoke
def test_bl2_4_ids_and_shapes_smoke(conformance_backend):
    check_ids_and_shapes(conformance_backend, smoke_case("backlink"))


@pytest.mark.parametrize("method", ["bp", "backlink"])
def test_bl2_4_ids_and_shapes(conformance_backend, method):
    @sweep(case=cases(method, "float64"))
    def check(case):
        check_ids_and_shapes(conformance_backend, case)
    check()


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("dtype", DTYPES)
def test_bl2_4_initial_values_are_used(conformance_backend, dtype):
    """With lr = 0 nothing moves: the parameters after a step are the ones given (BL-2.4.1)."""
    case = smoke_case("backlink", dtype, optimizer=Optimizer(lr=0.0))
    rec, = run_backend(conformance_backend, case)
    for k, v in case.params.items():
        assert_close(rec.params[k], v, clause="BL-2.4.1", dtype=dtype, what="params", case=case,
                     name=f"params[{k!r}] after a step with lr=0 (must equal the given initial value)")
