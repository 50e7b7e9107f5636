"""Hypothesis strategies for single primitive applications (BL-2.2): arrays, attributes, cotangents.

Arrays come from ``numpy.random.default_rng(seed)`` with a drawn seed; some draws round
the input to small integers so that ReLU zeros and max-pool ties occur (their
conventions are part of BL-2.2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from backlink.spec import PRIMITIVES
from backlink.spec.shapes import TOKEN_PRIMS

__all__ = ["PrimCall", "prim_calls"]


@dataclass(frozen=True, repr=False)
class PrimCall:
    name: str
    args: tuple
    attrs: dict
    seed: int
    ties: bool

    def cotangent(self, out_shape, dtype):
        rng = np.random.default_rng([self.seed, 2])
        return rng.standard_normal(out_shape).astype(dtype)

    def __repr__(self):
        shapes = [a.shape for a in self.args]
        return f"{self.name}(arg shapes {shapes}, attrs {self.attrs}, seed {self.seed}, ties {self.ties})"


def _image(draw, min_side=1):
    return (draw(st.integers(1, 3), label="n"), draw(st.integers(min_side, 6), label="h"),
            draw(st.integers(min_side, 6), label="w"), draw(st.integers(1, 3), label="c"))


def _shapes(draw, name):
    """(arg shapes, attrs) for one primitive."""
    if name == "conv2d":
        n, h, w, c = _image(draw)
        pad = draw(st.integers(0, 1), label="padding")
        k = draw(st.integers(pad + 1, max(pad + 1, min(3, h + 2 * pad, w + 2 * pad))), label="kernel")  # BL-2.3
        out = draw(st.integers(1, 3), label="out")
        attrs = dict(kernel=k, out=out, stride=draw(st.integers(1, 2), label="stride"), padding=pad)
        return [(n, h, w, c), (k, k, c, out)], attrs
    if name == "batchnorm":
        x = _image(draw) if draw(st.booleans(), label="image") else (draw(st.integers(2, 6), label="n"),
                                                                      draw(st.integers(1, 4), label="d"))
        if int(np.prod(x[:-1])) < 2:
            x = (2,) + x[1:]
        c = (x[-1],)
        return [x, c, c, c, c], dict(momentum=0.1, eps=1e-5)
    if name in ("avgpool", "maxpool"):
        shape = _image(draw)
        return [shape], dict(size=draw(st.integers(1, min(3, shape[1], shape[2])), label="size"))
    if name == "linear":
        n, din, dout = (draw(st.integers(1, 5), label=lbl) for lbl in ("n", "d_in", "d_out"))
        return [(n, din), (din, dout), (dout,)], dict(out=dout)
    if name == "reshape":
        shape = _image(draw)
        per = int(np.prod(shape[1:]))
        target = draw(st.sampled_from([(per,), (shape[3], shape[1] * shape[2]), (1, per)]), label="shape")
        return [shape], dict(shape=target)
    if name in TOKEN_PRIMS:
        return _token_shapes(draw, name)
    shape = _image(draw) if name in ("global_avgpool", "flatten") or draw(st.booleans(), label="image") \
        else (draw(st.integers(1, 4), label="n"), draw(st.integers(1, 5), label="d"))
    return [shape] * PRIMITIVES[name][0], {}


@st.composite
def prim_calls(draw, name, dtype):
    shapes, attrs = _shapes(draw, name)
    seed = draw(st.integers(0, 2**16), label="seed")
    ties = draw(st.booleans(), label="ties") if name in ("relu", "maxpool") else False
    big = name == "softmax" and draw(st.booleans(), label="large_logits")  # stability (BL-2.7)
    rng = np.random.default_rng(seed)
    args = []
    for i, shape in enumerate(shapes):
        a = rng.standard_normal(shape)
        if name == "batchnorm" and i == 4:
            a = rng.uniform(0.5, 2.0, shape)  # a running variance is positive
        if ties and i == 0:
            a = np.round(a)
        if big and i == 0:
            a = 300.0 * a  # exp overflows float32 (and float64 at 1000) unless the max is subtracted
        args.append(a.astype(dtype))
    return PrimCall(name, tuple(args), attrs, seed, ties)


def _token_shapes(draw, name):
    """BL-2.7: (arg shapes, attrs) of a token primitive; tokens (n, T, D), heads (n, h, T, d)."""
    n, t, d = (draw(st.integers(1, 3), label="n"), draw(st.integers(1, 5), label="tokens"),
               draw(st.integers(1, 5), label="d"))
    heads = draw(st.booleans(), label="rank4") if name in ("layernorm", "softmax", "transpose", "matmul",
                                                          "gelu", "scale") else False
    x = (n, draw(st.integers(1, 3), label="heads"), t, d) if heads else (n, t, d)
    if name == "patch_embed":
        p = draw(st.integers(1, 3), label="patch")
        img = (n, p * draw(st.integers(1, 3), label="rows"), p * draw(st.integers(1, 3), label="cols"),
               draw(st.integers(1, 3), label="c"))
        return [img, (p, p, img[3], d), (d,)], dict(patch=p, out=d)
    if name == "pos_embed":
        return [x, x[1:]], {}
    if name == "layernorm":
        return [x, (d,), (d,)], dict(eps=draw(st.sampled_from((1e-5, 1e-2)), label="eps"))
    if name == "token_linear":
        out = draw(st.integers(1, 5), label="out")
        return [x, (d, out), (out,)], dict(out=out)
    if name == "matmul":
        return [x, x[:-2] + (d, draw(st.integers(1, 4), label="n_cols"))], {}
    if name == "transpose":
        perm = tuple(draw(st.permutations(range(len(x) - 1)), label="perm"))
        return [x], dict(perm=perm)
    if name == "scale":
        return [x], dict(factor=draw(st.sampled_from((0.5, 0.125, 2.0)), label="factor"))
    return [x], {}  # gelu, softmax, token_mean
