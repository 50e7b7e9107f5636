"""BL-7.1 to BL-7.4: the memory model agrees exactly with what the reference engine holds.

The formula side (``activation_bytes``) sees only the graph's shapes; the measured side
runs ``gradients`` with its meter. They must give the same bytes at every meter point.
"""
import itertools

import numpy as np
import pytest

from backlink.reference.backlink import gradients
from backlink.reference.memory import KINDS, activation_bytes, measure, measure_trace, state_bytes
from backlink.reference.optim import init_state
from backlink.reference.optim import step as opt_step
from backlink.reference.models import build_model, cuts_from_table, even_cuts, init_params, make_partition
from backlink.spec import Method, Optimizer, SpecError

ZOO = {
    "mlp": lambda: build_model("mlp", input_shape=(12,), hidden=(16, 8, 8)),
    "cnn": lambda: build_model("cnn", input_shape=(15, 15, 1), widths=(4, 8, 8)),  # maxpool drops a row
    "vgg": lambda: build_model("vgg", input_shape=(8, 8, 3), cfg=(4, "M", 8, 8, "M"), fc=(6,)),
    "resnet-block": lambda: build_model("resnet14", input_shape=(8, 8, 3), widths=(4, 6, 8)),
    "resnet-layer": lambda: build_model("resnet8", input_shape=(8, 8, 3), widths=(4, 6, 8),
                                        granularity="layer"),
}


def _cases():
    rng = np.random.default_rng(7)  # a fixed sample of the (head, dtype) grid per configuration
    for name, K, P in itertools.product(ZOO, (2, 3, 4), (0, 1, 2)):
        head = ("linear", "conv")[rng.integers(2)]
        dtype = ("float32", "float64")[rng.integers(2)]
        yield pytest.param(name, K, P, head, dtype, id=f"{name}-K{K}-P{P}-{head}-{dtype}")
    for name in ZOO:
        yield pytest.param(name, 1, None, "linear", "float32", id=f"{name}-bp")


def _setup(name, K, P, head, dtype, n=5):
    graph = ZOO[name]()
    part = make_partition(graph, even_cuts(graph, K) if K > 1 else (), head=head)
    method = Method("bp") if P is None else Method("backlink", link_length=P)
    params, buffers = init_params(graph, part, 0, dtype)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, *graph.input_shape)).astype(dtype)
    return graph, part, method, params, buffers, x, rng.integers(0, graph.num_classes, n)


@pytest.mark.parametrize("name,K,P,head,dtype", list(_cases()))
def test_formula_equals_measured_at_every_meter_point(name, K, P, head, dtype):
    graph, part, method, params, buffers, x, y = _setup(name, K, P, head, dtype)
    try:
        report = activation_bytes(graph, part, method, len(y), dtype)
    except SpecError:
        pytest.skip("P longer than a module (BL-3.5)")
    measured = measure_trace(graph, part, method, params, buffers, x, y)
    assert measured == list(report.trace)
    assert measure(graph, part, method, params, buffers, x, y) == report.peak


def test_report_breakdown_adds_up():
    graph, part, method, *_ = _setup("resnet-layer", 3, 2, "conv", "float32")
    report = activation_bytes(graph, part, method, 5, "float32")
    assert sum(report.by_kind().values()) == report.peak
    assert set(report.by_kind()) == set(KINDS)
    for m in report.modules:
        assert m.peak == max(b for _, k, b in report.trace if k == m.module)
    assert report.modules[0].tail == 0 and report.modules[1].tail > 0


def test_mlp_bp_closed_form():
    """BL-7.2 by hand: values x, linear and relu outputs, logits; relu masks; log-probs;
    then the largest single cotangent (one per unit boundary in a chain)."""
    D, hidden, C, n, s = 12, (16, 8, 8), 10, 5, 8
    graph = build_model("mlp", input_shape=(D,), hidden=hidden, num_classes=C)
    got = activation_bytes(graph, make_partition(graph, ()), Method("bp"), n, "float64").peak
    want = n * s * (D + 2 * sum(hidden) + C) + n * sum(hidden) + n * C * s + n * s * max(D, C, *hidden)
    assert got == want


def test_resnet_tail_of_one_block_closed_form():
    """spec/costs.md, BL-7.2 example: an identity BasicBlock kept as a tail holds
    4.5 a + 6 C s bytes in float32, a = n H W C s (x, relu1 output, two x-hats, two masks)."""
    graph = build_model("resnet32")
    part = make_partition(graph, cuts_from_table(graph, ((0, 0), (1, 0), (1, 1))))
    n, s, (H, W, C) = 4, 4, graph.shapes["s1.b0.relu2"]
    report = activation_bytes(graph, part, Method("backlink", link_length=1), n, "float32")
    a = n * H * W * C * s
    assert report.modules[2].tail == 4 * a + a // 2 + 6 * C * s  # module 3 keeps block s1.b0


