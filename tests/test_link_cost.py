"""BL-7.2: the reference computes no VJP whose result is discarded, and a tail weight VJP once.

Counts the conv2d input VJPs (dx) and weight VJPs (dw) that one step of
``gradients`` runs, against counts derived from the partition alone: a dx for every
conv whose input cotangent some later op reads, one dw per conv per step (a tail conv
is reached by two losses, BL-3.7, and still gets one). Correctness of the gradients
themselves is tests/test_semantics.py's business.
"""
import dataclasses
from collections import Counter

import numpy as np
import pytest

from backlink.reference import primitives
from backlink.reference.backlink import gradients
from backlink.reference.models import build_model, even_cuts, init_params, make_partition
from backlink.spec import INPUT, Method, module_bounds, tail_bounds


@pytest.fixture
def conv_calls(monkeypatch):
    """Counter of 'dx' and 'dw' computations by conv2d, whichever VJP entry point ran them."""
    calls = Counter()
    p = primitives.PRIMS["conv2d"]

    def counted(f, *kinds):
        def run(saved, g):
            calls.update(kinds)
            return f(saved, g)
        return run

    monkeypatch.setitem(primitives.PRIMS, "conv2d", dataclasses.replace(
        p, vjp=counted(p.vjp, "dx", "dw"), vjp_inputs=counted(p.vjp_inputs, "dx"),
        vjp_params=counted(p.vjp_params, "dw")))
    return calls


def convs(units):
    return [op for u in units for op in u.ops if op.prim == "conv2d"]


def entering(graph, i):
    return graph.crossing(i) if i > 0 else {INPUT}


@pytest.mark.parametrize("granularity", ["block", "layer"])
@pytest.mark.parametrize("kind,K,P", [("bp", 1, 0), ("greedy", 3, 0), ("backlink", 3, 1), ("backlink", 4, 2)])
def test_conv_vjps_are_computed_once_and_only_when_read(conv_calls, granularity, kind, K, P):
    graph = build_model("resnet14", input_shape=(8, 8, 3), widths=(4, 6, 8), num_classes=5,
                        granularity=granularity)
    part = make_partition(graph, even_cuts(graph, K) if K > 1 else (), head="linear")
    method = Method(kind) if kind != "backlink" else Method("backlink", link_length=P)
    params, buffers = init_params(graph, part, 0, "float64")
    rng = np.random.default_rng(0)
    gradients(graph, part, method, params, buffers, rng.normal(size=(4, 8, 8, 3)), rng.integers(0, 5, 4))

    bounds = module_bounds(len(graph.units), part, method)
    want_dx = 0
    for k, (a, b) in enumerate(bounds):
        t0, t1 = tail_bounds(bounds, k, method)
        discarded = set() if t1 > t0 else entering(graph, a)  # module input: read only by a link
        want_dx += sum(op.inputs[0] not in discarded for op in convs(graph.units[a:b]))
        want_dx += sum(op.inputs[0] not in entering(graph, t0) for op in convs(graph.units[t0:t1]))
    assert conv_calls["dw"] == len(convs(graph.units)), "one weight VJP per conv and step"
    assert conv_calls["dx"] == want_dx
    assert want_dx < len(convs(graph.units)) + sum(  # the discarded dx were really skipped
        len(convs(graph.units[slice(*tail_bounds(bounds, k, method))])) for k in range(len(bounds)))
