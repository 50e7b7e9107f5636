"""Model builders (trunk graphs), auxiliary heads, partitions and parameter init.

Builders return a :class:`backlink.spec.Graph` whose units are the grain for cuts and
link lengths. Parameter ids are stable and readable (``"s1.b0.conv1.w"``) and do not
depend on the granularity; value names are prefixed with their unit's name so they are
unique across the trunk and the heads (``"head3.fc"``).
"""
from __future__ import annotations

import inspect

import numpy as np

from backlink.spec import (DTYPES, INPUT, ArraySpec, Graph, Method, Op, Partition, SpecError,
                           Unit, validate)
from backlink.spec.shapes import infer_shapes

__all__ = ["MODELS", "HEADS", "GRANULARITIES", "INFOPRO_TABLES", "mlp", "small_cnn", "resnet",
           "vgg", "vit", "build_model", "infopro_cuts", "even_cuts", "cuts_from_table", "make_head",
           "make_partition", "init_params"]

HEADS = ("linear", "conv")
GRANULARITIES = ("block", "layer")
RESNET_DEPTHS = (8, 14, 20, 32, 56, 110)
MODELS = ("mlp", "cnn", "vgg") + tuple(f"resnet{d}" for d in RESNET_DEPTHS) + ("vit",)

#: semantics.md section 6: InfoPro's split tables, [stage, block] after which a head sits.
INFOPRO_TABLES = {
    (32, 16): ((0, 0), *((1, b) for b in range(5)), *((2, b) for b in range(5)),
               *((3, b) for b in range(4))),
    (32, 8): ((1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)),
    (110, 16): ((1, 1), (1, 4), (1, 7), (1, 10), (1, 13), (1, 16), (2, 1), (2, 4), (2, 7),
                (2, 11), (2, 15), (3, 1), (3, 5), (3, 9), (3, 13)),
}


# ---------------------------------------------------------------- argument checks

def _positive_ints(field, value, min_len=0, max_len=None):
    vals = tuple(value) if isinstance(value, (tuple, list)) else None
    if (vals is None or len(vals) < min_len or (max_len is not None and len(vals) > max_len)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vals)):
        n = f"{min_len}" if max_len == min_len else f"at least {min_len}"
        raise SpecError(f"field {field!r} = {value!r}: needs a tuple of {n} positive integers")
    return vals


def _check_shape(input_shape, image_only=False):
    shape = _positive_ints("input_shape", input_shape, 1, 3)
    if len(shape) not in ((3,) if image_only else (1, 3)):
        want = "(H, W, C)" if image_only else "(H, W, C) or (D,)"
        raise SpecError(f"field 'input_shape' = {input_shape!r}: needs {want}")
    return shape


def _check_classes(num_classes):
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise SpecError(f"field 'num_classes' = {num_classes!r}: needs a positive integer")
    return num_classes


# ---------------------------------------------------------------- unit construction

