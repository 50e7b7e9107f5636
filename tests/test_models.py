"""Model builders, heads, partitions and init (reference/models.py)."""
import math
import re

import numpy as np
import pytest

from backlink.spec import INPUT, Method, SpecError, validate
from backlink.reference import models as M


def _count(arrays):
    return sum(math.prod(a.shape) for a in arrays)


def _cifar_resnet_count(depth, widths=(16, 32, 64), in_ch=3, classes=10):
    """He et al. 2016 CIFAR ResNet, BN (gamma, beta) after every conv, option-B projections."""
    n = (depth - 2) // 6
    conv = lambda k, cin, cout: k * k * cin * cout  # noqa: E731
    total, cin = conv(3, in_ch, widths[0]) + 2 * widths[0], widths[0]
    for w in widths:
        for _ in range(n):
            total += conv(3, cin, w) + 2 * w + conv(3, w, w) + 2 * w
            if cin != w:
                total += conv(1, cin, w) + 2 * w
            cin = w
    return total + widths[-1] * classes + classes


@pytest.mark.parametrize("depth, paper_millions", [(20, 0.27), (32, 0.46), (110, 1.7)])
@pytest.mark.parametrize("granularity", M.GRANULARITIES)
def test_resnet_param_count(depth, paper_millions, granularity):
    g = M.resnet(depth=depth, granularity=granularity)
    assert _count(g.params) == _cifar_resnet_count(depth)
    # He et al. 2016, Table 6 gives 0.27M / 0.46M / 1.7M for option A (parameter-free
    # shortcuts): our count without the projections must round to the same figures
    option_a = _count(p for p in g.params if ".shortcut." not in p.id)
    digits = 1 if paper_millions >= 1 else 2
    assert round(option_a / 1e6, digits) == paper_millions
    # BN buffers: one running mean and var per BN channel
    assert _count(g.buffers) == sum(math.prod(p.shape) for p in g.params if p.id.endswith(".gamma")) * 2


@pytest.mark.parametrize("depth", M.RESNET_DEPTHS)
def test_resnet_unit_counts(depth):
    n = (depth - 2) // 6
    assert len(M.resnet(depth=depth, granularity="block").units) == 3 * n + 2
    assert len(M.resnet(depth=depth, granularity="layer").units) == 6 * n + 2


def test_resnet_shapes_and_ids():
    g = M.resnet(depth=20, input_shape=(32, 32, 3), num_classes=7)
    out = {u.name: g.shapes[u.output] for u in g.units}
    assert out["stem"] == (32, 32, 16)
    assert out["s1.b2"] == (32, 32, 16) and out["s2.b0"] == (16, 16, 32) and out["s3.b2"] == (8, 8, 64)
    assert out["classifier"] == (7,)
    specs = {p.id: p for p in g.params}
    assert specs["stem.conv.w"].shape == (3, 3, 3, 16) and specs["stem.conv.w"].fan_in == 27
    assert specs["s2.b0.conv1.w"].shape == (3, 3, 16, 32)
    assert specs["s2.b0.shortcut.conv.w"].shape == (1, 1, 16, 32)
    assert "s1.b0.shortcut.conv.w" not in specs and "s2.b1.shortcut.conv.w" not in specs
    assert specs["fc.w"].shape == (64, 7) and specs["fc.w"].fan_in == 64
    assert all(p.decay == (p.init == "he") for p in g.params)
    assert {p.init for p in g.params if p.id.endswith(".gamma")} == {"ones"}
    ops = [op for u in g.units for op in u.ops]
    assert len({op.out for op in ops}) == len(ops)
    assert all(op.attrs == tuple(sorted(op.attrs)) for op in ops)
    conv = next(op for op in ops if op.out == "s2.b0.conv1")
    assert conv.kw == {"kernel": 3, "out": 32, "stride": 2, "padding": 1}
    # ids do not depend on the granularity
    layer = M.resnet(depth=20, input_shape=(32, 32, 3), num_classes=7, granularity="layer")
    assert [p.id for p in layer.params] == [p.id for p in g.params]
    assert [b.id for b in layer.buffers] == [b.id for b in g.buffers]


@pytest.mark.parametrize("depth", [8, 32])
def test_valid_cuts_by_granularity(depth):
    block = M.resnet(depth=depth, granularity="block")
    assert block.valid_cuts() == tuple(range(1, len(block.units)))
    layer = M.resnet(depth=depth, granularity="layer")
    after = [layer.units[c - 1].name for c in layer.valid_cuts()]
    assert after[0] == "stem" and all(nm.endswith(".l2") for nm in after[1:])
    assert len(after) == len(block.valid_cuts())  # exactly the block boundaries


