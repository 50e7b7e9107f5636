"""BL-4.2: the pipelined schedule -- the tick table, link terms, draining, BP locking.

Event sequences are compared exactly with ``backlink.spec.pipeline.tick_events``;
parameters, buffers and losses after every tick with the reference (float64, the same
arrays) within the dtype's ``steps`` tolerance.
"""
import copy
import dataclasses

import numpy as np
import pytest

from backlink.reference.backend import ReferenceBackend
from backlink.spec import Batch, Method, SpecError
from backlink.spec.pipeline import drain_ticks, tick_events

from backlink_conformance.compare import assert_equal, assert_maps_close, fail
from backlink_conformance.oracle import Case, run_reference
from backlink_conformance.strategies import SMOKE_OPTIMIZER, cases, optimizers, smoke_case, sweep

SCHEDULE = "pipelined"
METHOD_KINDS = ("greedy", "backlink", "bp")


def run_feed(conformance_backend, case: Case, feed):
    """Records of ``backend`` for ``feed`` (batches and None), on copies of the case's arrays."""
    runner = conformance_backend.prepare(case.problem, copy.deepcopy(dict(case.params)), copy.deepcopy(dict(case.buffers)))
    return [runner.step(None if b is None else copy.deepcopy(b)) for b in feed]


def reference_feed(case: Case, feed):
    """The reference's records for ``feed`` (as oracle.run_reference: float64, same arrays)."""
    problem = dataclasses.replace(case.problem, dtype="float64")
    up = lambda d: {k: np.array(v, dtype=np.float64) for k, v in d.items()}  # noqa: E731
    runner = ReferenceBackend().prepare(problem, up(case.params), up(case.buffers))
    return [runner.step(None if b is None else Batch(np.array(b.x, np.float64), np.array(b.y), b.id))
            for b in feed]


def check_ticks(records, expected, case, feed):
    """BL-4.2.4 exactly, then BL-4.2.10 values tick by tick."""
    ids = [None if b is None else b.id for b in feed]
    table = tick_events(case.problem, ids)
    dtype = case.problem.dtype
    for t, (got, want, events) in enumerate(zip(records, expected, table)):
        if got.events != events:
            fail("BL-4.2.4", f"tick {t} (feed {ids}): events\n    {got.events}\n  expected\n    {events}", case)
        assert_equal(sorted(got.losses), sorted(want.losses), clause="BL-4.2.10",
                     name=f"tick {t} loss ids", case=case)
        for k in want.losses:
            assert_maps_close({"L": got.losses[k]}, {"L": want.losses[k]}, clause="BL-4.2.2",
                              name=f"tick {t} loss {k}", dtype=dtype, what="steps", case=case)
        assert_maps_close(got.grads, want.grads, clause="BL-4.2.4", name=f"tick {t} grads (summed terms)",
                          dtype=dtype, what="steps", case=case)
        assert_maps_close(got.params, want.params, clause="BL-4.2.4", name=f"tick {t} params",
                          dtype=dtype, what="steps", case=case)
        assert_maps_close(got.buffers, want.buffers, clause="BL-4.2.9", name=f"tick {t} buffers",
                          dtype=dtype, what="steps", case=case)


def drained_feed(case: Case):
    return list(case.batches) + [None] * drain_ticks(case.problem)


# ---------------------------------------------------------------- fixed cases (smoke)

@pytest.mark.conformance_smoke
@pytest.mark.parametrize("schedule", [SCHEDULE])
@pytest.mark.parametrize("method", METHOD_KINDS)
def test_bl4_2_4_tick_table_smoke(conformance_backend, method, schedule):
    """Modules of 3, 2, 3 units, P=2, every optimizer feature; four batches and the drain."""
    case = smoke_case(method, "float64", steps=4, optimizer=SMOKE_OPTIMIZER, schedule=schedule)
    feed = drained_feed(case)
    check_ticks(run_feed(conformance_backend, case, feed), reference_feed(case, feed), case, feed)


@pytest.mark.parametrize("schedule", [SCHEDULE])
@pytest.mark.parametrize("method", ("greedy", "backlink"))
def test_bl4_2_1_bubbles(conformance_backend, method, schedule):
    """step(None) between batches is a tick without input; the table shifts accordingly."""
    case = smoke_case(method, "float64", steps=3, optimizer=SMOKE_OPTIMIZER, schedule=schedule)
    b = case.batches
    feed = [b[0], None, b[1], None, None, b[2]] + [None] * drain_ticks(case.problem)
    check_ticks(run_feed(conformance_backend, case, feed), reference_feed(case, feed), case, feed)