class _UnitBuilder:
    """Collects one unit's ops and arrays; checks each op as it is added (shared shapes)."""

    def __init__(self, shapes, name, pid=None):
        self.shapes, self.name = shapes, name
        self.pid = name if pid is None else pid  # parameter-id prefix ("" for "fc.w")
        self.ops, self.params, self.buffers = [], [], []

    def _id(self, local, leaf):
        return ".".join(p for p in (self.pid, local, leaf) if p)

    def op(self, local, prim, inputs, params=(), buffers=(), **attrs):
        out = f"{self.name}.{local}"
        op = Op(out, prim, tuple(inputs), tuple(p.id for p in params),
                tuple(b.id for b in buffers), tuple(sorted(attrs.items())))
        one = Unit(self.name, (op,), tuple(params), tuple(buffers))
        self.shapes[out] = infer_shapes([one], {v: self.shapes[v] for v in inputs},
                                        where=f"unit {self.name!r}")[out]
        self.ops.append(op)
        self.params += params
        self.buffers += buffers
        return out

    def conv(self, x, local, out, kernel=3, stride=1, padding=None):
        cin, pad = self.shapes[x][-1], kernel // 2 if padding is None else padding
        w = ArraySpec(self._id(local, "w"), (kernel, kernel, cin, out), "he", kernel * kernel * cin, True)
        return self.op(local, "conv2d", [x], [w], kernel=kernel, out=out, stride=stride, padding=pad)

    def bn(self, x, local):
        c = (self.shapes[x][-1],)
        gamma = ArraySpec(self._id(local, "gamma"), c, "ones")
        beta = ArraySpec(self._id(local, "beta"), c, "zeros")
        bufs = [ArraySpec(self._id(local, "running_mean"), c, "zeros"),
                ArraySpec(self._id(local, "running_var"), c, "ones")]
        return self.op(local, "batchnorm", [x], [gamma, beta], bufs, momentum=0.1, eps=1e-5)

    def linear(self, x, local, out):
        din = self.shapes[x][-1]
        w = ArraySpec(self._id(local, "w"), (din, out), "he", din, True)
        return self.op(local, "linear", [x], [w, ArraySpec(self._id(local, "b"), (out,), "zeros")], out=out)

    def conv_bn_relu(self, x, suffix="", out=None, stride=1):
        x = self.conv(x, f"conv{suffix}", out, stride=stride)
        return self.op(f"relu{suffix}", "relu", [self.bn(x, f"bn{suffix}")])

    def layernorm(self, x, local):
        d = (self.shapes[x][-1],)
        gamma, beta = ArraySpec(self._id(local, "gamma"), d, "ones"), ArraySpec(self._id(local, "beta"), d, "zeros")
        return self.op(local, "layernorm", [x], [gamma, beta], eps=1e-5)

    def token_linear(self, x, local, out):
        din = self.shapes[x][-1]
        w = ArraySpec(self._id(local, "w"), (din, out), "he", din, True)
        return self.op(local, "token_linear", [x], [w, ArraySpec(self._id(local, "b"), (out,), "zeros")], out=out)

    def to_flat(self, x, pool=True):
        """Image -> vector by global average pooling (or flatten); tokens (T, D) -> vector by
        layer norm + mean over tokens (BL-2.8); vectors pass through."""
        if len(self.shapes[x]) == 2:
            return self.op("pool", "token_mean", [self.layernorm(x, "norm")])
        if len(self.shapes[x]) == 1:
            return x
        return self.op("pool", "global_avgpool", [x]) if pool else self.op("flatten", "flatten", [x])

    def done(self):
        return Unit(self.name, tuple(self.ops), tuple(self.params), tuple(self.buffers))


def _graph(name, input_shape, num_classes, units):
    return Graph(name, tuple(input_shape), num_classes, tuple(units))


# ---------------------------------------------------------------- trunks

def mlp(*, input_shape=(64,), hidden=(128, 128, 128), num_classes=10):
    """Fully connected net: one unit per hidden layer (linear+ReLU), then a classifier unit."""
    shape, ncls = _check_shape(input_shape), _check_classes(num_classes)
    hidden = _positive_ints("hidden", hidden)
    shapes, units, x = {INPUT: shape}, [], INPUT
    for i, width in enumerate(hidden, 1):
        u = _UnitBuilder(shapes, f"layer{i}")
        x = u.op("relu", "relu", [u.linear(u.to_flat(x, pool=False), "fc", width)])
        units.append(u.done())
    u = _UnitBuilder(shapes, "classifier", pid="")
    u.linear(u.to_flat(x, pool=False), "fc", ncls)
    return _graph("mlp", shape, ncls, units + [u.done()])


