"""BL-7 runtime model: the pipeline simulator, FLOP costs and the Gantt plot.

Small cases are computed by hand (unit costs 1); the rule numbers refer to the
docstring of backlink.reference.simulator.
"""
import re

import numpy as np
import pytest

from backlink.reference.flops import flop_costs, head_flop_costs, partition_costs
from backlink.experiments.gantt import plot_gantt
from backlink.reference.models import make_partition, mlp, small_cnn
from backlink.reference.simulator import METHODS, compare, simulate
from backlink.spec.graph import INPUT, ArraySpec, Graph, Op, SpecError, Unit

ONES2 = dict(fwd=[1, 1], bwd=[1, 1], cuts=(1,))
ONES3 = dict(fwd=[1, 1, 1], bwd=[1, 1, 1], cuts=(1, 2))


def starts(schedule, kind, device=None):
    """{(device, batch, micro): start} of the tasks of one kind."""
    return {(t.device, t.batch, t.micro): t.start for t in schedule.tasks
            if t.kind == kind and device in (None, t.device)}


def assert_sound(s, comm=0.0):
    """Invariants of every schedule: no overlap on a device, busy = sum of durations."""
    for k in range(len(s.busy)):
        tasks = s.on(k)
        for a, b in zip(tasks, tasks[1:]):
            assert a.end <= b.start + 1e-9, (a, b)
        assert s.busy[k] == pytest.approx(sum(t.duration for t in tasks))
        assert s.utilisation[k] == pytest.approx(s.busy[k] / s.makespan)
    assert s.makespan == pytest.approx(max(t.end for t in s.tasks))


# ---------------------------------------------------------------- bp and gpipe

@pytest.mark.parametrize("M", [1, 2, 3])
def test_bp_two_devices_is_locked(M):
    s = simulate("bp", **ONES2, batches=M)
    assert s.makespan == 4 * M
    for m in range(M):
        assert s.find(0, m, "fwd").start == 4 * m
        assert s.find(1, m, "fwd").start == 4 * m + 1
        assert s.find(1, m, "bwd").start == 4 * m + 2
        assert s.find(0, m, "bwd").start == 4 * m + 3
    assert s.busy == (2 * M, 2 * M) and s.utilisation == (0.5, 0.5)
    assert not [t for t in s.tasks if t.kind in ("head", "link")]


@pytest.mark.parametrize("M", [1, 2, 3])
def test_bp_formula_with_comm_ignores_heads(M):
    s = simulate("bp", **ONES3, head_costs=[5, 5], batches=M, comm=0.5)
    assert s.makespan == pytest.approx(M * (3 + 3 + 2 * 2 * 0.5))
    assert s.find(2, M - 1, "fwd").start == pytest.approx((M - 1) * 8 + 2 + 2 * 0.5)


@pytest.mark.parametrize("M", [1, 2, 3])
def test_gpipe_two_devices_two_micro(M):
    s = simulate("gpipe", **ONES2, batches=M, micro=2)
    assert s.makespan == 3 * M
    want_fwd = {(0, 0): 0, (0, 1): 0.5, (1, 0): 0.5, (1, 1): 1}
    want_bwd = {(1, 1): 1.5, (1, 0): 2, (0, 1): 2, (0, 0): 2.5}  # reverse micro order
    for m in range(M):
        for (k, u), t0 in want_fwd.items():
            assert s.find(k, m, "fwd", u).start == 3 * m + t0
        for (k, u), t0 in want_bwd.items():
            assert s.find(k, m, "bwd", u).start == 3 * m + t0
    assert_sound(s)


@pytest.mark.parametrize("M", [1, 2, 3])
def test_gpipe_three_devices_fill_drain(M):
    s = simulate("gpipe", **ONES3, batches=M, micro=2)
    assert s.makespan == 4 * M  # (micro + K - 1) * (F + B) / micro per batch
    assert s.find(0, M - 1, "bwd", 0).start == 4 * (M - 1) + 3.5


