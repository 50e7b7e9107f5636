"""BL-2.3: static checks and per-sample shape inference for a sequence of units."""
from __future__ import annotations

import math

from .graph import PRIMITIVES, SpecError

__all__ = ["infer_shapes", "TOKEN_PRIMS"]

#: BL-2.7: the token-sequence primitives (their shape rules are at the end of this module).
TOKEN_PRIMS = ("patch_embed", "pos_embed", "layernorm", "gelu", "token_linear", "matmul", "transpose",
               "scale", "softmax", "token_mean")


def _param_shapes(prim, x, kw, op):
    """Shapes the op's parameters must have, given its (first) input shape."""
    if prim == "conv2d":
        k = kw["kernel"]
        return [(k, k, x[-1], kw["out"])]
    if prim == "batchnorm":
        return [(x[-1],), (x[-1],)]
    if prim == "linear":
        return [(x[-1], kw["out"]), (kw["out"],)]
    if prim in TOKEN_PRIMS:
        return _token_param_shapes(prim, x, kw)
    return []


def _out_shape(prim, xs, kw, op, where):
    x = xs[0]
    if prim in TOKEN_PRIMS:
        return _token_out_shape(prim, xs, kw, op, where)
    need_image = prim in ("conv2d", "avgpool", "maxpool", "global_avgpool")
    if need_image and len(x) != 3:
        raise SpecError(f"{where}: op {op.out!r} ({prim}) needs an image input (H, W, C), got shape {x}")
    if prim == "conv2d":
        k, s, p = kw["kernel"], kw.get("stride", 1), kw.get("padding", 0)
        if not 0 <= p < k:
            raise SpecError(f"{where}: op {op.out!r} (conv2d) field 'padding' = {p}; it must satisfy "
                            f"0 <= padding < kernel = {k}")
        h, w = (x[0] + 2 * p - k) // s + 1, (x[1] + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            raise SpecError(f"{where}: op {op.out!r} (conv2d) kernel {k} does not fit input {x}")
        return (h, w, kw["out"])
    if prim in ("avgpool", "maxpool"):
        k = kw["size"]
        if x[0] < k or x[1] < k:
            raise SpecError(f"{where}: op {op.out!r} ({prim}) window {k} larger than input {x}")
        return (x[0] // k, x[1] // k, x[2])
    if prim == "global_avgpool":
        return (x[2],)
    if prim == "linear":
        if len(x) != 1:
            raise SpecError(f"{where}: op {op.out!r} (linear) needs a flat input (D,), got {x}; add a flatten op")
        return (kw["out"],)
    if prim == "add":
        if xs[0] != xs[1]:
            raise SpecError(f"{where}: op {op.out!r} (add) shape mismatch between inputs "
                            f"{op.inputs[0]!r} {xs[0]} and {op.inputs[1]!r} {xs[1]}")
        return x
    if prim == "flatten":
        return (math.prod(x),)
    if prim == "reshape":
        shape = tuple(kw["shape"])
        if math.prod(shape) != math.prod(x):
            raise SpecError(f"{where}: op {op.out!r} (reshape) cannot reshape {x} to {shape}")
        return shape
    return x  # relu, batchnorm


def infer_shapes(units, shapes, where="graph"):
    """Check every op of ``units`` and return the per-sample shape of every value.

    ``shapes`` gives the shapes of the values available before the first unit.
    Raises :class:`SpecError` naming the unit, op and field at the first problem.
    """
    shapes = dict(shapes)
    seen_params = {}
    for unit in units:
        declared = {a.id: a for a in unit.params}
        declared_bufs = {a.id: a for a in unit.buffers}
        for op in unit.ops:
            at = f"{where}, unit {unit.name!r}"
            if op.prim not in PRIMITIVES:
                raise SpecError(f"{at}: op {op.out!r} field 'prim' is {op.prim!r}, "
                                f"not a primitive; allowed: {sorted(PRIMITIVES)}")
            n_in, n_par, n_buf = PRIMITIVES[op.prim]
            for fld, got, want in (("inputs", op.inputs, n_in), ("params", op.params, n_par),
                                   ("buffers", op.buffers, n_buf)):
                if len(got) != want:
                    raise SpecError(f"{at}: op {op.out!r} ({op.prim}) field {fld!r} has {len(got)} "
                                    f"entries, needs {want}")
            if op.out in shapes:
                raise SpecError(f"{at}: value {op.out!r} is produced twice; op names must be unique")
            for v in op.inputs:
                if v not in shapes:
                    raise SpecError(f"{at}: op {op.out!r} reads {v!r}, which no earlier op produces")
            xs = [shapes[v] for v in op.inputs]
            want_shapes = _param_shapes(op.prim, xs[0], op.kw, op)
            for pid, want in zip(op.params, want_shapes):
                if pid not in declared:
                    raise SpecError(f"{at}: op {op.out!r} uses parameter {pid!r}, not declared in the unit's 'params'")
                if tuple(declared[pid].shape) != tuple(want):
                    raise SpecError(f"{at}: parameter {pid!r} has shape {declared[pid].shape}, "
                                    f"op {op.out!r} ({op.prim}) on input {xs[0]} needs {want}")
            for bid in op.buffers:
                if bid not in declared_bufs:
                    raise SpecError(f"{at}: op {op.out!r} uses buffer {bid!r}, not declared in the unit's 'buffers'")
                if tuple(declared_bufs[bid].shape) != (xs[0][-1],):
                    raise SpecError(f"{at}: buffer {bid!r} has shape {declared_bufs[bid].shape}, needs ({xs[0][-1]},)")
            shapes[op.out] = _out_shape(op.prim, xs, op.kw, op, at)
        for a in unit.params + unit.buffers:
            if a.id in seen_params:
                raise SpecError(f"{where}: id {a.id!r} declared by units {seen_params[a.id]!r} and "
                                f"{unit.name!r}; parameter and buffer ids must be unique")
            seen_params[a.id] = unit.name
    return shapes


# ---------------------------------------------------------------- BL-2.7 token sequences

def _token_param_shapes(prim, x, kw):
    if prim == "patch_embed":
        p = kw["patch"]
        return [(p, p, x[-1], kw["out"]), (kw["out"],)]
    if prim == "pos_embed":
        return [tuple(x)]
    if prim == "layernorm":
        return [(x[-1],), (x[-1],)]
    if prim == "token_linear":
        return [(x[-1], kw["out"]), (kw["out"],)]
    return []


def _token_out_shape(prim, xs, kw, op, where):
    x, at = xs[0], f"{where}: op {op.out!r} ({prim})"
    if prim == "patch_embed":
        p = kw["patch"]
        if len(x) != 3:
            raise SpecError(f"{at} needs an image input (H, W, C), got shape {x}")
        if not (isinstance(p, int) and p >= 1 and x[0] % p == 0 and x[1] % p == 0):
            raise SpecError(f"{at} field 'patch' = {p!r}: needs a positive integer dividing H and W of "
                            f"input {x} (patches do not overlap and cover the image)")
        return ((x[0] // p) * (x[1] // p), kw["out"])
    if prim in ("pos_embed", "token_linear", "token_mean") and len(x) != 2:
        raise SpecError(f"{at} needs a token sequence (T, D), got shape {x}")
    if prim == "token_linear":
        return (x[0], kw["out"])
    if prim == "token_mean":
        return (x[1],)
    if prim == "matmul":
        a, b = xs
        if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise SpecError(f"{at} cannot multiply {op.inputs[0]!r} {a} by {op.inputs[1]!r} {b}: needs "
                            f"(..., M, K) and (..., K, N) with equal leading axes (no broadcasting)")
        return a[:-1] + (b[-1],)
    if prim == "transpose":
        perm = tuple(kw["perm"])
        if sorted(perm) != list(range(len(x))):
            raise SpecError(f"{at} field 'perm' = {perm}: needs a permutation of the {len(x)} "
                            f"per-sample axes of input {x}")
        return tuple(x[i] for i in perm)
    if prim == "scale" and not isinstance(kw.get("factor"), (int, float)):
        raise SpecError(f"{at} field 'factor' = {kw.get('factor')!r}: needs a number")
    return tuple(x)  # pos_embed, layernorm, gelu, scale, softmax keep the shape