def small_cnn(*, input_shape=(28, 28, 1), widths=(16, 32, 32), num_classes=10):
    """conv3x3+BN+ReLU units; a 2x2 max-pool ends every unit but the last while H, W >= 4."""
    shape, widths = _check_shape(input_shape, True), _positive_ints("widths", widths, 1)
    ncls = _check_classes(num_classes)
    shapes, units, x = {INPUT: shape}, [], INPUT
    for i, width in enumerate(widths, 1):
        u = _UnitBuilder(shapes, f"block{i}")
        x = u.conv_bn_relu(x, out=width)
        if i < len(widths) and min(shapes[x][:2]) >= 4:
            x = u.op("pool", "maxpool", [x], size=2)
        units.append(u.done())
    u = _UnitBuilder(shapes, "classifier", pid="")
    u.linear(u.to_flat(x), "fc", ncls)
    return _graph("cnn", shape, ncls, units + [u.done()])


def vgg(*, input_shape=(32, 32, 3), cfg=(64, "M", 128, "M", 256, "M"), num_classes=10, fc=()):
    """VGG-style: a unit per conv entry (conv3x3+BN+ReLU); "M" (max-pool 2) joins the unit
    before it. Classifier: global average pool, hidden linear+ReLU layers ``fc``, linear."""
    shape, ncls = _check_shape(input_shape, True), _check_classes(num_classes)
    fc = _positive_ints("fc", fc)
    if not isinstance(cfg, (tuple, list)) or not any(c != "M" for c in cfg):
        raise SpecError(f"field 'cfg' = {cfg!r}: needs a tuple of conv widths and 'M', "
                        f"with at least one width")
    shapes, units, x, u = {INPUT: shape}, [], INPUT, None
    for j, entry in enumerate(cfg):
        if entry == "M":
            if u is None:
                raise SpecError(f"field 'cfg[{j}]' = 'M' has no conv before it to fold the max-pool into")
            x = u.op(f"pool{j}", "maxpool", [x], size=2)
            continue
        _positive_ints(f"cfg[{j}]", (entry,))
        if u is not None:
            units.append(u.done())
        u = _UnitBuilder(shapes, f"layer{len(units) + 1}")
        x = u.conv_bn_relu(x, out=entry)
    units.append(u.done())
    u = _UnitBuilder(shapes, "classifier", pid="")
    x = u.to_flat(x)
    for i, width in enumerate(fc, 1):
        x = u.op(f"relu{i}", "relu", [u.linear(x, f"fc{i}", width)])
    u.linear(x, "fc", ncls)
    return _graph("vgg", shape, ncls, units + [u.done()])


def resnet(*, depth=20, input_shape=(32, 32, 3), num_classes=10, granularity="block", widths=(16, 32, 64)):
    """CIFAR ResNet (He et al. 2016), depth 6n+2, BasicBlocks, option-B shortcuts.

    ``granularity="block"``: one unit per block; ``"layer"``: two units per block,
    ``sN.bM.l1`` (conv1+bn1+relu) and ``sN.bM.l2`` (conv2+bn2+shortcut+add+relu).
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise SpecError(f"field 'depth' = {depth!r}: a CIFAR ResNet has depth 6n+2 with n >= 1, "
                        f"e.g. {', '.join(map(str, RESNET_DEPTHS))}")
    if granularity not in GRANULARITIES:
        raise SpecError(f"field 'granularity' = {granularity!r}; allowed: {', '.join(GRANULARITIES)}")
    shape, ncls = _check_shape(input_shape, True), _check_classes(num_classes)
    widths, n = _positive_ints("widths", widths, 3, 3), (depth - 2) // 6
    shapes = {INPUT: shape}
    stem = _UnitBuilder(shapes, "stem")
    x, units = stem.conv_bn_relu(INPUT, out=widths[0]), [stem.done()]
    for s, width in enumerate(widths, 1):
        for b in range(n):
            x = _basic_block(shapes, units, f"s{s}.b{b}", x, width, 2 if s > 1 and b == 0 else 1, granularity)
    u = _UnitBuilder(shapes, "classifier", pid="")
    u.linear(u.to_flat(x), "fc", ncls)
    return _graph(f"resnet{depth}", shape, ncls, units + [u.done()])


def _basic_block(shapes, units, block, x, width, stride, granularity):
    """Append the block's unit(s) to ``units``; return the block output."""
    first = _UnitBuilder(shapes, block if granularity == "block" else f"{block}.l1", pid=block)
    h = first.conv_bn_relu(x, "1", width, stride)
    last = first if granularity == "block" else _UnitBuilder(shapes, f"{block}.l2", pid=block)
    if granularity == "layer":
        units.append(first.done())
    h = last.bn(last.conv(h, "conv2", width), "bn2")
    short = x
    if stride != 1 or shapes[x][-1] != width:  # option B: projection only where shapes change
        short = last.bn(last.conv(x, "shortcut.conv", width, kernel=1, stride=stride), "shortcut.bn")
    out = last.op("relu2", "relu", [last.op("add", "add", [h, short])])
    units.append(last.done())
    return out


