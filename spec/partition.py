"""BL-3: partitions into modules, auxiliary heads, methods and reach sets.

Indices: units are u_1..u_N; cuts 0 < c_1 < ... < c_{K-1} < N; module k (1-based)
holds units (c_{k-1}, c_k] with c_0 = 0 and c_K = N, i.e. ``graph.units[c_{k-1}:c_k]``.
Loss k (1 <= k < K) is CE(head_k(h_k), y), h_k the output of the last unit of module
k; loss K is CE(logits, y).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

from .graph import Graph, SpecError, Unit
from .shapes import infer_shapes

__all__ = ["METHODS", "Partition", "Method", "Reach", "module_bounds", "tail_bounds",
           "reach_sets", "validate"]

METHODS = ("bp", "greedy", "backlink")


@dataclass(frozen=True)
class Partition:
    """BL-3.1: cut points and one auxiliary head per cut (head k reads h_k)."""

    cuts: tuple[int, ...] = ()
    heads: tuple[Unit, ...] = ()

    @property
    def K(self) -> int:
        return len(self.cuts) + 1


@dataclass(frozen=True)
class Method:
    """BL-3.3: the training method and its link parameters.

    ``link_length`` is P, counted in units (BL-3.4); ``beta`` scales the linked
    terms; ``loss_weights`` are w_1..w_K (default all 1); ``allow_cross_module``
    lets a tail reach past the previous module (BL-3.5). ``beta`` and every loss
    weight must be a finite number >= 0 (BL-3.3); 0 is allowed and removes the term.
    """

    kind: Literal["bp", "greedy", "backlink"] = "backlink"
    link_length: int = 1
    beta: float = 1.0
    loss_weights: tuple[float, ...] | None = None
    allow_cross_module: bool = False

    @property
    def P(self) -> int:
        return self.link_length if self.kind == "backlink" else 0


@dataclass(frozen=True)
class Reach:
    """BL-3.6: loss k reaches ``own`` with coefficient w_k and ``tail`` with beta*w_k."""

    loss: int
    own: frozenset[str]
    tail: frozenset[str]
    weight: float
    tail_weight: float


def module_bounds(n_units: int, partition: Partition, method: Method) -> list[tuple[int, int]]:
    """0-based half-open unit ranges [c_{k-1}, c_k) of the modules (one for BP).

    >>> from backlink.spec import Method, Partition, module_bounds
    >>> module_bounds(6, Partition(cuts=(2, 4)), Method("greedy"))
    [(0, 2), (2, 4), (4, 6)]
    >>> module_bounds(6, Partition(cuts=(2, 4)), Method("bp"))
    [(0, 6)]
    """
    if method.kind == "bp":
        return [(0, n_units)]
    edges = (0, *partition.cuts, n_units)
    return list(zip(edges[:-1], edges[1:]))


def tail_bounds(bounds: list[tuple[int, int]], k: int, method: Method) -> tuple[int, int]:
    """BL-3.4: the linked tail of loss k (0-based k): units [max(0, c_{k-1}-P), c_{k-1}).

    >>> from backlink.spec import Method, tail_bounds
    >>> tail_bounds([(0, 2), (2, 4), (4, 6)], 2, Method("backlink", link_length=1))
    (3, 4)
    >>> tail_bounds([(0, 2), (2, 4), (4, 6)], 0, Method("backlink", link_length=1))  # loss 1: no tail
    (0, 0)
    """
    start = bounds[k][0]
    return (max(0, start - method.P), start)


def validate(graph: Graph, partition: Partition, method: Method) -> None:
    """Raise :class:`SpecError` naming the field if the combination is forbidden."""
    n = len(graph.units)
    if method.kind not in METHODS:
        raise SpecError(f"field 'method.kind' is {method.kind!r}; allowed: {', '.join(METHODS)}")
    cuts = tuple(partition.cuts)
    for i, c in enumerate(cuts):
        if not isinstance(c, int) or isinstance(c, bool):
            raise SpecError(f"field 'cuts[{i}]' is {c!r}; cut points are integers")
        if not 0 < c < n:
            raise SpecError(f"field 'cuts[{i}]' = {c} is outside the unit range: cut points must "
                            f"satisfy 0 < c < N = {n} (graph {graph.name!r} has {n} units)")
    if list(cuts) != sorted(set(cuts)):
        raise SpecError(f"field 'cuts' = {list(cuts)} must be strictly increasing without duplicates; "
                        f"did you mean {sorted(set(cuts))}?")
    allowed = graph.valid_cuts()
    for i, c in enumerate(cuts):
        if c not in allowed:
            crossing = sorted(graph.crossing(c))
            raise SpecError(f"field 'cuts[{i}]' = {c}: more than one activation crosses the boundary "
                            f"after unit {graph.units[c - 1].name!r} ({crossing}); a cut must fall where "
                            f"exactly one activation crosses. Valid cuts: {list(allowed)}")
    _check_weights(method)
    if method.kind == "bp":
        return
    if len(partition.heads) != len(cuts):
        raise SpecError(f"field 'heads' has {len(partition.heads)} heads for {len(cuts)} cuts; "
                        f"every module but the last needs one auxiliary head")
    trunk_ids = {a.id for a in graph.params + graph.buffers}
    for i, (c, head) in enumerate(zip(cuts, partition.heads)):
        src = graph.units[c - 1].output
        if head.consumed() != {src}:
            raise SpecError(f"field 'heads[{i}]' ({head.name!r}) reads {sorted(head.consumed())}; "
                            f"it must read exactly the module output {src!r}")
        shapes = infer_shapes([head], {src: graph.shapes[src]}, where=f"heads[{i}]")
        if shapes[head.output] != (graph.num_classes,):
            raise SpecError(f"field 'heads[{i}]' ({head.name!r}) outputs shape {shapes[head.output]}, "
                            f"needs ({graph.num_classes},) logits")
        clash = trunk_ids & {a.id for a in head.params + head.buffers}
        if clash:
            raise SpecError(f"field 'heads[{i}]' reuses trunk ids {sorted(clash)}; head ids must be new")
    K = len(cuts) + 1
    if method.loss_weights is not None and len(method.loss_weights) != K:
        raise SpecError(f"field 'loss_weights' has {len(method.loss_weights)} entries; K = {K} needs {K}")
    if method.kind == "backlink":
        P = method.link_length
        if not isinstance(P, int) or P < 0:
            raise SpecError(f"field 'link_length' = {P!r}; it must be an integer >= 0 (0 is greedy)")
        sizes = [b - a for a, b in module_bounds(n, partition, method)]
        if not method.allow_cross_module and K > 1 and P > min(sizes[:-1]):
            k = sizes[:-1].index(min(sizes[:-1])) + 1
            raise SpecError(f"field 'link_length' = {P} is longer than module {k}, which has "
                            f"{sizes[k - 1]} units; use link_length <= {min(sizes[:-1])}, or set "
                            f"allow_cross_module=True to let tails reach earlier modules (BL-3.5)")


def _finite_nonnegative(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _check_weights(method: Method) -> None:
    """BL-3.3: beta and the loss weights are finite numbers >= 0 (0 is allowed: no term)."""
    if not _finite_nonnegative(method.beta):
        raise SpecError(f"field 'beta' = {method.beta!r}; it must be a finite number >= 0 "
                        f"(0 turns the link terms off; default 1)")
    w = method.loss_weights
    if w is None:
        return
    if not isinstance(w, (tuple, list)):
        raise SpecError(f"field 'loss_weights' = {w!r}; give a tuple of K numbers (one per loss), or None")
    bad = [i for i, v in enumerate(w) if not _finite_nonnegative(v)]
    if bad:
        raise SpecError(f"field 'loss_weights[{bad[0]}]' = {w[bad[0]]!r}; loss weights must be finite "
                        f"numbers >= 0 (0 leaves that loss out)")


def reach_sets(graph: Graph, partition: Partition, method: Method) -> tuple[Reach, ...]:
    """BL-3.6: the reach set of every loss, as parameter ids (exact)."""
    validate(graph, partition, method)
    bounds = module_bounds(len(graph.units), partition, method)
    K = len(bounds)
    w = (1.0,) if method.kind == "bp" else (method.loss_weights or (1.0,) * K)
    ids = lambda units: frozenset(p.id for u in units for p in u.params)  # noqa: E731
    out = []
    for k, (a, b) in enumerate(bounds):
        own = ids(graph.units[a:b]) | (ids([partition.heads[k]]) if k < K - 1 else frozenset())
        t0, t1 = tail_bounds(bounds, k, method)
        out.append(Reach(k + 1, own, ids(graph.units[t0:t1]), float(w[k]), float(method.beta * w[k])))
    return tuple(out)
