"""BL-4.2: the pipelined schedule as pure functions -- the tick table and its update events.

Normative text: ``spec/pipeline.md``. Indices: ticks t = 0, 1, ...; modules k are
1-based; ``feed[t]`` is the id of the batch fed into module 1 at tick t (``None``: no
batch that tick). Module k forwards, at tick t, the batch fed at tick t - k + 1; the
link term of loss k + 1 reaches module k one tick after module k + 1 computed it.
"""
from __future__ import annotations

from typing import Sequence

from .config import Problem, UpdateEvent
from .graph import SpecError
from .partition import module_bounds, tail_bounds

__all__ = ["module_param_ids", "link_param_ids", "validate_pipelined", "fed_batch",
           "drain_ticks", "tick_events"]


def _bounds(problem: Problem) -> list[tuple[int, int]]:
    return module_bounds(len(problem.graph.units), problem.partition, problem.method)


def module_param_ids(problem: Problem) -> list[tuple[str, ...]]:
    """BL-4.6: parameter ids of each module in graph order, head after trunk."""
    g, part, bounds = problem.graph, problem.partition, _bounds(problem)
    out = []
    for k, (a, b) in enumerate(bounds):
        units = list(g.units[a:b]) + ([part.heads[k]] if k < len(bounds) - 1 else [])
        out.append(tuple(p.id for u in units for p in u.params))
    return out


def link_param_ids(problem: Problem) -> list[tuple[str, ...]]:
    """BL-4.2.3: entry k-1 (0-based) lists the parameters of module k that loss k+1's
    linked tail reaches, in graph order; empty when there is no link into module k."""
    bounds = _bounds(problem)
    units = problem.graph.units
    out = []
    for k in range(len(bounds)):
        if k + 1 >= len(bounds):
            out.append(())
            continue
        t0, t1 = tail_bounds(bounds, k + 1, problem.method)
        out.append(tuple(p.id for u in units[t0:t1] for p in u.params))
    return out


def validate_pipelined(problem: Problem) -> None:
    """BL-4.2.7: a pipelined link is one hop: the tail of loss k lies inside module k-1."""
    if problem.schedule != "pipelined" or problem.method.kind != "backlink":
        return
    bounds = _bounds(problem)
    for k in range(1, len(bounds)):
        t0, _ = tail_bounds(bounds, k, problem.method)
        if t0 < bounds[k - 1][0]:
            raise SpecError(
                f"field 'link_length' = {problem.method.link_length} reaches past module {k} into "
                f"module {k - 1} (BL-4.2.7): the pipelined schedule links one module back only. "
                f"Use link_length <= {bounds[k - 1][1] - bounds[k - 1][0]} or schedule='synchronous'")


def fed_batch(feed: Sequence[int | None], t: int) -> int | None:
    """The id of the batch fed at tick ``t``, or None (before tick 0, past the feed, a bubble)."""
    return feed[t] if 0 <= t < len(feed) else None


def drain_ticks(problem: Problem) -> int:
    """BL-4.2.6: ticks of ``step(None)`` after the last batch until every update has happened.

    0 for BP (locked, BL-4.2.5); K - 1 for greedy; K when BackLink links exist.
    """
    K = len(_bounds(problem))
    return K - 1 + (1 if any(link_param_ids(problem)) else 0)


def tick_events(problem: Problem, feed: Sequence[int | None]) -> list[list[UpdateEvent]]:
    """BL-4.2.4: the update events of ticks 0 .. len(feed)-1, in module order within a tick.

    Module j (1-based) updates at tick t when its own term (loss j on the batch fed at
    t - j + 1) or its link term (loss j + 1 on the batch fed at t - j - 1) exists; the
    event lists the own term first. ``feed`` includes the drain ticks (``None``).
    """
    own_ids, links = module_param_ids(problem), link_param_ids(problem)
    K = len(own_ids)
    ticks = []
    for t in range(len(feed)):
        events = []
        for j in range(1, K + 1):
            own = fed_batch(feed, t - j + 1)
            link = fed_batch(feed, t - j - 1) if links[j - 1] else None
            losses, batches = [], []
            if own is not None:
                losses.append(j)
                batches.append(own)
            if link is not None:
                losses.append(j + 1)
                batches.append(link)
            if losses:
                params = own_ids[j - 1] if own is not None else links[j - 1]
                events.append(UpdateEvent(t, j, params, tuple(losses), tuple(batches)))
        ticks.append(events)
    return ticks