def test_gpipe_with_one_micro_batch_is_bp():
    a = simulate("gpipe", **ONES3, batches=3, micro=1, comm=0.25)
    b = simulate("bp", **ONES3, batches=3, comm=0.25)
    assert a.tasks == b.tasks and a.makespan == b.makespan


# ---------------------------------------------------------------- greedy

@pytest.mark.parametrize("M", [1, 2, 3])
def test_greedy_two_devices_with_head(M):
    s = simulate("greedy", **ONES2, head_costs=[1], batches=M)
    assert s.makespan == 3 * M
    for m in range(M):
        assert [s.find(0, m, k).start for k in ("fwd", "head", "bwd")] == [3 * m, 3 * m + 1, 3 * m + 2]
        assert [s.find(1, m, k).start for k in ("fwd", "bwd")] == [3 * m + 1, 3 * m + 2]
    assert not [t for t in s.tasks if t.device == 1 and t.kind == "head"]  # last module: no head
    assert_sound(s)


@pytest.mark.parametrize("M", [1, 2, 3])
def test_greedy_three_devices(M):
    s = simulate("greedy", **ONES3, batches=M)
    assert s.makespan == 2 + 2 * M
    assert starts(s, "fwd") == {(k, m, 0): k + 2 * m for k in range(3) for m in range(M)}


def test_greedy_equal_stages_is_fill_plus_batches():
    K, M, comm = 4, 5, 0.5
    fwd, bwd = [1.0] * (2 * K), [2.0] * (2 * K)
    s = simulate("greedy", fwd, bwd, cuts=(2, 4, 6), batches=M, comm=comm)
    F, T = 2.0, 6.0
    assert starts(s, "fwd") == {(k, m, 0): pytest.approx(k * (F + comm) + m * T)
                                for k in range(K) for m in range(M)}
    assert s.makespan == pytest.approx((K - 1) * (F + comm) + M * T)
    long = simulate("greedy", fwd, bwd, cuts=(2, 4, 6), batches=200, comm=comm)
    assert long.makespan / 200 == pytest.approx(T, rel=0.01)  # the fill amortises away


# ---------------------------------------------------------------- backlink

@pytest.mark.parametrize("M, makespan, links", [
    (1, 4, [(3, 4)]),
    (2, 6, [(4, 5), (5, 6)]),
    (3, 10, [(4, 5), (5, 6), (9, 10)]),
])
def test_backlink_two_devices_link_order(M, makespan, links):
    s = simulate("backlink", **ONES2, link_length=1, batches=M)
    assert s.makespan == makespan
    assert [(t.start, t.end) for t in s.on(0, "link")] == links
    assert [t.batch for t in s.on(0, "link")] == list(range(M))
    if M == 3:  # rule 6b: link(0) forced before block 2; rule 6c: link(1) ties and goes first
        assert [s.find(0, m, "fwd").start for m in range(3)] == [0, 2, 6]
        assert [s.find(1, m, "fwd").start for m in range(3)] == [1, 3, 7]


@pytest.mark.parametrize("M", [1, 2, 3])
def test_backlink_two_devices_with_head_links_before_next_block(M):
    s = simulate("backlink", **ONES2, head_costs=[1], link_length=1, batches=M)
    assert s.makespan == 4 * M
    assert [t.start for t in s.on(0, "link")] == [3 + 4 * m for m in range(M)]
    assert [s.find(0, m, "fwd").start for m in range(M)] == [4 * m for m in range(M)]


@pytest.mark.parametrize("M, makespan", [(1, 5), (2, 7), (3, 11)])
def test_backlink_three_devices(M, makespan):
    s = simulate("backlink", **ONES3, link_length=1, batches=M)
    assert s.makespan == makespan
    assert not s.on(2, "link")  # the first module sends no cotangent
    if M == 3:
        assert [t.start for t in s.on(0, "link")] == [4, 5, 9]
        assert [t.start for t in s.on(1, "link")] == [5, 6, 10]
        assert [s.find(k, 2, "fwd").start for k in range(3)] == [6, 7, 8]
    assert_sound(s)


