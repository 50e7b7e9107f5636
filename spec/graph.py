"""BL-2: the layer graph, its units and parameters (machine-readable part).

A :class:`Graph` is an ordered sequence of :class:`Unit` objects u_1..u_N. Each unit
is a short list of primitive applications (:class:`Op`) in topological order, and
declares the parameters and buffers its ops use. Values are named strings; the
graph input is the value ``"x"``. The last unit's last op produces the logits.

Layout (BL-2.6): image activations are NHWC, conv weights are HWIO
``(kh, kw, c_in, c_out)``, linear weights are ``(d_in, d_out)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRIMITIVES", "SpecError", "ArraySpec", "Op", "Unit", "Graph", "INPUT"]

INPUT = "x"

#: BL-2.2: the primitive names and their argument lists (inputs, params, buffers).
PRIMITIVES: dict[str, tuple[int, int, int]] = {
    "conv2d": (1, 1, 0),          # x, w ; attrs stride, padding
    "batchnorm": (1, 2, 2),       # x, gamma, beta ; running mean, var ; attrs momentum, eps
    "relu": (1, 0, 0),
    "add": (2, 0, 0),
    "avgpool": (1, 0, 0),         # attrs size (window = stride)
    "maxpool": (1, 0, 0),         # attrs size (window = stride)
    "global_avgpool": (1, 0, 0),  # NHWC -> NC
    "linear": (1, 2, 0),          # x, w, b
    "flatten": (1, 0, 0),
    "reshape": (1, 0, 0),         # attrs shape (per sample)
    # BL-2.7: token-sequence primitives (Vision Transformers); tokens are (T, D) per sample
    "patch_embed": (1, 2, 0),     # x (H, W, C), w (p, p, C, D), b (D,) ; attrs patch, out
    "pos_embed": (1, 1, 0),       # x (T, D), pos (T, D)
    "layernorm": (1, 2, 0),       # x (..., D), gamma, beta (D,) ; attrs eps
    "gelu": (1, 0, 0),            # tanh form
    "token_linear": (1, 2, 0),    # x (T, D_in), w (D_in, D_out), b (D_out,) ; attrs out
    "matmul": (2, 0, 0),          # a (..., M, K), b (..., K, N), equal leading axes
    "transpose": (1, 0, 0),       # attrs perm (per-sample axes)
    "scale": (1, 0, 0),           # attrs factor
    "softmax": (1, 0, 0),         # over the last axis
    "token_mean": (1, 0, 0),      # (T, D) -> (D,)
}


class SpecError(ValueError):
    """A graph, partition or configuration that the spec forbids (BL-2.9)."""


@dataclass(frozen=True)
class ArraySpec:
    """A parameter or buffer: stable id, shape, initialiser (BL-2.4)."""

    id: str
    shape: tuple[int, ...]
    init: str  # "he" | "zeros" | "ones"
    fan_in: int = 0
    decay: bool = False  # BL-4.3: weight decay applies to this parameter


@dataclass(frozen=True)
class Op:
    """One primitive application producing the value ``out``."""

    out: str
    prim: str
    inputs: tuple[str, ...]
    params: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    attrs: tuple[tuple[str, Any], ...] = ()

    @property
    def kw(self) -> dict[str, Any]:
        return dict(self.attrs)


@dataclass(frozen=True)
class Unit:
    """A named group of ops: the grain at which modules are cut and links measured."""

    name: str
    ops: tuple[Op, ...]
    params: tuple[ArraySpec, ...] = ()
    buffers: tuple[ArraySpec, ...] = ()

    @property
    def output(self) -> str:
        return self.ops[-1].out

    def consumed(self) -> set[str]:
        """Values this unit reads that it does not produce itself."""
        made = {op.out for op in self.ops}
        return {v for op in self.ops for v in op.inputs if v not in made}


@dataclass(frozen=True)
class Graph:
    """BL-2.1: a trunk network as an ordered sequence of units."""

    name: str
    input_shape: tuple[int, ...]  # per sample: (H, W, C) or (D,)
    num_classes: int
    units: tuple[Unit, ...]
    shapes: dict[str, tuple[int, ...]] = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        from .shapes import infer_shapes

        if not self.units:
            raise SpecError(f"graph {self.name!r}: field 'units' is empty; a graph needs at least one unit")
        object.__setattr__(self, "shapes", infer_shapes(self.units, {INPUT: tuple(self.input_shape)},
                                                        where=f"graph {self.name!r}"))
        out = self.shapes[self.units[-1].output]
        if out != (self.num_classes,):
            raise SpecError(f"graph {self.name!r}: last unit {self.units[-1].name!r} produces shape {out}, "
                            f"field 'num_classes' needs ({self.num_classes},)")

    @property
    def params(self) -> tuple[ArraySpec, ...]:
        return tuple(p for u in self.units for p in u.params)

    @property
    def buffers(self) -> tuple[ArraySpec, ...]:
        return tuple(b for u in self.units for b in u.buffers)

    def crossing(self, cut: int) -> set[str]:
        """BL-3.1: values produced by units[:cut] (or the input) and read by units[cut:]."""
        before = {INPUT} | {op.out for u in self.units[:cut] for op in u.ops}
        return {v for u in self.units[cut:] for v in u.consumed() if v in before}

    def valid_cuts(self) -> tuple[int, ...]:
        """Unit boundaries where exactly one activation (the unit output) crosses."""
        return tuple(c for c in range(1, len(self.units))
                     if self.crossing(c) == {self.units[c - 1].output})