@pytest.mark.parametrize("schedule", [SCHEDULE])
@pytest.mark.parametrize("method", ("greedy", "backlink"))
def test_bl4_2_6_drained_pipeline_is_idle(conformance_backend, method, schedule):
    case = smoke_case(method, "float64", steps=2, schedule=schedule)
    records = run_feed(conformance_backend, case, drained_feed(case) + [None, None])
    last, extra = records[-3], records[-2:]
    for r in extra:
        if r.events:
            fail("BL-4.2.6", f"step(None) after {drain_ticks(case.problem)} drain ticks made events {r.events}",
                 case)
        assert_maps_close(r.params, last.params, clause="BL-4.2.6", name="params after the drain",
                          dtype="float64", what="params", case=case)


@pytest.mark.parametrize("schedule", [SCHEDULE])
@pytest.mark.parametrize("method", ["bp"])
def test_bl4_2_5_bp_is_synchronous(conformance_backend, method, schedule):
    """BP is locked: the pipelined records are the synchronous ones, tick = step."""
    case = smoke_case(method, "float64", steps=3, optimizer=SMOKE_OPTIMIZER, schedule=schedule)
    sync = dataclasses.replace(case, problem=dataclasses.replace(case.problem, schedule="synchronous"))
    got = run_feed(conformance_backend, case, list(case.batches))
    want = reference_feed(sync, list(case.batches))
    for t, (g, w) in enumerate(zip(got, want)):
        assert_equal(g.events, w.events, clause="BL-4.2.5", name=f"tick {t} events", case=case)
        assert_maps_close(g.params, w.params, clause="BL-4.2.5", name=f"tick {t} params", dtype="float64",
                          what="steps", case=case)


@pytest.mark.parametrize("schedule", [SCHEDULE])
@pytest.mark.parametrize("method", ["backlink"])
def test_bl4_2_3_link_length_zero_is_greedy(conformance_backend, method, schedule):
    case = smoke_case("backlink", "float64", steps=3, optimizer=SMOKE_OPTIMIZER, schedule=schedule)
    zero = dataclasses.replace(case, problem=dataclasses.replace(
        case.problem, method=dataclasses.replace(case.problem.method, link_length=0)))
    greedy = dataclasses.replace(case, problem=dataclasses.replace(
        case.problem, method=Method("greedy", loss_weights=case.problem.method.loss_weights)))
    got = run_feed(conformance_backend, zero, drained_feed(zero))
    want = run_feed(conformance_backend, greedy, drained_feed(greedy))
    if [r.events for r in got] != [r.events for r in want]:
        fail("BL-4.2.3", "with link_length 0 the events differ from greedy's", zero)
    assert_maps_close(got[-1].params, want[-1].params, clause="BL-4.2.3",
                      name="params with P=0 vs greedy", dtype="float64", what="steps", case=zero)


@pytest.mark.parametrize("schedule", [SCHEDULE])
@pytest.mark.parametrize("method", ["backlink"])
def test_bl4_2_7_cross_module_link_rejected(conformance_backend, method, schedule):
    case = smoke_case("backlink", "float64", schedule=schedule)
    problem = dataclasses.replace(case.problem, method=dataclasses.replace(
        case.problem.method, link_length=3, allow_cross_module=True))  # loss 3 reaches module 1
    try:
        conformance_backend.prepare(problem, copy.deepcopy(dict(case.params)), copy.deepcopy(dict(case.buffers)))
    except SpecError as e:
        if "link_length" not in str(e):
            fail("BL-4.2.7", f"the SpecError does not name field 'link_length': {e}", case)
        return
    fail("BL-4.2.7", "prepare accepted a pipelined problem whose tail reaches two modules back", case)


# ---------------------------------------------------------------- sweeps

@pytest.mark.parametrize("schedule", [SCHEDULE])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", METHOD_KINDS)
def test_bl4_2_sweep(conformance_backend, method, dtype, schedule):
    @sweep(case=cases(method, dtype, steps=4, schedule=schedule, optimizer=optimizers()))
    def check(case):
        feed = drained_feed(case)
        check_ticks(run_feed(conformance_backend, case, feed), run_reference(case), case, feed)

    check()
