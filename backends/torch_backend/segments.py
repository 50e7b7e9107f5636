"""BL-3.7 with torch autograd: the forward is cut into segments, each loss is back-propagated
segment by segment.

Segment boundaries are every module start and every linked tail's start. At a boundary
the values crossing it are detached into fresh leaves, so each segment owns a separate
autograd graph. Loss k's backward then walks its segments in reverse -- module k's own
segments, then (BackLink) the tail, with the cotangent scaled by beta on entering it --
calling ``torch.autograd.grad`` once per segment for the segment's parameters and the
leaves the next segment of the walk needs. Values read by the walk's first segment but
produced before it are constants: that is the cut of BL-3.4, and torch only executes
the graph nodes that lead to the requested inputs, so the tail's pass stops at its
earliest parameter. A segment's graph is retained only while a later loss still walks
it (the linked tail of module k-1 until loss k is done), then freed.

The link walks the tail for its parameters only: the tail's input leaves are not asked
for, so autograd computes no cotangent into them (a conv's ``output_mask`` drops the
input half at the tail's entry: BL-3.4). And a tail's parameter gradient is taken once
(``Plan.deferred``): loss k-1's walk asks the tail only for its input leaves and keeps
the cotangent at the tail's outputs (``pending``); loss k's link then seeds the tail with
kept + beta x its own cotangent and asks for the parameters. A VJP is linear in the
cotangent, so this is the sum of BL-3.7's two terms; it saves the tail's weight VJPs
and its input VJP at the entry once per link, for one kept activation-sized cotangent
per tail output until the link is done.

This module knows nothing about the spec graph: names are hashable value keys, and the
callers (the spec runner and the user API) supply the segments' tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch

__all__ = ["Plan", "make_plan", "SegmentRecord", "backprop_loss"]


@dataclass(frozen=True)
class Plan:
    """Segments (unit ranges) and, per loss, its walk ``[(segment, cotangent scale)]``."""

    segments: tuple[tuple[int, int], ...]
    walks: tuple[tuple[tuple[int, float], ...], ...]
    last_use: tuple[int, ...]  # per segment: the 0-based index of the last loss walking it
    #: segments whose parameter gradient waits for the last walk through them: walked by
    #: more than one loss, and the last walk ends there (asks it for no input cotangent)
    deferred: frozenset[int] = frozenset()

    def segments_of(self, start: int, stop: int) -> list[int]:
        return [j for j, (a, b) in enumerate(self.segments) if start <= a and b <= stop]

    def retained_after(self, k: int) -> set[int]:
        """Segments a loss after ``k`` still walks: their graphs must survive loss k."""
        return {j for walk in self.walks[k + 1:] for j, _ in walk}


def make_plan(n_units: int, bounds: Sequence[tuple[int, int]], tails: Sequence[tuple[int, int]],
              beta: float) -> Plan:
    """``bounds``: module unit ranges; ``tails``: per loss, its linked tail range (may be empty)."""
    points = sorted({0, n_units} | {a for a, _ in bounds} | {t0 for t0, t1 in tails if t1 > t0})
    segments = tuple(zip(points[:-1], points[1:]))
    inside = lambda lo, hi: [j for j, (a, b) in enumerate(segments) if lo <= a and b <= hi]  # noqa: E731
    walks = []
    for (a, b), (t0, t1) in zip(bounds, tails):
        walk = [(j, 1.0) for j in reversed(inside(a, b))]
        tail = list(reversed(inside(t0, t1))) if t1 > t0 else []
        walk += [(j, beta if i == 0 else 1.0) for i, j in enumerate(tail)]
        walks.append(tuple(walk))
    last_use = tuple(max(k for k, w in enumerate(walks) if any(j == s for s, _ in w))
                     for j in range(len(segments)))
    visits: dict[int, list[tuple[int, int]]] = {}  # segment -> [(position in walk, walk length)]
    for walk in walks:
        for pos, (j, _) in enumerate(walk):
            visits.setdefault(j, []).append((pos, len(walk)))
    deferred = frozenset(j for j, v in visits.items() if len(v) > 1 and 0 < v[-1][0] == v[-1][1] - 1)
    return Plan(segments, tuple(walks), last_use, deferred)


@dataclass
class SegmentRecord:
    """One forwarded segment: its input leaves, the outputs later code reads, its params."""

    leaves: dict[Hashable, torch.Tensor]
    outputs: dict[Hashable, torch.Tensor]
    params: list[tuple[Hashable, torch.Tensor]]


Accumulate = Callable[[Hashable, torch.Tensor], None]


def backprop_loss(loss: torch.Tensor, weight: float, walk, records: dict[int, SegmentRecord],
                  producer: dict[Hashable, int], extra_params, retain: set[int],
                  accumulate: Accumulate, deferred: frozenset[int] = frozenset(),
                  pending: dict | None = None) -> None:
    """Back-propagate ``weight * loss`` along ``walk`` and hand every parameter gradient
    to ``accumulate(key, grad)``. ``extra_params`` (the head) join the first segment.

    ``deferred`` (:attr:`Plan.deferred`) and ``pending`` (a dict kept across the step's
    losses): a deferred segment that a later loss still walks (in ``retain``) gives only
    its input cotangents and adds its output cotangents to ``pending``; on its last walk
    its parameters get one gradient, on this walk's cotangent plus the pending one."""
    cot: dict[Hashable, torch.Tensor] = {}
    order = [j for j, _ in walk]
    for i, (j, scale) in enumerate(walk):
        if scale != 1.0:
            cot = {v: scale * g for v, g in cot.items()}
        rec = records[j]
        mine = {v: cot.pop(v) for v in [v for v in cot if producer.get(v) == j]}
        later = set(order[i + 1:])
        leaf_keys = [v for v in rec.leaves if producer.get(v) in later]
        head = list(extra_params) if i == 0 else []
        with_loss = i == 0
        params = list(rec.params)
        if j in deferred and j in retain:  # not its last walk: parameters wait (pending)
            if with_loss:  # through the head only: its gradients and the outputs' cotangents
                keys = list(rec.outputs)
                d = torch.autograd.grad([loss], [p for _, p in head] + [rec.outputs[v] for v in keys],
                                        [torch.full_like(loss, weight)], allow_unused=True)
                _hand(head, d, accumulate)
                _add(mine, zip(keys, d[len(head):]))
                head, with_loss = [], False
            _add(pending.setdefault(j, {}), mine.items())
            params = []
        elif j in deferred:  # its last walk (which asks for no input cotangent)
            _add(mine, pending.pop(j, {}).items())
        outs, seeds = ([loss], [torch.full_like(loss, weight)]) if with_loss else ([], [])
        outs += [rec.outputs[v] for v in mine]
        seeds += list(mine.values())
        params += head
        inputs = [p for _, p in params] + [rec.leaves[v] for v in leaf_keys]
        if not outs or not inputs:
            continue
        grads = torch.autograd.grad(outs, inputs, seeds, retain_graph=j in retain, allow_unused=True)
        _hand(params, grads, accumulate)
        _add(cot, zip(leaf_keys, grads[len(params):]))


def _hand(params, grads, accumulate: Accumulate) -> None:
    for (key, _), g in zip(params, grads):
        if g is not None:
            accumulate(key, g)


def _add(store: dict, items) -> None:
    for v, g in items:
        if g is not None:
            store[v] = store[v] + g if v in store else g
