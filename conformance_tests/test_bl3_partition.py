"""BL-3.1 - BL-3.4 and BL-2.9: forbidden problems raise SpecError at prepare; BP ignores heads;
P = 0 is greedy.

Forbidden problems are built without ``Problem``'s own validation (``unchecked_problem``),
so the backend's ``prepare`` is what must reject them, before computing anything.
"""
import numpy as np
import pytest

from backlink.reference.models import init_params, make_head, make_partition
from backlink.spec import LRSchedule, Method, Optimizer, Partition, SpecError

from backlink_conformance.compare import assert_equal, assert_maps_close, fail
from backlink_conformance.oracle import run_backend, unchecked_problem, with_method
from backlink_conformance.strategies import cases, smoke_graph, smoke_case, sweep

G = smoke_graph()  # units: stem, s1.b0.l1, s1.b0.l2, s2.b0.l1, s2.b0.l2, s3.b0.l1, s3.b0.l2, classifier
PART = make_partition(G, (3, 5))
BL = Method("backlink", link_length=2)


def _heads(cuts):
    return tuple(make_head("linear", G, c, k) for k, c in enumerate(cuts, 1))


#: (case id, clause, field the message must name, problem fields, params to drop)
FORBIDDEN = [
    ("cut_zero", "BL-3.1", "cuts[0]", dict(partition=Partition((0,), _heads((1,))), method=BL), ()),
    ("cut_past_end", "BL-3.1", "cuts[1]", dict(partition=Partition((3, 8), _heads((3, 7))), method=BL), ()),
    ("cuts_not_increasing", "BL-3.1", "cuts", dict(partition=Partition((5, 3), _heads((5, 3))), method=BL), ()),
    ("cut_inside_block", "BL-3.1", "cuts[0]", dict(partition=Partition((2,), _heads((1,))), method=BL), ()),
    ("too_few_heads", "BL-3.2", "heads", dict(partition=Partition((3, 5), _heads((3,))), method=BL), ()),
    ("head_reads_wrong_module", "BL-3.2", "heads[0]",
     dict(partition=Partition((3, 5), _heads((5, 3))), method=BL), ()),
    ("loss_weights_count", "BL-3.2", "loss_weights",
     dict(partition=PART, method=Method("greedy", loss_weights=(1.0, 1.0))), ()),
    ("link_longer_than_module", "BL-3.4", "link_length",
     dict(partition=PART, method=Method("backlink", link_length=3)), ()),
    ("link_length_negative", "BL-3.4", "link_length",
     dict(partition=PART, method=Method("backlink", link_length=-1)), ()),
    ("unknown_method", "BL-3.3", "method.kind", dict(partition=PART, method=Method("dgl")), ()),
    ("unknown_dtype", "BL-2.6", "dtype", dict(partition=PART, method=BL, dtype="float16"), ()),
    ("unknown_schedule", "BL-4.1", "schedule", dict(partition=PART, method=BL, schedule="async"), ()),
    ("missing_parameter", "BL-2.4", "params", dict(partition=PART, method=BL), ("s2.b0.conv1.w",)),
    ("negative_lr", "BL-4.3", "optimizer.lr", dict(partition=PART, method=BL, optimizer=Optimizer(lr=-0.1)), ()),
    ("negative_momentum", "BL-4.3", "optimizer.momentum",
     dict(partition=PART, method=BL, optimizer=Optimizer(momentum=-0.9)), ()),
    ("nesterov_without_momentum", "BL-4.3", "nesterov",
     dict(partition=PART, method=BL, optimizer=Optimizer(nesterov=True)), ()),
    ("unknown_lr_schedule", "BL-4.4", "schedule.kind",
     dict(partition=PART, method=BL, optimizer=Optimizer(schedule=LRSchedule("linear"))), ()),
    ("step_size_zero", "BL-4.4", "step_size",
     dict(partition=PART, method=BL, optimizer=Optimizer(schedule=LRSchedule("step", step_size=0))), ()),
    ("cosine_warmup_not_below_total", "BL-4.4", "warmup",
     dict(partition=PART, method=BL, optimizer=Optimizer(schedule=LRSchedule("cosine", warmup=3, total=3))), ()),
]


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("clause, field, fields, drop", [f[1:] for f in FORBIDDEN], ids=[f[0] for f in FORBIDDEN])
def test_bl2_9_forbidden_problem_raises_at_prepare(backend, clause, field, fields, drop):
    problem = unchecked_problem(G, **fields)
    params, buffers = init_params(G, fields["partition"], 0)
    for p in drop:
        del params[p]
    what = f"{clause} forbids it ({', '.join(f'{k}={v!r}' for k, v in fields.items() if k != 'partition')}"
    what += f", cuts {list(fields['partition'].cuts)}, {len(fields['partition'].heads)} heads)"
    try:
        backend.prepare(problem, params, buffers)
    except SpecError as e:
        if field not in str(e):
            fail("BL-2.9.1", f"the SpecError for a forbidden problem must name the field {field!r}; got: {e}")
        return
    except Exception as e:  # noqa: BLE001 - anything but SpecError is a conformance failure
        fail("BL-6.1.1", f"prepare on a forbidden problem raised {type(e).__name__}: {e}; expected a SpecError "
                       f"naming {field!r} ({what})")
    fail("BL-6.1.1", f"prepare accepted a forbidden problem; expected a SpecError naming {field!r} ({what})")


@pytest.mark.conformance_smoke
def test_bl3_1_bp_ignores_heads(backend):
    case = smoke_case("greedy")
    case = with_method(case, kind="bp", loss_weights=None)
    rec, = run_backend(backend, case)
    heads = {p.id for h in case.problem.partition.heads for p in h.params}
    leaked = sorted(heads & set(rec.grads))
    if leaked:
        fail("BL-3.1", f"BP must neither run nor update heads, but record.grads has head parameters {leaked}", case)
    for k in heads:
        if not np.array_equal(rec.params[k], case.params[k]):
            fail("BL-3.1", f"BP changed the head parameter {k!r}", case)
    assert_equal(sorted(rec.losses), [1], clause="BL-3.3", name="BP loss ids", case=case)


def check_p0_is_greedy(backend, case):
    greedy = with_method(case, kind="greedy")
    p0 = with_method(case, kind="backlink", link_length=0)
    a, b = run_backend(backend, p0), run_backend(backend, greedy)
    for t, (x, y) in enumerate(zip(a, b)):
        assert_equal(x.events, y.events, clause="BL-3.4", name=f"step {t} events of BackLink(P=0) (vs greedy)",
                     case=p0)
        assert_maps_close(x.grads, y.grads, clause="BL-3.4", dtype=case.problem.dtype, case=p0,
                          name=f"step {t} grads of BackLink(P=0) (vs greedy on the same backend)")


@pytest.mark.conformance_smoke
def test_bl3_4_link_length_zero_is_greedy_smoke(backend):
    check_p0_is_greedy(backend, smoke_case("backlink", steps=2))


def test_bl3_4_link_length_zero_is_greedy(backend):
    @sweep(case=cases("backlink", "float64"))
    def check(case):
        check_p0_is_greedy(backend, case)
    check()
