"""BL-2.7 / BL-2.8: the Vision Transformer builder, its units and cuts, its gradients, and its
memory and FLOP cost entries (formula == metered bytes, as tests/test_memory.py)."""
import itertools
import math

import numpy as np
import pytest

from backlink.reference.backlink import gradients
from backlink.reference.flops import flop_costs, partition_costs
from backlink.reference.gradcheck import gradcheck
from backlink.reference.memory import activation_bytes, measure_trace
from backlink.reference.models import build_model, even_cuts, init_params, make_partition, vit
from backlink.spec import Method, Partition, SpecError, reach_sets

R = np.random.default_rng(5)


def tiny(granularity="block", **kw):
    args = dict(input_shape=(8, 8, 2), patch=4, depth=2, width=6, heads=2, mlp_ratio=2, num_classes=3)
    return vit(granularity=granularity, **{**args, **kw})


def batch(graph, n=4, dtype="float64", seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *graph.input_shape)).astype(dtype), rng.integers(0, graph.num_classes, n)


# ---------------------------------------------------------------- the builder (BL-2.8)

@pytest.mark.parametrize("shape,patch,tokens", [((28, 28, 1), 7, 16), ((28, 28, 1), 4, 49), ((32, 32, 3), 4, 64),
                                                ((32, 32, 3), 8, 16)])
def test_sized_for_28_and_32_pixel_inputs(shape, patch, tokens):
    g = build_model("vit", input_shape=shape, patch=patch, depth=2, width=32, heads=4)
    assert g.shapes["embed.pos"] == (tokens, 32)
    assert g.shapes["block1.softmax"] == (4, tokens, tokens)
    assert g.shapes[g.units[-1].output] == (10,)


def test_units_by_granularity_and_stable_ids():
    block, layer = tiny("block"), tiny("layer")
    assert [u.name for u in block.units] == ["embed", "block1", "block2", "classifier"]
    assert [u.name for u in layer.units] == ["embed", "block1.attn", "block1.mlp", "block2.attn", "block2.mlp",
                                             "classifier"]
    assert [p.id for p in block.params] == [p.id for p in layer.params]
    # one activation (the residual stream) crosses between halves and between blocks
    assert block.valid_cuts() == (1, 2, 3) and layer.valid_cuts() == (1, 2, 3, 4, 5)
    assert layer.crossing(2) == {"block1.attn.add1"}


def test_decay_flags_weights_only():
    """BL-4.3.2 / BL-4.7: linear and patch weights decay; biases, norms, positions do not."""
    g = tiny()
    decays = {p.id for p in g.params if p.decay}
    assert decays == {p.id for p in g.params if p.id.endswith(".w")}
    assert "embed.pos" not in decays and "block1.ln1.gamma" not in decays and "block1.q.b" not in decays


@pytest.mark.parametrize("kw,field", [(dict(width=6, heads=4), "width"), (dict(patch=3), "patch"),
                                      (dict(depth=0), "depth"), (dict(granularity="half"), "granularity"),
                                      (dict(mlp_ratio=1.5), "mlp_ratio")])
def test_errors_name_the_field(kw, field):
    with pytest.raises(SpecError, match=field):
        tiny(**kw)


def test_attention_matches_a_direct_einsum():
    g = tiny(depth=1)
    params, buffers = init_params(g, seed=3)
    params = {k: v + 0.1 * R.standard_normal(v.shape) for k, v in params.items()}  # non-zero biases, positions
    x, _ = batch(g)
    from backlink.reference import engine
    values = {"x": x}
    engine.forward([op for u in g.units for op in u.ops], values, params, buffers)
    h = values["block1.ln1"]
    q, k, v = (h @ params[f"block1.{n}.w"] + params[f"block1.{n}.b"] for n in "qkv")
    n, T, D = h.shape
    split = lambda a: a.reshape(n, T, 2, 3)  # noqa: E731  (heads 2, d_h 3)
    s = np.einsum("nthd,nshd->nhts", split(q), split(k)) / math.sqrt(3)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("nhts,nshd->nthd", a, split(v)).reshape(n, T, D)
    want = values["embed.pos"] + o @ params["block1.proj.w"] + params["block1.proj.b"]
    np.testing.assert_allclose(values["block1.add1"], want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- gradients (BL-3.7)

@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_whole_network_gradient_matches_finite_differences(granularity):
    g = tiny(granularity, depth=1)
    part = Partition()
    params, buffers = init_params(g, seed=0)
    params = {k: v + 0.2 * R.standard_normal(v.shape) for k, v in params.items()}
    x, y = batch(g)
    ids = sorted(params)
    grads, _ = gradients(g, part, Method("bp"), params, dict(buffers), x, y)

    def loss(*arrays):
        return gradients(g, part, Method("bp"), dict(zip(ids, arrays)), dict(buffers), x, y)[1][1]
    gradcheck(loss, lambda u: [u * grads[k] for k in ids], [params[k] for k in ids], directions=1,
              name=f"vit-{granularity} BP loss")


def test_backlink_tail_at_layer_grain_is_the_mlp_half():
    g = tiny("layer")
    part = make_partition(g, (3,))  # module 1: embed + block1 ; module 2: block2 + classifier
    r = reach_sets(g, part, Method("backlink", link_length=1))[1]
    assert r.tail == {p.id for p in g.units[2].params}  # block1.mlp: ln2, fc1, fc2
    assert all(p.startswith("block1.") and not p.startswith(("block1.q", "block1.ln1")) for p in r.tail)


# ---------------------------------------------------------------- cost models (BL-7)

def _memory_cases():
    rng = np.random.default_rng(11)
    for gran, K, P in itertools.product(("block", "layer"), (2, 3), (0, 1, 2)):
        head, dtype = ("linear", "conv")[rng.integers(2)], ("float32", "float64")[rng.integers(2)]
        yield pytest.param(gran, K, P, head, dtype, id=f"vit-{gran}-K{K}-P{P}-{head}-{dtype}")
    yield pytest.param("layer", 1, None, "linear", "float32", id="vit-layer-bp")


@pytest.mark.parametrize("gran,K,P,head,dtype", list(_memory_cases()))
def test_memory_formula_equals_measured(gran, K, P, head, dtype):
    g = tiny(gran, heads=1 if K == 3 else 2)  # heads=1: a transpose that is already dense still copies
    part = make_partition(g, even_cuts(g, K) if K > 1 else (), head=head)
    method = Method("bp") if P is None else Method("backlink", link_length=P)
    params, buffers = init_params(g, part, 0, dtype)
    x, y = batch(g, 5, dtype)
    try:
        report = activation_bytes(g, part, method, len(y), dtype)
    except SpecError:
        pytest.skip("P longer than a module (BL-3.5)")
    assert measure_trace(g, part, method, params, buffers, x, y) == list(report.trace)


def test_flops_of_one_block_closed_form():
    g = tiny(depth=1)
    T, D, h, dh, F = 4, 6, 2, 3, 12
    fwd, bwd = flop_costs(g, 1)
    gemm = 4 * (2 * T * D * D + T * D) + 2 * h * T * T * dh * 2 + (2 * T * D * F + T * F) + (2 * T * F * D + T * D)
    elementwise = 2 * 5 * T * D + 8 * T * F + 4 * h * T * T + h * T * T + 3 * 0 + 2 * T * D  # ln, gelu, softmax, scale, adds
    assert fwd[1] == gemm + elementwise
    assert bwd[1] == 2 * gemm + elementwise
    costs = partition_costs(g, make_partition(g, (1, 2)), 3)
    assert len(costs["head_costs"]) == 2 and all(c > 0 for c in costs["head_costs"])