def vit(*, input_shape=(28, 28, 1), patch=None, depth=4, width=64, heads=4, mlp_ratio=2, num_classes=10,
        granularity="block"):
    """Vision Transformer (BL-2.8): patch embedding + learned positional embedding, ``depth``
    pre-norm blocks, then layer norm + mean over tokens + linear.

    ``granularity="block"``: one unit per block ``blockI``; ``"layer"``: its halves
    ``blockI.attn`` (x + MHSA(LN(x))) and ``blockI.mlp`` (x + MLP(LN(x))). Parameter ids
    (``block1.q.w``) do not depend on the granularity. ``patch=None``: the largest patch
    side dividing H and W that leaves at least 16 tokens (7 on 28x28, 8 on 32x32; pass
    ``patch=4`` for 49 or 64 tokens).
    """
    if granularity not in GRANULARITIES:
        raise SpecError(f"field 'granularity' = {granularity!r}; allowed: {', '.join(GRANULARITIES)}")
    shape, ncls = _check_shape(input_shape, True), _check_classes(num_classes)
    if patch is None:
        h, w = shape[:2]
        patch = max(p for p in range(1, min(h, w) + 1)
                    if h % p == 0 and w % p == 0 and (h // p) * (w // p) >= min(16, h * w))
    patch, depth, width, heads, ratio = (_positive_ints(name, (v,), 1, 1)[0] for name, v in (
        ("patch", patch), ("depth", depth), ("width", width), ("heads", heads), ("mlp_ratio", mlp_ratio)))
    if width % heads:
        raise SpecError(f"fields 'width' = {width}, 'heads' = {heads}: width must be a multiple of heads")
    shapes = {INPUT: shape}
    embed = _UnitBuilder(shapes, "embed")
    x = embed.op("patches", "patch_embed", [INPUT], [
        ArraySpec("embed.patches.w", (patch, patch, shape[2], width), "he", patch * patch * shape[2], True),
        ArraySpec("embed.patches.b", (width,), "zeros")], patch=patch, out=width)
    tokens = shapes[x][0]
    x = embed.op("pos", "pos_embed", [x], [ArraySpec("embed.pos", (tokens, width), "zeros")])
    units = [embed.done()]
    for i in range(1, depth + 1):
        block = f"block{i}"
        u = _UnitBuilder(shapes, block if granularity == "block" else f"{block}.attn", pid=block)
        x = _attention_half(u, x, heads)
        if granularity == "layer":
            units.append(u.done())
            u = _UnitBuilder(shapes, f"{block}.mlp", pid=block)
        h = u.token_linear(u.layernorm(x, "ln2"), "fc1", ratio * width)
        x = u.op("add2", "add", [x, u.token_linear(u.op("gelu", "gelu", [h]), "fc2", width)])
        units.append(u.done())
    u = _UnitBuilder(shapes, "classifier", pid="")
    u.linear(u.to_flat(x), "fc", ncls)
    return _graph("vit", shape, ncls, units + [u.done()])


def _attention_half(u, x, heads):
    """x + W_o concat_h softmax(q_h k_h^T / sqrt(d_h)) v_h, q, k, v = LN(x) W_{q,k,v} + b."""
    tokens, width = u.shapes[x]
    dh = width // heads
    h = u.layernorm(x, "ln1")
    split = {}
    for name, perm in (("q", (1, 0, 2)), ("k", (1, 2, 0)), ("v", (1, 0, 2))):  # k comes out as (h, d_h, T)
        z = u.op(f"{name}.heads", "reshape", [u.token_linear(h, name, width)], shape=(tokens, heads, dh))
        split[name] = u.op(f"{name}.t", "transpose", [z], perm=perm)
    scores = u.op("scale", "scale", [u.op("scores", "matmul", [split["q"], split["k"]])], factor=dh ** -0.5)
    att = u.op("softmax", "softmax", [scores])
    o = u.op("o.t", "transpose", [u.op("mix", "matmul", [att, split["v"]])], perm=(1, 0, 2))
    o = u.op("concat", "reshape", [o], shape=(tokens, width))
    return u.op("add1", "add", [x, u.token_linear(o, "proj", width)])


_BUILDERS = {"mlp": mlp, "cnn": small_cnn, "vgg": vgg, "vit": vit}


def build_model(name, **kw):
    """Registry: ``build_model("resnet32", granularity="layer")`` etc. (names in MODELS)."""
    if name not in MODELS:
        raise SpecError(f"field 'model' = {name!r}; allowed: {', '.join(MODELS)}")
    fn = _BUILDERS.get(name, resnet)
    allowed = [p for p in inspect.signature(fn).parameters if not (fn is resnet and p == "depth")]
    for key in kw:
        if key not in allowed:
            raise SpecError(f"model {name!r}: unknown field {key!r}; allowed: {', '.join(allowed)}")
    return fn(depth=int(name[len("resnet"):]), **kw) if fn is resnet else fn(**kw)


# ---------------------------------------------------------------- cuts

def cuts_from_table(graph, table):
    """Map [stage, block] pairs (stage 0 = stem) to cut indices (after that block's last unit)."""
    index = {u.name: i for i, u in enumerate(graph.units)}
    cuts = []
    for j, pair in enumerate(table):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise SpecError(f"field 'table[{j}]' = {pair!r}: needs a [stage, block] pair")
        s, b = pair
        names = ["stem"] if (s, b) == (0, 0) else [f"s{s}.b{b}", f"s{s}.b{b}.l2"]
        found = [index[nm] for nm in names if nm in index]
        if not found:
            raise SpecError(f"field 'table[{j}]' = {list(pair)}: graph {graph.name!r} has no block "
                            f"[{s}, {b}] (stage 0 is the stem [0, 0]; stages from 1, blocks from 0)")
        cuts.append(found[0] + 1)
    return tuple(cuts)


def infopro_cuts(depth, K, granularity="block"):
    """Cut indices reproducing InfoPro's split table for ResNet-``depth`` with K modules."""
    if (depth, K) not in INFOPRO_TABLES:
        have = ", ".join(f"(depth={d}, K={k})" for d, k in INFOPRO_TABLES)
        raise SpecError(f"fields 'depth', 'K' = ({depth!r}, {K!r}): no InfoPro table; available: {have}")
    return cuts_from_table(resnet(depth=depth, granularity=granularity), INFOPRO_TABLES[depth, K])


def even_cuts(graph, K):
    """K modules with unit counts as equal as possible (least sum of squares), valid cuts only."""
    valid = graph.valid_cuts()
    if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= len(valid) + 1:
        raise SpecError(f"field 'K' = {K!r}: graph {graph.name!r} allows 1 <= K <= {len(valid) + 1} "
                        f"modules ({len(valid)} valid cuts)")
    ends = (0, *valid, len(graph.units))
    # best[j][e]: (cost, cuts) of splitting units[:ends[e]] into j modules, ending at ends[e]
    best = [{0: (0, ())}]
    for j in range(1, K + 1):
        best.append({})
        for e in range(1, len(ends)):
            options = [(c + (ends[e] - ends[s]) ** 2, cuts + (ends[s],))
                       for s, (c, cuts) in best[j - 1].items() if s < e]
            if options:
                best[j][e] = min(options)
    return best[K][len(ends) - 1][1][1:]


# ---------------------------------------------------------------- heads and partitions

def make_head(kind, graph, cut, index, hidden=None):
    """Auxiliary head ``head{index}`` reading ``graph.units[cut-1].output``, giving logits."""
    if kind not in HEADS:
        raise SpecError(f"field 'head' = {kind!r}; allowed: {', '.join(HEADS)}")
    n = len(graph.units)
    if not isinstance(cut, int) or isinstance(cut, bool) or not 0 < cut < n:
        raise SpecError(f"field 'cut' = {cut!r}: needs 0 < cut < N = {n}")
    if kind == "linear" and hidden is not None:
        raise SpecError(f"field 'hidden' = {hidden!r} applies only to head 'conv'; leave it None")
    hidden = 128 if hidden is None else _positive_ints("hidden", (hidden,))[0]
    src = graph.units[cut - 1].output
    u = _UnitBuilder({src: graph.shapes[src]}, f"head{index}")
    if kind == "linear":
        u.linear(u.to_flat(src), "fc", graph.num_classes)
        return u.done()
    x = u.to_flat(src) if len(graph.shapes[src]) == 2 else src  # tokens: LN + mean (BL-2.8)
    if len(graph.shapes[src]) == 3:
        x = u.conv_bn_relu(x, out=graph.shapes[src][-1])
        if min(graph.shapes[src][:2]) >= 2:
            x = u.op("avgpool", "avgpool", [x], size=2)
        x = u.to_flat(x, pool=False)
    x = u.op("relu1", "relu", [u.linear(x, "fc1", hidden)])
    u.linear(x, "fc2", graph.num_classes)
    return u.done()


def make_partition(graph, cuts, head="linear", hidden=None):
    """Partition with one ``head`` per cut (head k reads module k's output)."""
    cuts = tuple(cuts)
    validate(graph, Partition(cuts), Method(kind="bp"))  # cut checks first: clear errors
    heads = tuple(make_head(head, graph, c, k, hidden) for k, c in enumerate(cuts, 1))
    partition = Partition(cuts, heads)
    validate(graph, partition, Method(kind="greedy"))
    return partition


# ---------------------------------------------------------------- initial values

def _initial(spec, rng, dtype):
    if spec.init == "he":  # He et al. 2015: N(0, 2 / fan_in); drawn in float64 for all dtypes
        return rng.normal(0.0, np.sqrt(2.0 / spec.fan_in), spec.shape).astype(dtype)
    if spec.init in ("zeros", "ones"):
        return (np.zeros if spec.init == "zeros" else np.ones)(spec.shape, dtype=dtype)
    raise SpecError(f"array {spec.id!r}: field 'init' = {spec.init!r}; allowed: he, zeros, ones")


def init_params(graph, partition=None, seed=0, dtype="float64"):
    """(params, buffers) from one ``default_rng(seed)``, drawn trunk first then heads, so
    the trunk's values do not depend on the partition or the method."""
    if dtype not in DTYPES:
        raise SpecError(f"field 'dtype' = {dtype!r}; allowed: {', '.join(DTYPES)}")
    rng = np.random.default_rng(seed)
    units = tuple(graph.units) + (tuple(partition.heads) if partition is not None else ())
    params = {p.id: _initial(p, rng, dtype) for u in units for p in u.params}
    buffers = {b.id: _initial(b, rng, dtype) for u in units for b in u.buffers}
    return params, buffers