@pytest.mark.parametrize("depth, K", list(M.INFOPRO_TABLES))
def test_infopro_tables(depth, K):
    for granularity in M.GRANULARITIES:
        g = M.resnet(depth=depth, granularity=granularity)
        cuts = M.infopro_cuts(depth, K, granularity)
        assert len(cuts) + 1 == K
        p = M.make_partition(g, cuts)
        assert p.K == K
        names = [g.units[c - 1].name.removesuffix(".l2") for c in cuts]
        table = M.INFOPRO_TABLES[depth, K]
        assert names == ["stem" if s == 0 else f"s{s}.b{b}" for s, b in table]
    assert M.infopro_cuts(32, 16) == tuple(range(1, 16))  # after stem and every block but the last


def _models():
    return [M.resnet(depth=8, granularity="layer"), M.resnet(depth=8, input_shape=(8, 8, 3)),
            M.mlp(input_shape=(6,), hidden=(5, 4)), M.mlp(input_shape=(4, 4, 2), hidden=(5,)),
            M.small_cnn(), M.vgg(input_shape=(16, 16, 3), cfg=(8, "M", 8, 16, "M", "M", "M"), fc=(12,))]


@pytest.mark.parametrize("kind", M.HEADS)
def test_heads_at_every_valid_cut(kind):
    for g in _models():
        cuts = g.valid_cuts()
        p = M.make_partition(g, cuts, head=kind)  # validate() checks shapes and readers
        validate(g, p, Method(kind="greedy"))
        for k, (c, head) in enumerate(zip(cuts, p.heads), 1):
            assert head.name == f"head{k}"
            assert head.consumed() == {g.units[c - 1].output}
            assert all(a.id.startswith(f"head{k}.") for a in head.params + head.buffers)
            has_conv = any(op.prim == "conv2d" for op in head.ops)
            assert has_conv == (kind == "conv" and len(g.shapes[g.units[c - 1].output]) == 3)


def test_conv_head_layout():
    g = M.resnet(depth=8)
    head = M.make_head("conv", g, 2, 1, hidden=20)
    assert [op.prim for op in head.ops] == ["conv2d", "batchnorm", "relu", "avgpool", "flatten",
                                           "linear", "relu", "linear"]
    specs = {p.id: p.shape for p in head.params}
    assert specs["head1.conv.w"] == (3, 3, 16, 16)
    assert specs["head1.fc1.w"] == (16 * 16 * 16, 20) and specs["head1.fc2.w"] == (20, 10)
    lin = M.make_head("linear", g, 2, 1)
    assert [op.prim for op in lin.ops] == ["global_avgpool", "linear"]


def test_other_builders():
    m = M.mlp(input_shape=(8, 8, 1), hidden=(32, 16), num_classes=3)
    assert [u.name for u in m.units] == ["layer1", "layer2", "classifier"]
    assert m.units[0].ops[0].prim == "flatten" and m.shapes[m.units[0].output] == (32,)
    c = M.small_cnn(input_shape=(28, 28, 1), widths=(16, 32, 32))
    assert [c.shapes[u.output] for u in c.units] == [(14, 14, 16), (7, 7, 32), (7, 7, 32), (10,)]
    v = M.vgg(input_shape=(32, 32, 3), cfg=(64, "M", 128, "M", 256, "M"))
    assert len(v.units) == 4 and v.shapes[v.units[2].output] == (4, 4, 256)
    assert M.mlp().shapes[M.mlp().units[-1].output] == (10,)


@pytest.mark.parametrize("name", M.MODELS)
def test_build_model_registry(name):
    kw = {"input_shape": (16, 16, 3)} if name != "mlp" else {}
    if name == "resnet110":
        kw["granularity"] = "layer"
    g = M.build_model(name, **kw)
    assert g.name == name and g.shapes[g.units[-1].output] == (10,)


def test_even_cuts():
    g = M.resnet(depth=20)  # 11 units
    assert M.even_cuts(g, 1) == ()
    assert M.even_cuts(g, 4) == (2, 5, 8)
    assert M.even_cuts(g, 11) == tuple(range(1, 11))
    layer = M.resnet(depth=20, granularity="layer")  # 20 units, cuts only between blocks
    cuts = M.even_cuts(layer, 4)
    assert set(cuts) <= set(layer.valid_cuts()) and len(cuts) == 3
    sizes = np.diff((0, *cuts, len(layer.units)))
    assert sizes.max() - sizes.min() <= 2  # blocks are 2 units, so 2 is the best possible spread
    assert M.cuts_from_table(layer, [(0, 0), (2, 1)]) == (1, 11)  # stem, 3 blocks, 2 blocks


