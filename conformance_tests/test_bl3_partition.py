"""BL-3.1 - BL-3.4 and BL-2.9: forbidden problems raise SpecError at prepare; BP ignores heads;
P = 0 is greedy.

Forbidden problems are built without ``Problem``'s own validation (``unchecked_problem``),
so the backend's ``prepare`` is what must reject them, before computing anything.
"""
import re

import numpy as np
import pytest

from backlink.reference.models import init_params, make_head, make_partition
from backlink.spec import LRSchedule, Method, Optimizer, Partition, SpecError

from backlink_conformance.compare import assert_equal, assert_maps_close, check_against_reference, fail
from backlink_conformance.oracle import run_backend, unchecked_problem, with_method
from backlink_conformance.strategies import boundary_case, cases, smoke_graph, smoke_case, sweep

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
    ("nan_lr", "BL-4.3", "optimizer.lr", dict(partition=PART, method=BL, optimizer=Optimizer(lr=float("nan"))), ()),
    ("nesterov_without_momentum", "BL-4.3", "optimizer.nesterov",
     dict(partition=PART, method=BL, optimizer=Optimizer(nesterov=True)), ()),
    ("unknown_lr_schedule", "BL-4.4", "optimizer.schedule.kind",
     dict(partition=PART, method=BL, optimizer=Optimizer(schedule=LRSchedule("linear"))), ()),
    ("step_size_zero", "BL-4.4", "optimizer.schedule.step_size",
     dict(partition=PART, method=BL, optimizer=Optimizer(schedule=LRSchedule("step", step_size=0))), ()),
    ("step_gamma_negative", "BL-4.4", "optimizer.schedule.gamma",
     dict(partition=PART, method=BL, optimizer=Optimizer(schedule=LRSchedule("step", gamma=-0.5))), ()),
    ("cosine_warmup_not_below_total", "BL-4.4", "optimizer.schedule.warmup",
     dict(partition=PART, method=BL, optimizer=Optimizer(schedule=LRSchedule("cosine", warmup=3, total=3))), ()),
]


def names_field(message: str, field: str) -> bool:
    """``field`` appears as a whole dotted name (``schedule`` does not match ``optimizer.schedule``)."""
    return re.search(rf"(?<![\w.]){re.escape(field)}(?![\w])", message) is not None


@pytest.mark.conformance_smoke
@pytest.mark.parametrize("clause, field, fields, drop", [f[1:] for f in FORBIDDEN], ids=[f[0] for f in FORBIDDEN])
def test_bl2_9_forbidden_problem_raises_at_prepare(conformance_backend, clause, field, fields, drop):
    problem = unchecked_problem(G, **fields)
    params, buffers = init_params(G, fields["partition"], 0)
    for p in drop:
        del params[p]
    what = f"{clause} forbids it ({', '.join(f'{k}={v!r}' for k, v in fields.items() if k != 'partition')}"
    what += f", cuts {list(fields['partition'].cuts)}, {len(fields['partition'].heads)} heads)"
    try:
        conformance_backend.prepare(problem, params, buffers)
    except SpecError as e:
        if not names_field(str(e), field):
            fail("BL-2.9.1", f"the SpecError for a forbidden problem must name the field {field!r} (its full "
                             f"name: 'schedule' is the problem's, 'optimizer.schedule.<field>' the LR "
                             f"schedule's); got: {e}")
        return
    except Exception as e:  # noqa: BLE001 - anything but SpecError is a conformance failure
        fail("BL-6.1.1", f"prepare on a forbidden problem raised {type(e).__name__}: {e}; expected a SpecError "
                       f"naming {field!r} ({what})")
    fail("BL-6.1.1", f"prepare accepted a forbidden problem; expected a SpecError naming {field!r} ({what})")


@pytest.mark.conformance_smoke
def test_bl3_1_bp_ignores_heads(conformance_backend):
    """BP with batch-norm heads, momentum, Nesterov and weight decay, two steps: the heads are
    neither run (their running statistics stay) nor updated (no decay either, BL-4.3.1)."""
    case = boundary_case("bp-bn-heads-decay")
    records = run_backend(conformance_backend, case)
    heads = case.problem.partition.heads
    head_params = {p.id for h in heads for p in h.params}
    head_buffers = {b.id for h in heads for b in h.buffers}
    for t, rec in enumerate(records):
        leaked = sorted(head_params & set(rec.grads))
        if leaked:
            fail("BL-3.1", f"step {t}: BP must neither run nor update heads, but record.grads has head "
                           f"parameters {leaked}", case)
        for k in sorted(head_params):
            if not np.array_equal(rec.params[k], case.params[k]):
                fail("BL-4.3.1", f"step {t}: BP changed the head parameter {k!r}, which no loss reaches "
                                 f"(weight decay and momentum apply only to parameters with a gradient)", case)
        for k in sorted(head_buffers):
            if not np.array_equal(rec.buffers[k], case.buffers[k]):
                fail("BL-3.1", f"step {t}: BP moved the head's running statistic {k!r}: BP must not run "
                               f"the heads", case)
        assert_equal(sorted(rec.losses), [1], clause="BL-3.3", name=f"step {t} BP loss ids", case=case)
    check_against_reference(conformance_backend, case, clause="BL-3.1")


def check_p0_is_greedy(conformance_backend, case):
    greedy = with_method(case, kind="greedy")
    p0 = with_method(case, kind="backlink", link_length=0)
    a, b = run_backend(conformance_backend, p0), run_backend(conformance_backend, greedy)
    for t, (x, y) in enumerate(zip(a, b)):
        assert_equal(x.events, y.events, clause="BL-3.4", name=f"step {t} events of BackLink(P=0) (vs greedy)",
                     case=p0)
        assert_maps_close(x.grads, y.grads, clause="BL-3.4", dtype=case.problem.dtype, case=p0,
                          name=f"step {t} grads of BackLink(P=0) (vs greedy on the same backend)")


@pytest.mark.conformance_smoke
def test_bl3_4_link_length_zero_is_greedy_smoke(conformance_backend):
    check_p0_is_greedy(conformance_backend, smoke_case("backlink", steps=2))


def test_bl3_4_link_length_zero_is_greedy(conformance_backend):
    @sweep(case=cases("backlink", "float64"))
    def check(case):
        check_p0_is_greedy(conformance_backend, case)
    check()
