"""BL-3.7 checked by routes independent of the module-wise computation.

Route A: for every loss L_k alone, full backprop through everything it depends on (no
cuts), then keep only the reach set with its coefficient, and sum over k.
Route B: finite differences of each L_k along random directions restricted to the
own and tail parameter sets (no backward pass at all).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backlink.reference import engine
from backlink.reference.backlink import gradients
from backlink.reference.models import init_params, make_partition, mlp, resnet, small_cnn
from backlink.reference.primitives import cross_entropy, cross_entropy_vjp
from backlink.spec import INPUT, Method, module_bounds, reach_sets


def loss_ops(graph, partition, method, k):
    """Ops that L_k (1-based) depends on, in order, and the name of its logits."""
    bounds = module_bounds(len(graph.units), partition, method)
    end = bounds[k - 1][1]
    ops = [op for u in graph.units[:end] for op in u.ops]
    if k < len(bounds):
        head = partition.heads[k - 1]
        return ops + list(head.ops), head.output
    return ops, graph.units[-1].output


def loss_value(graph, partition, method, k, params, buffers, x, y):
    ops, logits = loss_ops(graph, partition, method, k)
    values = {INPUT: x}
    engine.forward(ops, values, params, dict(buffers))
    return float(cross_entropy(values[logits], y)[0])


def route_a(graph, partition, method, params, buffers, x, y):
    """Sum over k of coefficient-masked full gradients of L_k."""
    total = {}
    for r in reach_sets(graph, partition, method):
        ops, logits = loss_ops(graph, partition, method, r.loss)
        values = {INPUT: x}
        saved = engine.forward(ops, values, params, dict(buffers))
        _, ce = cross_entropy(values[logits], y)
        full = {}
        engine.backward(ops, saved, {logits: cross_entropy_vjp(ce, 1.0)}, full)
        for p, g in full.items():
            coef = r.weight if p in r.own else r.tail_weight if p in r.tail else 0.0
            if coef:
                total[p] = total.get(p, 0.0) + coef * g
    return total


def models():
    return st.one_of(
        st.builds(lambda h: mlp(input_shape=(6,), hidden=h, num_classes=3),
                  st.lists(st.integers(3, 7), min_size=2, max_size=5).map(tuple)),
        st.builds(lambda w: small_cnn(input_shape=(8, 8, 2), widths=w, num_classes=3),
                  st.lists(st.integers(2, 5), min_size=2, max_size=4).map(tuple)),
        st.builds(lambda d, gr: resnet(depth=d, input_shape=(8, 8, 2), num_classes=3, granularity=gr,
                                       widths=(3, 4, 5)),
                  st.sampled_from([8, 14]), st.sampled_from(["block", "layer"])),
    )


@st.composite
def setups(draw):
    graph = draw(models(), label="graph")
    valid = list(graph.valid_cuts())
    cuts = tuple(sorted(draw(st.lists(st.sampled_from(valid), min_size=1, max_size=4, unique=True),
                             label="cuts")))
    partition = make_partition(graph, cuts, head=draw(st.sampled_from(["linear", "conv"]), label="head"))
    sizes = [b - a for a, b in module_bounds(len(graph.units), partition, Method("greedy"))]
    cross = draw(st.booleans(), label="allow_cross_module")
    P = draw(st.integers(0, sum(sizes[:-1]) if cross else min(sizes[:-1])), label="P")
    K = len(cuts) + 1
    weights = draw(st.none() | st.lists(st.floats(0.25, 2.0), min_size=K, max_size=K).map(tuple), label="w")
    method = Method("backlink", P, draw(st.floats(0.0, 2.0), label="beta"), weights, cross)
    seed = draw(st.integers(0, 2**16), label="seed")
    n = draw(st.integers(2, 5), label="batch")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + graph.input_shape)
    y = rng.integers(0, graph.num_classes, n)
    params, buffers = init_params(graph, partition, seed=seed)
    return graph, partition, method, params, buffers, x, y


def assert_grads_close(got, want, atol=1e-10, what=""):
    assert set(got) == set(want), f"{what}: parameter sets differ: {sorted(set(got) ^ set(want))[:6]}"
    for p in want:
        err = float(np.max(np.abs(got[p] - want[p])))
        assert err <= atol, f"{what}: {p} differs by {err:.3e}"


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(setups())
def test_modulewise_gradients_equal_masked_full_backprop(setup):
    graph, partition, method, params, buffers, x, y = setup
    got, _ = gradients(graph, partition, method, params, dict(buffers), x, y)
    assert_grads_close(got, route_a(graph, partition, method, params, buffers, x, y), what=str(method))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(setups(), st.sampled_from(["bp", "greedy"]))
def test_bp_and_greedy_equal_masked_full_backprop(setup, kind):
    graph, partition, _, params, buffers, x, y = setup
    method = Method(kind)
    got, _ = gradients(graph, partition, method, params, dict(buffers), x, y)
    assert_grads_close(got, route_a(graph, partition, method, params, buffers, x, y), what=kind)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(setups())
def test_link_length_off_by_one_is_detected(setup):
    """The comparison above has the power to see a link one unit too long or too short."""
    graph, partition, method, params, buffers, x, y = setup
    want = route_a(graph, partition, method, params, buffers, x, y)
    checked = 0
    for P in (method.P - 1, method.P + 1):
        if P < 0:
            continue
        wrong = Method("backlink", P, method.beta, method.loss_weights, allow_cross_module=True)
        truth = route_a(graph, partition, wrong, params, buffers, x, y)
        if max(float(np.abs(truth[p] - want[p]).max()) for p in want) <= 1e-8:
            continue  # tail clipped at the first unit, beta ~ 0 or dead units: P and P+-1 agree
        got, _ = gradients(graph, partition, wrong, params, dict(buffers), x, y)
        with pytest.raises(AssertionError):
            assert_grads_close(got, want)
        checked += 1
    assume(checked)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(setups())
def test_p0_is_greedy_and_backlink_differs_exactly_on_the_tails(setup):
    graph, partition, method, params, buffers, x, y = setup
    method = Method("backlink", method.P, method.beta, None, method.allow_cross_module)
    greedy, _ = gradients(graph, partition, Method("greedy"), params, dict(buffers), x, y)
    p0, _ = gradients(graph, partition, Method("backlink", 0), params, dict(buffers), x, y)
    assert_grads_close(p0, greedy, atol=0.0, what="P=0")
    bl, _ = gradients(graph, partition, method, params, dict(buffers), x, y)
    tails = set().union(*(r.tail for r in reach_sets(graph, partition, method)))
    changed = {p for p in greedy if not np.array_equal(bl[p], greedy[p])}
    assert changed <= tails, f"non-tail parameters changed: {sorted(changed - tails)}"
    linked = route_a(graph, partition, method, params, buffers, x, y)
    plain = route_a(graph, partition, Method("greedy"), params, buffers, x, y)
    expected = {p for p in tails if np.abs(linked[p] - plain[p]).max() > 1e-12}
    assert expected <= changed, f"tail parameters without their link term: {sorted(expected - changed)}"


def test_finite_differences_of_each_loss_match_the_gradient():
    """Route B on a small layer-grained ResNet with a cross-module tail, BN in training mode."""
    graph = resnet(depth=8, input_shape=(6, 6, 2), num_classes=3, granularity="layer", widths=(3, 4, 4))
    partition = make_partition(graph, (1, 3, 5), head="conv")
    method = Method("backlink", 2, 0.7, (1.0, 0.5, 2.0, 1.5), allow_cross_module=True)
    params, buffers = init_params(graph, partition, seed=3)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 6, 6, 2)), rng.integers(0, 3, 4)
    g, _ = gradients(graph, partition, method, params, dict(buffers), x, y)
    eps = 1e-6
    for r in reach_sets(graph, partition, method):
        for ids, coef in ((r.own, r.weight), (r.tail, r.tail_weight)):
            if not ids:
                continue
            v = {p: rng.standard_normal(params[p].shape) for p in ids}
            shifted = lambda s: {p: a + s * eps * v[p] if p in v else a for p, a in params.items()}  # noqa
            numeric = (loss_value(graph, partition, method, r.loss, shifted(1), buffers, x, y)
                       - loss_value(graph, partition, method, r.loss, shifted(-1), buffers, x, y)) / (2 * eps)
            # g restricted to ids holds coef * dL_r/dtheta plus other losses' terms; isolate L_r:
            others = {p: 0.0 for p in ids}
            for q in reach_sets(graph, partition, method):
                if q.loss == r.loss:
                    continue
                for p in ids:
                    c = q.weight if p in q.own else q.tail_weight if p in q.tail else 0.0
                    if c:
                        others[p] = others[p] + c * single_loss_grad(graph, partition, method, q.loss, params,
                                                                     buffers, x, y)[p]
            analytic = sum(float(np.vdot(g[p] - others[p], v[p])) for p in ids) / coef
            assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), \
                f"loss {r.loss}: analytic {analytic} vs numeric {numeric}"


def single_loss_grad(graph, partition, method, k, params, buffers, x, y):
    ops, logits = loss_ops(graph, partition, method, k)
    values = {INPUT: x}
    saved = engine.forward(ops, values, params, dict(buffers))
    _, ce = cross_entropy(values[logits], y)
    out = {}
    engine.backward(ops, saved, {logits: cross_entropy_vjp(ce, 1.0)}, out)
    return out


@pytest.mark.parametrize("kind", ["bp", "greedy", "backlink"])
def test_batchnorm_running_stats_update_exactly_once(kind):
    graph = resnet(depth=8, input_shape=(6, 6, 2), num_classes=3, granularity="layer", widths=(3, 4, 4))
    partition = make_partition(graph, (3, 5), head="linear")
    method = Method(kind, 2 if kind == "backlink" else 0)
    params, buffers = init_params(graph, partition, seed=1)
    x, y = np.random.default_rng(1).standard_normal((5, 6, 6, 2)), np.arange(5) % 3
    once = dict(buffers)
    values = {INPUT: x}
    for u in graph.units:  # one plain forward of every trunk unit and head
        engine.forward(u.ops, values, params, once)
    for h in partition.heads:
        engine.forward(h.ops, values, params, once)
    stepped = dict(buffers)
    gradients(graph, partition, method, params, stepped, x, y)
    for b in buffers:
        if b.startswith("head") and kind == "bp":
            assert np.array_equal(stepped[b], buffers[b]), f"BP must not run head {b}"
        else:
            np.testing.assert_allclose(stepped[b], once[b], rtol=0, atol=1e-14, err_msg=b)