@pytest.mark.parametrize("depth,K", [(32, 4), (32, 8), (32, 16), (110, 8), (110, 16)])
def test_resnet_ordering_greedy_backlink_bp(depth, K):
    graph = build_model(f"resnet{depth}")
    part = make_partition(graph, even_cuts(graph, K))
    peak = lambda m: activation_bytes(graph, part, m, 8, "float32").peak  # noqa: E731
    bp = activation_bytes(graph, make_partition(graph, ()), Method("bp"), 8, "float32").peak
    greedy, links = peak(Method("greedy")), []
    for P in (1, 2):
        try:
            links.append(peak(Method("backlink", link_length=P)))
        except SpecError:
            break
    assert greedy < links[0] < bp
    assert links == sorted(set(links)), "BackLink memory must grow with P"


def test_measured_ordering_on_a_small_resnet():
    graph, part, _, params, buffers, x, y = _setup("resnet-block", 4, 0, "linear", "float32", n=4)
    got = {P: measure(graph, part, Method("backlink", link_length=P), params, buffers, x, y) for P in (0, 1, 2)}
    bp = measure(graph, part, Method("bp"), params, buffers, x, y)
    assert got[0] < got[1] < got[2] < bp


def test_backlink_zero_is_greedy_and_bytes_scale_with_the_batch():
    graph = ZOO["resnet-block"]()
    part = make_partition(graph, even_cuts(graph, 3))
    a = activation_bytes(graph, part, Method("greedy"), 6, "float32")
    b = activation_bytes(graph, part, Method("backlink", link_length=0), 6, "float32")
    assert a.trace == b.trace
    mlp = ZOO["mlp"]()  # no batch norm: every block is per sample, so bytes are linear in n
    part = make_partition(mlp, even_cuts(mlp, 2))
    small, big = (activation_bytes(mlp, part, Method("backlink", link_length=1), n, "float32") for n in (3, 6))
    assert [t[2] for t in big.trace] == [2 * t[2] for t in small.trace]


def test_state_bytes_match_the_arrays():
    graph, part, method, params, buffers, x, y = _setup("resnet-layer", 3, 1, "conv", "float64")
    state = state_bytes(graph, part, method, "float64")
    assert state["params"] == sum(a.nbytes for a in params.values())
    grads, _ = gradients(graph, part, method, params, dict(buffers), x, y)
    assert state["grads"] == sum(g.nbytes for g in grads.values())
    bp = state_bytes(graph, part, Method("bp"), "float64")["params"]
    assert bp == sum(params[p.id].nbytes for u in graph.units for p in u.params) < state["params"]


@pytest.mark.parametrize("optimizer, buffers", [(Optimizer(lr=0.1), 0), (Optimizer(lr=0.1, momentum=0.9), 1),
                                                (Optimizer(lr=1e-3, kind="adamw"), 2), (None, 1)])
def test_optimizer_state_bytes_match_the_optimizer_arrays(optimizer, buffers):
    """BL-7.4: SGD keeps a momentum buffer only with momentum > 0; AdamW keeps two moments."""
    graph, part, method, params, buffers_, x, y = _setup("resnet-layer", 3, 1, "conv", "float64")
    state = state_bytes(graph, part, method, "float64", optimizer)
    if optimizer is not None:  # the bytes of the state arrays one reference step writes
        grads, _ = gradients(graph, part, method, params, dict(buffers_), x, y)
        before = init_state(params, optimizer)
        _, after = opt_step(params, grads, before, optimizer, 0, frozenset(params))
        written = [a for k in after if after[k] is not before[k]
                   for a in (after[k] if isinstance(after[k], tuple) else (after[k],)) if hasattr(a, "nbytes")]
        assert state["optimizer"] == sum(a.nbytes for a in written)
    assert state["optimizer"] == buffers * state["params"]


def test_errors_name_the_field():
    graph = ZOO["mlp"]()
    part = make_partition(graph, even_cuts(graph, 2))
    with pytest.raises(SpecError, match="field 'batch'"):
        activation_bytes(graph, part, Method("greedy"), 0, "float32")
    with pytest.raises(SpecError, match="field 'dtype'"):
        activation_bytes(graph, part, Method("greedy"), 4, "float16")
