"""BL-2.9: every forbidden graph, partition or input gets a SpecError naming the field."""
import numpy as np
import pytest

from backlink.spec import ArraySpec, Graph, Method, Op, Partition, SpecError, Unit, reach_sets, validate
from backlink.reference.backlink import gradients


def dense(name, inp, din, dout, relu=True):
    ops = [Op(f"{name}.z", "linear", (inp,), (f"{name}.w", f"{name}.b"), attrs=(("out", dout),))]
    if relu:
        ops.append(Op(f"{name}.a", "relu", (f"{name}.z",)))
    return Unit(name, tuple(ops), (ArraySpec(f"{name}.w", (din, dout), "he", din, True),
                                   ArraySpec(f"{name}.b", (dout,), "zeros")))


def chain(dims=(5, 6, 7, 6, 5, 4)):
    units, inp = [], "x"
    for i in range(len(dims) - 1):
        units.append(dense(f"u{i}", inp, dims[i], dims[i + 1], relu=i < len(dims) - 2))
        inp = units[-1].output
    return Graph("chain", (dims[0],), dims[-1], tuple(units))


def heads(g, cuts):
    return tuple(dense(f"h{k}", g.units[c - 1].output, g.shapes[g.units[c - 1].output][0],
                       g.num_classes, relu=False) for k, c in enumerate(cuts))


def test_unknown_primitive_names_the_field_and_allowed_values():
    u = Unit("u0", (Op("y", "softplus", ("x",)),))
    with pytest.raises(SpecError, match=r"unit 'u0'.*field 'prim' is 'softplus'.*allowed: \['add'"):
        Graph("g", (3,), 3, (u,))


def test_shape_mismatch_between_layers_names_both_shapes():
    g = chain()
    bad = dense("u1", g.units[0].output, 5, 7)  # u0 produces 6 features, u1 declares 5
    with pytest.raises(SpecError, match=r"parameter 'u1.w' has shape \(5, 7\).*needs \(6, 7\)"):
        Graph("g", (5,), 4, (g.units[0], bad) + g.units[2:])


def test_add_shape_mismatch():
    u = Unit("u", (Op("a", "flatten", ("x",)), Op("b", "add", ("a", "x"))))
    with pytest.raises(SpecError, match=r"\(add\) shape mismatch"):
        Graph("g", (2, 2, 1), 4, (u,))


def test_wrong_number_of_classes():
    with pytest.raises(SpecError, match="num_classes"):
        Graph("g", (5,), 3, chain().units)


def test_undefined_input_value():
    u = Unit("u", (Op("y", "relu", ("nope",)),))
    with pytest.raises(SpecError, match="reads 'nope', which no earlier op produces"):
        Graph("g", (3,), 3, (u,))


@pytest.mark.parametrize("cuts, message", [
    ((0, 2), r"cuts\[0\]' = 0 is outside the unit range: cut points must satisfy 0 < c < N = 5"),
    ((2, 5), r"cuts\[1\]' = 5 is outside the unit range"),
    ((3, 2), r"strictly increasing without duplicates; did you mean \[2, 3\]"),
    ((2, 2), r"strictly increasing without duplicates"),
])
def test_bad_cuts(cuts, message):
    g = chain()
    with pytest.raises(SpecError, match=message):
        validate(g, Partition(cuts, heads(g, sorted(set(c for c in cuts if 0 < c < 5)))), Method("greedy"))


def test_cut_where_two_activations_cross():
    # u1 also reads the graph input through a skip: no single activation crosses after u0
    u0, u1 = dense("u0", "x", 4, 4), dense("u1", "u0.a", 4, 4)
    skip = Unit("u1", u1.ops + (Op("u1.s", "add", ("u1.a", "x")),), u1.params)
    g = Graph("skip", (4,), 4, (u0, skip, dense("u2", "u1.s", 4, 4, relu=False)))
    with pytest.raises(SpecError, match=r"cuts\[0\]' = 1: more than one activation crosses.*Valid cuts: \[2\]"):
        validate(g, Partition((1,), heads(g, (1,))), Method("greedy"))


def test_link_length_longer_than_previous_module():
    g = chain()
    part = Partition((2, 3), heads(g, (2, 3)))
    with pytest.raises(SpecError, match=r"'link_length' = 2 is longer than module 2, which has 1 units; "
                                        r"use link_length <= 1, or set allow_cross_module=True"):
        validate(g, part, Method("backlink", 2))
    validate(g, part, Method("backlink", 2, allow_cross_module=True))  # the escape hatch works


def test_cross_module_tail_reaches_into_the_module_before():
    g = chain()
    part = Partition((2, 3), heads(g, (2, 3)))
    r = reach_sets(g, part, Method("backlink", 2, allow_cross_module=True))
    assert r[2].tail == {"u1.w", "u1.b", "u2.w", "u2.b"}  # loss 3 reaches u2 (module 2) and u1 (module 1)


def test_heads_must_match_cuts():
    g = chain()
    with pytest.raises(SpecError, match="field 'heads' has 1 heads for 2 cuts"):
        validate(g, Partition((2, 3), heads(g, (2,))), Method("greedy"))


def test_head_reading_the_wrong_activation():
    g = chain()
    wrong = heads(g, (3,))  # reads the output of unit 3, placed at cut 2
    with pytest.raises(SpecError, match=r"heads\[0\]' .* must read exactly the module output 'u1.a'"):
        validate(g, Partition((2,), wrong), Method("greedy"))


def test_unknown_method():
    g = chain()
    with pytest.raises(SpecError, match="'method.kind' is 'dgl'; allowed: bp, greedy, backlink"):
        validate(g, Partition(), Method("dgl"))


def test_non_finite_input_is_refused():
    g = chain()
    x = np.ones((2, 5))
    x[1, 3] = np.nan
    with pytest.raises(FloatingPointError, match="input batch contains NaN or inf"):
        gradients(g, Partition(), Method("bp"), {}, {}, x, np.array([0, 1]))


def test_input_shape_mismatch():
    g = chain()
    with pytest.raises(SpecError, match=r"field 'x' has per-sample shape \(4,\), graph 'chain' needs \(5,\)"):
        gradients(g, Partition(), Method("bp"), {}, {}, np.ones((2, 4)), np.array([0, 1]))


def test_conv_padding_must_be_smaller_than_the_kernel():
    u = Unit("u", (Op("c", "conv2d", ("x",), ("w",), attrs=(("kernel", 3), ("out", 2), ("padding", 3))),),
             (ArraySpec("w", (3, 3, 1, 2), "he", 9, True),))
    with pytest.raises(SpecError, match=r"field 'padding' = 3; it must satisfy 0 <= padding < kernel = 3"):
        Graph("g", (4, 4, 1), 2, (u,))