def test_backlink_cotangent_pays_comm():
    s = simulate("backlink", **ONES2, link_length=1, comm=0.5)
    assert s.find(1, 0, "fwd").start == 1.5 and s.find(0, 0, "link").start == 4.0 and s.makespan == 5.0


def test_backlink_link_cost_is_tail_backward():
    s = simulate("backlink", [1] * 4, [1, 2, 3, 4], cuts=(3,), link_length=2)
    assert s.on(0, "link")[0].duration == 2 + 3


def random_case(rng):
    K = int(rng.integers(1, 5))
    sizes = rng.integers(1, 4, K)
    cuts = tuple(int(c) for c in np.cumsum(sizes)[:-1])
    n = int(sizes.sum())
    return dict(fwd=rng.uniform(0, 2, n).tolist(), bwd=rng.uniform(0, 4, n).tolist(), cuts=cuts,
                head_costs=rng.uniform(0, 1, K - 1).tolist(), batches=int(rng.integers(1, 6)),
                comm=float(rng.choice([0.0, rng.uniform(0, 1)]))), int(sizes[:-1].min(initial=0))


def test_backlink_random_invariants():
    rng = np.random.default_rng(7)
    for _ in range(60):
        case, max_p = random_case(rng)
        g = simulate("greedy", **case)
        assert simulate("backlink", **case, link_length=0).tasks == g.tasks  # P = 0 is greedy
        for P in range(1, max_p + 1):
            s = simulate("backlink", **case, link_length=P)
            assert_sound(s)
            assert s.makespan >= g.makespan - 1e-9
            for t in s.tasks:
                if t.kind != "link":
                    continue
                sent = s.find(t.device + 1, t.batch, "bwd").end + case["comm"]
                assert t.start >= sent - 1e-9  # rule 6a: after the cotangent arrived
                if t.batch + 2 < case["batches"]:  # rule 6b: before block m+2
                    assert t.end <= s.find(t.device, t.batch + 2, "fwd").start + 1e-9


# ---------------------------------------------------------------- method comparisons

@pytest.mark.parametrize("K", [1, 2, 3, 4])
@pytest.mark.parametrize("M", [1, 2, 3])
def test_bp_is_slowest_for_uniform_costs(K, M):
    case = dict(fwd=[1] * 2 * K, bwd=[2] * 2 * K, cuts=tuple(range(2, 2 * K, 2)),
                head_costs=[0.25] * (K - 1), batches=M)
    bp = simulate("bp", **case).makespan
    for method in METHODS:
        for P in (0, 1, 2):
            assert simulate(method, **case, link_length=P, micro=3).makespan <= bp + 1e-9
    if K == 1:  # one device: every method is sequential
        assert {simulate(m, **case).makespan for m in METHODS} == {bp}


def test_bp_is_not_an_upper_bound_when_a_tail_backward_dominates():
    # docstring: the link re-runs module 0's heavy backward after module 1's work
    case = dict(fwd=[1, 0.1], bwd=[10, 0.1], cuts=(1,), link_length=1)
    assert simulate("bp", **case).makespan == pytest.approx(11.2)
    assert simulate("backlink", **case).makespan == pytest.approx(21)


