"""BL-7 runtime model inputs: per-unit FLOP counts of a :class:`~backlink.spec.Graph`.

Counts are per batch (per-sample count times ``batch``), multiply-add = 2 FLOPs.
Forward, per sample:

- conv2d: 2 * H_out * W_out * kh * kw * cin * cout (no bias);
- linear: 2 * din * dout + dout (bias);
- batchnorm: 4 per element (normalise, scale, shift, statistics);
- relu, add: 1 per output element; avgpool, maxpool, global_avgpool: 1 per input
  element; flatten, reshape: 0;
- BL-2.7 token primitives: see ``TOKEN_GEMM_FLOPS`` and the comment above it.

Weight layers' backward is twice the forward (input gradient + weight gradient);
every other op's backward is counted as its forward. The loss is not counted.
The numbers are a model, not a measurement: they rank configurations, and
:func:`backlink.reference.simulator.simulate` accepts measured costs just as well.
"""
from __future__ import annotations

import math

from ..spec.graph import Graph, SpecError, Unit
from ..spec.partition import Partition
from ..spec.shapes import infer_shapes

__all__ = ["ELEMENTWISE_FLOPS", "TOKEN_GEMM_FLOPS", "op_flops", "unit_flops", "flop_costs", "head_flop_costs",
           "partition_costs"]

#: forward FLOPs per element of the op's output (relu, add, batchnorm) or input (pools)
ELEMENTWISE_FLOPS = {"batchnorm": 4, "relu": 1, "add": 1, "avgpool": 1, "maxpool": 1,
                     "global_avgpool": 1, "flatten": 0, "reshape": 0}
_POOLS = ("avgpool", "maxpool", "global_avgpool", "token_mean")

# BL-2.7 token sequences. Elementwise, per output element: layernorm 5 (mean, centre,
# variance, normalise, affine), gelu 8 (the tanh polynomial), softmax 4 (max, exp, sum,
# divide), pos_embed and scale 1, transpose 0 (a copy), token_mean 1 per input element.
ELEMENTWISE_FLOPS.update({"layernorm": 5, "gelu": 8, "softmax": 4, "pos_embed": 1, "scale": 1,
                          "transpose": 0, "token_mean": 1})
#: forward FLOPs per sample of the token GEMMs (multiply-add = 2, plus the bias); the
#: backward is twice the forward (both operands' cotangents), as for conv2d and linear.
TOKEN_GEMM_FLOPS = {
    "token_linear": lambda s, op: 2.0 * math.prod(s[op.inputs[0]]) * s[op.out][-1] + math.prod(s[op.out]),
    "patch_embed": lambda s, op: 2.0 * math.prod(s[op.inputs[0]]) * s[op.out][-1] + math.prod(s[op.out]),
    "matmul": lambda s, op: 2.0 * math.prod(s[op.out]) * s[op.inputs[0]][-1],
}


def op_flops(op, shapes) -> tuple[float, float]:
    """(forward, backward) FLOPs per sample of one op, given the shapes of all values."""
    x, y = shapes[op.inputs[0]], shapes[op.out]
    if op.prim == "conv2d":
        k = op.kw["kernel"]
        fwd = 2.0 * y[0] * y[1] * k * k * x[-1] * y[-1]
        return fwd, 2.0 * fwd
    if op.prim == "linear":
        fwd = 2.0 * x[-1] * y[-1] + y[-1]
        return fwd, 2.0 * fwd
    if op.prim in TOKEN_GEMM_FLOPS:
        fwd = TOKEN_GEMM_FLOPS[op.prim](shapes, op)
        return fwd, 2.0 * fwd
    if op.prim not in ELEMENTWISE_FLOPS:
        raise SpecError(f"op {op.out!r}: field 'prim' = {op.prim!r} has no FLOP count; "
                        f"known: conv2d, linear, {', '.join(ELEMENTWISE_FLOPS)}")
    elements = math.prod(x if op.prim in _POOLS else y)
    fwd = float(ELEMENTWISE_FLOPS[op.prim] * elements)
    return fwd, fwd


def unit_flops(unit: Unit, shapes) -> tuple[float, float]:
    """(forward, backward) FLOPs per sample of a unit; ``shapes`` holds every value's shape."""
    pairs = [op_flops(op, shapes) for op in unit.ops]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def _batch(batch) -> int:
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise SpecError(f"field 'batch' = {batch!r}: needs an integer batch size >= 1")
    return batch


def flop_costs(graph: Graph, batch: int) -> tuple[list[float], list[float]]:
    """Per-unit forward and backward FLOPs of ``graph`` for a batch of ``batch`` samples."""
    n = _batch(batch)
    pairs = [unit_flops(u, graph.shapes) for u in graph.units]
    return [n * p[0] for p in pairs], [n * p[1] for p in pairs]


def head_flop_costs(head: Unit, input_shape, batch: int) -> tuple[float, float]:
    """(forward, backward) FLOPs of a head whose single input has per-sample ``input_shape``."""
    n = _batch(batch)
    src = head.consumed()
    if len(src) != 1:
        raise SpecError(f"field 'head' ({head.name!r}) reads {sorted(src)}; a head reads exactly one value")
    shapes = infer_shapes([head], {src.pop(): tuple(input_shape)}, where=f"head {head.name!r}")
    f, b = unit_flops(head, shapes)
    return n * f, n * b


def partition_costs(graph: Graph, partition: Partition, batch: int) -> dict:
    """Keyword arguments for :func:`~backlink.reference.simulator.simulate`: ``fwd``,
    ``bwd``, ``cuts`` and ``head_costs`` (forward + backward of each head)."""
    fwd, bwd = flop_costs(graph, batch)
    heads = []
    for c, head in zip(partition.cuts, partition.heads):
        f, b = head_flop_costs(head, graph.shapes[graph.units[c - 1].output], batch)
        heads.append(f + b)
    if len(heads) != len(partition.cuts):
        raise SpecError(f"field 'heads' has {len(partition.heads)} heads for {len(partition.cuts)} cuts; "
                        f"the simulator needs one head per cut")
    return {"fwd": fwd, "bwd": bwd, "cuts": tuple(partition.cuts), "head_costs": heads}
