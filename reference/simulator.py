"""BL-7 runtime model: a pipeline simulator over per-unit costs on K devices.

Pure functions, no clock: costs are abstract time units (FLOPs from
:mod:`backlink.reference.flops`, or measured seconds). Indices are 0-based:
units i = 0..N-1, devices (= modules) k = 0..K-1, batches m = 0..M-1. Module k
holds units ``[c_{k-1}, c_k)`` with c_{-1} = 0, c_{K-1} = N, and runs on device k.
Module k < K-1 owns a head whose forward+backward cost is ``head_costs[k]``; the
last module's loss is inside its last unit. Per module: F_k = sum of ``fwd`` over
its units, B_k = sum of ``bwd``, and for BackLink the link cost L_k = sum of
``bwd`` over its last P units (P = ``link_length``).

Rules (every method):

1. A device runs one task at a time; a task starts at the latest of the device
   becoming free and its inputs arriving. Updates cost nothing and are not tasks.
2. A message (activation or cotangent) between neighbouring devices arrives ``comm``
   after the task producing it ends (GPipe: ``comm / micro`` per micro-batch).

Methods:

3. ``bp`` (model-parallel, forward and backward locked): batch m runs fwd on
   devices 0..K-1, then bwd on K-1..0; batch m+1 starts when batch m's bwd ends on
   device 0. Makespan = M * (sum F + sum B + 2 (K-1) comm).
4. ``gpipe``: as bp with the batch split into ``micro`` micro-batches of 1/micro
   the cost. Each device runs all forwards (micro-batch order 0..micro-1), then all
   backwards (reverse order, as in GPipe); batch m+1 starts after every task of
   batch m ended (flush, one update per batch).
5. ``greedy`` (decoupled): device k runs batch m as one block fwd, head, bwd
   (in that order, back to back) once it finished batch m-1 and the activation of
   batch m arrived; it sends the activation on right after its fwd. A head of cost
   0 adds no task.
6. ``backlink``: as greedy, plus, for k >= 1 and P > 0, the end of device k's bwd
   of batch m sends the link cotangent to device k-1, which runs a ``link`` task
   (cost L_{k-1}) for batch m. CHOICE (one-hop, bounded staleness of one batch):

   a. device k-1 runs link(m) at the earliest time it is free and the cotangent
      has arrived, never inside a block (blocks of rule 5 are atomic);
   b. it MUST run link(m) before the block of batch m+2: if the cotangent is
      late, the device waits for it;
   c. when the block of batch m+1 and link(m) could both start, link(m) goes
      first (ties included): link(m) precedes block m+1 iff its cotangent arrives
      no later than block m+1 could start;
   d. links run in batch order; links left after the last block run in order.

   Device k-1's update of its tail parameters for batch m waits for link(m) (rule
   1: no cost). With P = 0 there is no link: backlink equals greedy exactly. This
   matches the BL-4.2 tick table, where the link term of batch m reaches module
   k-1 together with its batch m+2.

BP is not an upper bound in general: a link costs up to B_{k-1} extra and heads cost
extra, so backlink or greedy can be slower than bp when one module's backward
dominates (see tests). ``compare`` reports the numbers, not a claim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..spec.graph import SpecError

__all__ = ["METHODS", "KINDS", "Task", "Schedule", "simulate", "compare", "bp", "gpipe",
           "greedy", "backlink"]

METHODS = ("bp", "gpipe", "greedy", "backlink")
KINDS = ("fwd", "bwd", "head", "link")


@dataclass(frozen=True)
class Task:
    """One busy interval of a device. ``micro`` is the GPipe micro-batch (else 0)."""

    device: int
    batch: int
    kind: str
    start: float
    end: float
    micro: int = 0

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Schedule:
    """A simulated run: makespan, per-device busy time and utilisation, the tasks."""

    method: str
    makespan: float
    busy: tuple[float, ...]
    utilisation: tuple[float, ...]
    tasks: tuple[Task, ...]

    def on(self, device: int, kind: str | None = None) -> list[Task]:
        """Tasks of ``device`` (optionally of one ``kind``) in time order."""
        return sorted((t for t in self.tasks if t.device == device and kind in (None, t.kind)),
                      key=lambda t: (t.start, t.end))

    def find(self, device: int, batch: int, kind: str, micro: int = 0) -> Task:
        for t in self.tasks:
            if (t.device, t.batch, t.kind, t.micro) == (device, batch, kind, micro):
                return t
        raise KeyError(f"no task (device={device}, batch={batch}, kind={kind!r}, micro={micro})")


# ---------------------------------------------------------------- inputs

@dataclass(frozen=True)
class _Stages:
    F: tuple[float, ...]
    B: tuple[float, ...]
    H: tuple[float, ...]  # 0 for the last module
    L: tuple[float, ...]  # link cost into module k (0 for the last module or P = 0)
    P: int

    @property
    def K(self) -> int:
        return len(self.F)


def _costs(field: str, values) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise SpecError(f"field {field!r} = {values!r}: needs a sequence of numbers") from None
    for i, v in enumerate(out):
        if not math.isfinite(v) or v < 0:
            raise SpecError(f"field '{field}[{i}]' = {v!r}: costs must be finite and >= 0")
    return out


def _count(field: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SpecError(f"field {field!r} = {value!r}: needs an integer >= {low}")
    return value


def _stages(fwd, bwd, head_costs, cuts, link_length) -> _Stages:
    f, b = _costs("fwd", fwd), _costs("bwd", bwd)
    n = len(f)
    if n == 0:
        raise SpecError("field 'fwd' is empty: needs one cost per unit (N >= 1)")
    if len(b) != n:
        raise SpecError(f"field 'bwd' has {len(b)} entries; 'fwd' has {n}: one of each per unit")
    cuts = tuple(cuts)
    for i, c in enumerate(cuts):
        if not isinstance(c, int) or isinstance(c, bool) or not 0 < c < n:
            raise SpecError(f"field 'cuts[{i}]' = {c!r} is outside the unit range: cuts are integers "
                            f"with 0 < c < N = {n}")
    if list(cuts) != sorted(set(cuts)):
        raise SpecError(f"field 'cuts' = {list(cuts)} must be strictly increasing; did you mean "
                        f"{sorted(set(cuts))}?")
    K = len(cuts) + 1
    h = [0.0] * (K - 1) if head_costs is None else _costs("head_costs", head_costs)
    if len(h) != K - 1:
        raise SpecError(f"field 'head_costs' has {len(h)} entries; K = {K} modules need {K - 1} "
                        f"(one per module but the last)")
    P = _count("link_length", link_length, 0)
    edges = (0, *cuts, n)
    sizes = [edges[k + 1] - edges[k] for k in range(K)]
    if K > 1 and P > min(sizes[:-1]):
        k = sizes[:-1].index(min(sizes[:-1]))
        raise SpecError(f"field 'link_length' = {P} is longer than module {k} ({sizes[k]} units), the "
                        f"module its link reaches into; the pipelined link is one hop: use "
                        f"link_length <= {min(sizes[:-1])}")
    F = tuple(sum(f[edges[k]:edges[k + 1]]) for k in range(K))
    B = tuple(sum(b[edges[k]:edges[k + 1]]) for k in range(K))
    L = tuple(sum(b[edges[k + 1] - P:edges[k + 1]]) if k < K - 1 and P > 0 else 0.0 for k in range(K))
    return _Stages(F, B, tuple(h) + (0.0,), L, P)


# ---------------------------------------------------------------- timeline

class _Timeline:
    """Per-device free times and the task list (rule 1)."""

    def __init__(self, K: int):
        self.free = [0.0] * K
        self.tasks: list[Task] = []

    def run(self, device, batch, kind, ready, cost, micro=0) -> float:
        start = max(ready, self.free[device])
        self.tasks.append(Task(device, batch, kind, start, start + cost, micro))
        self.free[device] = start + cost
        return start + cost

    def schedule(self, method: str, K: int) -> Schedule:
        makespan = max((t.end for t in self.tasks), default=0.0)
        busy = [0.0] * K
        for t in self.tasks:
            busy[t.device] += t.duration
        util = tuple(x / makespan if makespan > 0 else 0.0 for x in busy)
        return Schedule(method, makespan, tuple(busy), util, tuple(self.tasks))


# ---------------------------------------------------------------- methods

def _run_bp(st: _Stages, M: int, comm: float, micro: int, method: str) -> Schedule:
    """Rules 3 and 4 (bp is gpipe with one micro-batch)."""
    K, tl, start = st.K, _Timeline(st.K), 0.0
    c = comm / micro
    for m in range(M):
        fwd_end = [[0.0] * micro for _ in range(K)]
        for u in range(micro):
            for k in range(K):
                ready = start if k == 0 else fwd_end[k - 1][u] + c
                fwd_end[k][u] = tl.run(k, m, "fwd", ready, st.F[k] / micro, u)
        bwd_end = [[0.0] * micro for _ in range(K)]
        for u in reversed(range(micro)):
            for k in reversed(range(K)):
                ready = fwd_end[k][u] if k == K - 1 else bwd_end[k + 1][u] + c
                bwd_end[k][u] = tl.run(k, m, "bwd", ready, st.B[k] / micro, u)
        start = max(tl.free)  # flush
    return tl.schedule(method, K)


def _run_decoupled(st: _Stages, M: int, comm: float, method: str) -> Schedule:
    """Rules 5 and 6, batch by batch then device by device: the link cotangents that
    device k may need before block m come from blocks < m, already placed."""
    K, tl = st.K, _Timeline(st.K)
    fwd_end = [[0.0] * M for _ in range(K)]
    bwd_end = [[0.0] * M for _ in range(K)]
    has_link = [method == "backlink" and k < K - 1 and st.P > 0 for k in range(K)]
    done = [0] * K  # device k has run link(i) for every i < done[k] (rule 6d)

    def arrival(k, i):  # the cotangent of batch i at device k (rule 2)
        return bwd_end[k + 1][i] + comm

    def link(k, i):
        tl.run(k, i, "link", arrival(k, i), st.L[k])
        done[k] = i + 1

    for m in range(M):
        for k in range(K):
            act = 0.0 if k == 0 else fwd_end[k - 1][m] + comm
            if has_link[k]:
                while done[k] < m - 1:  # rule 6b: link(m-2) before block m
                    link(k, done[k])
                if done[k] == m - 1 and arrival(k, m - 1) <= max(tl.free[k], act):  # rule 6c
                    link(k, m - 1)
            fwd_end[k][m] = tl.run(k, m, "fwd", act, st.F[k])
            if k < K - 1 and st.H[k] > 0:
                tl.run(k, m, "head", 0.0, st.H[k])
            bwd_end[k][m] = tl.run(k, m, "bwd", 0.0, st.B[k])
    for k in range(K):
        while has_link[k] and done[k] < M:
            link(k, done[k])
    return tl.schedule(method, K)


# ---------------------------------------------------------------- public API

def _common(fwd, bwd, head_costs, cuts, link_length, batches, comm):
    st = _stages(fwd, bwd, head_costs, cuts, link_length)
    M = _count("batches", batches, 1)
    if isinstance(comm, bool) or not isinstance(comm, (int, float)) or not 0 <= comm < math.inf:
        raise SpecError(f"field 'comm' = {comm!r}: the per-hop message cost must be a finite number >= 0")
    return st, M, float(comm)


def bp(fwd, bwd, *, cuts=(), batches=1, comm=0.0, head_costs=None, link_length=0) -> Schedule:
    """Rule 3: model-parallel BP, forward and backward locked (heads are not used)."""
    st, M, comm = _common(fwd, bwd, head_costs, cuts, link_length, batches, comm)
    return _run_bp(st, M, comm, 1, "bp")


def gpipe(fwd, bwd, *, cuts=(), batches=1, micro=4, comm=0.0, head_costs=None, link_length=0) -> Schedule:
    """Rule 4: BP over ``micro`` micro-batches, flush after every batch."""
    st, M, comm = _common(fwd, bwd, head_costs, cuts, link_length, batches, comm)
    return _run_bp(st, M, comm, _count("micro", micro, 1), "gpipe")


def greedy(fwd, bwd, *, cuts=(), head_costs=None, batches=1, comm=0.0, link_length=0) -> Schedule:
    """Rule 5: decoupled greedy local training."""
    st, M, comm = _common(fwd, bwd, head_costs, cuts, link_length, batches, comm)
    return _run_decoupled(st, M, comm, "greedy")


def backlink(fwd, bwd, *, cuts=(), head_costs=None, link_length=1, batches=1, comm=0.0) -> Schedule:
    """Rule 6: decoupled BackLink with a one-hop link of ``link_length`` units."""
    st, M, comm = _common(fwd, bwd, head_costs, cuts, link_length, batches, comm)
    return _run_decoupled(st, M, comm, "backlink")


_DISPATCH = {"bp": bp, "gpipe": gpipe, "greedy": greedy, "backlink": backlink}


def simulate(method: str, fwd: Sequence[float], bwd: Sequence[float], *, cuts=(), head_costs=None,
             link_length=0, batches=1, comm=0.0, micro=4) -> Schedule:
    """Simulate ``method`` (one of :data:`METHODS`); arguments as in the module docstring.

    ``link_length`` is used by backlink only and ``micro`` by gpipe only, but both are
    always checked. ``head_costs`` defaults to zeros.
    """
    if method not in _DISPATCH:
        raise SpecError(f"field 'method' = {method!r}; allowed: {', '.join(METHODS)}")
    kw = dict(cuts=cuts, head_costs=head_costs, link_length=link_length, batches=batches, comm=comm)
    _count("micro", micro, 1)
    if method == "gpipe":
        kw["micro"] = micro
    return _DISPATCH[method](fwd, bwd, **kw)


def compare(fwd, bwd, *, cuts=(), head_costs=None, link_length=0, batches=1, comm=0.0,
            micro=4) -> dict[str, dict[str, float]]:
    """Makespan of every method and its reduction vs bp: ``1 - makespan / makespan_bp``
    (0.52 = 52 % less simulated runtime than BP; negative = slower than BP)."""
    out = {}
    for method in METHODS:
        s = simulate(method, fwd, bwd, cuts=cuts, head_costs=head_costs, link_length=link_length,
                     batches=batches, comm=comm, micro=micro)
        out[method] = {"makespan": s.makespan}
    base = out["bp"]["makespan"]
    for row in out.values():
        row["reduction_vs_bp"] = 1.0 - row["makespan"] / base if base > 0 else 0.0
    return out