@pytest.mark.parametrize("call, field", [
    (lambda: M.resnet(depth=21), "depth"),
    (lambda: M.resnet(depth=2), "depth"),
    (lambda: M.resnet(depth=True), "depth"),
    (lambda: M.resnet(granularity="unit"), "granularity"),
    (lambda: M.resnet(widths=(16, 32)), "widths"),
    (lambda: M.resnet(input_shape=(32,)), "input_shape"),
    (lambda: M.mlp(hidden=(0,)), "hidden"),
    (lambda: M.mlp(num_classes=0), "num_classes"),
    (lambda: M.vgg(cfg=("M", 8)), "cfg[0]"),
    (lambda: M.vgg(cfg=(8, "X")), "cfg[1]"),
    (lambda: M.build_model("resnet18"), "model"),
    (lambda: M.build_model("resnet20", depth=32), "depth"),
    (lambda: M.build_model("mlp", widths=(3,)), "widths"),
    (lambda: M.make_head("mlp", M.resnet(depth=8), 1, 1), "head"),
    (lambda: M.make_head("linear", M.resnet(depth=8), 5, 1), "cut"),
    (lambda: M.make_partition(M.resnet(depth=8), (1,), head="deep"), "head"),
    (lambda: M.make_partition(M.resnet(depth=8, granularity="layer"), (2,)), "cuts[0]"),
    (lambda: M.even_cuts(M.resnet(depth=8), 6), "K"),
    (lambda: M.even_cuts(M.resnet(depth=8), 0), "K"),
    (lambda: M.even_cuts(M.resnet(depth=8), 2.0), "K"),
    (lambda: M.infopro_cuts(32, 4), "K"),
    (lambda: M.cuts_from_table(M.resnet(depth=8), [(1, 1)]), "table[0]"),
    (lambda: M.cuts_from_table(M.resnet(depth=8), [(1, 0), 5]), "table[1]"),
    (lambda: M.init_params(M.resnet(depth=8), None, 0, "float16"), "dtype"),
])
def test_errors_name_the_field(call, field):
    with pytest.raises(SpecError, match=re.escape(f"'{field}'")):
        call()


def test_error_messages_list_allowed_values():
    with pytest.raises(SpecError, match="resnet110") as e:
        M.build_model("resnet18")
    assert all(name in str(e.value) for name in M.MODELS)
    with pytest.raises(SpecError, match="linear, conv"):
        M.make_head("mlp", M.resnet(depth=8), 1, 1)
    with pytest.raises(SpecError, match="K <= 5"):
        M.even_cuts(M.resnet(depth=8), 6)


def test_init_params():
    g = M.resnet(depth=110)
    p = M.make_partition(g, M.infopro_cuts(110, 16), head="conv")
    a, bufs = M.init_params(g, p, seed=3)
    b, _ = M.init_params(g, p, seed=3)
    c, _ = M.init_params(g, p, seed=4)
    ids = [s.id for s in g.params + tuple(s for h in p.heads for s in h.params)]
    assert list(a) == ids
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["stem.conv.w"], c["stem.conv.w"])
    assert all(a[k].dtype == np.float64 for k in a)
    # He std: sqrt(2 / fan_in), checked on every stage-3 conv weight pooled (about 1.3M draws)
    w = np.concatenate([a[s.id].ravel() for s in g.params
                        if s.id.startswith("s3.") and s.id.endswith("conv2.w")])
    assert w.std() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.01) and abs(w.mean()) < 1e-3
    assert np.all(a["s1.b0.bn1.gamma"] == 1) and np.all(a["fc.b"] == 0) and np.all(a["s1.b0.bn1.beta"] == 0)
    assert np.all(bufs["s1.b0.bn1.running_mean"] == 0) and np.all(bufs["s1.b0.bn1.running_var"] == 1)
    # the trunk's draw does not depend on the partition; float32 is the float64 draw rounded
    trunk, _ = M.init_params(g, None, seed=3, dtype="float32")
    assert set(trunk) == {s.id for s in g.params}
    assert all(trunk[k].dtype == np.float32 for k in trunk)
    assert all(np.array_equal(trunk[k], a[k].astype(np.float32)) for k in trunk)
    assert INPUT not in a