def test_compare_reports_reductions_vs_bp():
    r = compare(**ONES3, link_length=1, batches=3, micro=2)
    assert list(r) == list(METHODS)
    assert r["bp"] == {"makespan": 18, "reduction_vs_bp": 0.0}
    assert r["greedy"]["makespan"] == 8 and r["greedy"]["reduction_vs_bp"] == pytest.approx(1 - 8 / 18)
    assert r["backlink"]["makespan"] == 11 and r["gpipe"]["makespan"] == 12


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("kw, field", [
    (dict(fwd=[1, -1]), "fwd[1]"),
    (dict(bwd=[1, float("nan")]), "bwd[1]"),
    (dict(bwd=[1]), "bwd"),
    (dict(fwd=[], bwd=[]), "fwd"),
    (dict(cuts=(2,)), "cuts[0]"),
    (dict(cuts=(0,)), "cuts[0]"),
    (dict(fwd=[1] * 3, bwd=[1] * 3, cuts=(2, 1)), "cuts"),
    (dict(head_costs=[1, 1]), "head_costs"),
    (dict(head_costs=[-2]), "head_costs[0]"),
    (dict(link_length=2), "link_length"),
    (dict(link_length=-1), "link_length"),
    (dict(batches=0), "batches"),
    (dict(comm=-0.1), "comm"),
    (dict(micro=0), "micro"),
])
def test_invalid_inputs_name_the_field(kw, field):
    case = {**ONES2, "head_costs": [0], **kw}
    with pytest.raises(SpecError, match=re.escape(f"field '{field}'")):
        simulate("backlink", **case)


def test_unknown_method_lists_allowed():
    with pytest.raises(SpecError, match="field 'method' = 'pipedream'; allowed: bp, gpipe, greedy, backlink"):
        simulate("pipedream", **ONES2)


# ---------------------------------------------------------------- FLOP costs

def test_flop_costs_mlp_by_hand():
    fwd, bwd = flop_costs(mlp(input_shape=(4,), hidden=(8,), num_classes=3), batch=2)
    assert fwd == [2 * (2 * 4 * 8 + 8 + 8), 2 * (2 * 8 * 3 + 3)]  # linear + bias + relu; classifier
    assert bwd == [2 * (2 * 72 + 8), 2 * 2 * 51]


def test_flop_costs_strided_conv_and_head_by_hand():
    w = ArraySpec("c.w", (3, 3, 2, 4), "he", 18)
    conv = Op("c", "conv2d", (INPUT,), ("c.w",),
              attrs=(("kernel", 3), ("out", 4), ("padding", 1), ("stride", 2)))
    u1 = Unit("u1", (conv, Op("r", "relu", ("c",))), (w,))
    fc = (ArraySpec("fc.w", (4, 3), "he", 4), ArraySpec("fc.b", (3,), "zeros"))
    u2 = Unit("u2", (Op("p", "global_avgpool", ("r",)), Op("y", "linear", ("p",), ("fc.w", "fc.b"),
                                                                  attrs=(("out", 3),))), fc)
    g = Graph("tiny", (8, 8, 2), 3, (u1, u2))
    conv_f = 2 * 4 * 4 * 9 * 2 * 4  # H_out = W_out = 4
    fwd, bwd = flop_costs(g, batch=1)
    assert fwd == [conv_f + 64, 64 + 2 * 12 + 3]
    assert bwd == [2 * conv_f + 64, 64 + 2 * 27]
    assert head_flop_costs(u2, (4, 4, 4), batch=3) == (3 * 91, 3 * 118)


def test_partition_costs_feed_the_simulator():
    g = small_cnn(input_shape=(8, 8, 1), widths=(4, 4), num_classes=3)
    kw = partition_costs(g, make_partition(g, (1, 2)), batch=4)
    assert kw["fwd"][0] == 4 * (2 * 8 * 8 * 9 * 1 * 4 + 4 * 256 + 256 + 256)  # conv, bn, relu, maxpool
    assert len(kw["head_costs"]) == 2 and min(kw["head_costs"]) > 0
    r = compare(**kw, link_length=1, batches=4)
    assert r["greedy"]["makespan"] <= r["backlink"]["makespan"] < r["bp"]["makespan"]


def test_flop_costs_rejects_bad_batch():
    with pytest.raises(SpecError, match="field 'batch'"):
        flop_costs(mlp(), batch=0)


# ---------------------------------------------------------------- Gantt

def test_gantt_writes_png(tmp_path):
    s = simulate("backlink", **ONES3, head_costs=[0.5, 0.5], link_length=1, batches=3)
    out = plot_gantt(s, tmp_path / "gantt.png")
    data = (tmp_path / "gantt.png").read_bytes()
    assert out == str(tmp_path / "gantt.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
