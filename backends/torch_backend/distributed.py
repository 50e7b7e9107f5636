"""BL-4.2 on torch: one module per process, point-to-point over torch.distributed (gloo).

The same tick loop as :mod:`backlink.reference.distributed` (MPI) with a torch stage:

- a module's forward is cut into two autograd graphs: the units before its linked tail,
  and the tail itself, whose inputs are detached into leaves. The tail runs on
  **snapshots** (clones) of its parameters, so the graph kept for the link term holds
  the parameter values of that batch's forward (weight stashing, BL-4.2.3) while the
  live parameters are updated in place by SGD;
- the own term walks head, tail (graph retained), then the rest of the module; the link
  term, one tick later, walks the retained tail graph with beta times the cotangent
  received from the next module, and frees it;
- messages are preallocated tensors: an int64 header ``[batch id, n, labels...]``
  (batch id -1: none this tick) then, when n > 0, the activation or cotangent rows.

Faults: a rank that raises prints one line naming its rank and tick and exits non-zero;
``torch.multiprocessing.spawn`` then ends the other ranks. Every wait is bounded by
``timeout_s``. Use :func:`run_torch_distributed` (spawns the K processes itself).
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import time
import traceback
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from backlink.reference.distributed import NO_BATCH, end_tick
from backlink.reference.pipeline import OwnTerm, PipelinedRunner, check_problem, summed_terms, update_event
from backlink.spec import INPUT, Batch, Problem, SpecError, UpdateEvent, check_labels, module_bounds
from backlink.spec.pipeline import drain_ticks, link_param_ids, module_param_ids

from .ops import apply_op, image_format, to_internal_dense
from .optim import step_

__all__ = ["TorchStage", "TorchPipelinedRunner", "run_torch_distributed"]

TAG_FORWARD, TAG_LINK = 10, 20


class TorchStage:
    """Module ``k`` (1-based) on torch: parameters, buffers, SGD state, stash of tail graphs."""

    def __init__(self, problem: Problem, k: int, params: Mapping, buffers: Mapping, xp=torch):
        g, part, method = problem.graph, problem.partition, problem.method
        bounds = module_bounds(len(g.units), part, method)
        self.problem, self.k, self.K = problem, k, len(bounds)
        a, b = bounds[k - 1]
        units = g.units[a:b]
        self.head = part.heads[k - 1] if k < self.K else None
        self.input = INPUT if a == 0 else g.units[a - 1].output
        self.output = units[-1].output
        weights = (1.0,) if method.kind == "bp" else (method.loss_weights or (1.0,) * self.K)
        self.weight, self.beta = float(weights[k - 1]), float(method.beta)
        links = link_param_ids(problem)
        self.param_ids, self.link_ids = module_param_ids(problem)[k - 1], links[k - 1]
        self.sends_link = k > 1 and bool(links[k - 2])
        n_tail = b - max(a, b - method.P) if self.link_ids else 0
        self.before, self.tail = units[:len(units) - n_tail], units[len(units) - n_tail:]
        made = {op.out for u in self.tail for op in u.ops}
        self.tail_reads = sorted({v for u in self.tail for op in u.ops for v in op.inputs if v not in made})
        self.tail_params = [p.id for u in self.tail for p in u.params]
        dtype = getattr(torch, problem.dtype)
        own = (*units, *([self.head] if self.head else ()))
        self.params = {p: torch.tensor(np.asarray(params[p]), dtype=dtype) for p in self.param_ids}
        self.buffers = {s.id: torch.tensor(np.asarray(buffers[s.id]), dtype=dtype) for u in own for s in u.buffers}
        self.decay = frozenset(s.id for u in own for s in u.params if s.decay)
        self.state: dict = {}
        self.updates = 0
        self.stash: dict[int, tuple] = {}
        self.last_grads: dict = {}

    @staticmethod
    def _run(units, values, params, buffers):
        for u in units:
            for op in u.ops:
                apply_op(op, values, params, buffers)

    def own_term(self, batch: int, h: torch.Tensor, y: torch.Tensor) -> OwnTerm:
        """Forward (BL-4.2.2), stash the tail graph, back-propagate w_k L_k."""
        live = {p: v.detach().requires_grad_() for p, v in self.params.items()}  # shares storage
        h_in = h.detach().requires_grad_(self.sends_link)
        values = {self.input: h_in}
        self._run(self.before, values, live, self.buffers)
        if self.tail:
            leaves = {v: values[v].detach().requires_grad_() for v in self.tail_reads}
            snap = {p: self.params[p].detach().clone().requires_grad_() for p in self.tail_params}
            tail_values = dict(leaves)
            self._run(self.tail, tail_values, {**live, **snap}, self.buffers)
            out = tail_values[self.output]
        else:
            out = values[self.output]
        grads: dict = {}
        if self.head:
            out_leaf = out.detach().requires_grad_()
            head_values = {self.output: out_leaf}
            self._run([self.head], head_values, live, self.buffers)
            loss = F.cross_entropy(head_values[self.head.output], y)
            head_ids = [p.id for p in self.head.params]
            d = torch.autograd.grad(self.weight * loss, [live[p] for p in head_ids] + [out_leaf])
            grads.update(zip(head_ids, d[:-1]))
            root, seed = out, d[-1]
        else:
            loss = F.cross_entropy(out, y)
            root, seed = self.weight * loss, None
        cot = None
        if self.tail:
            d = torch.autograd.grad(root, [snap[p] for p in self.tail_params] + list(leaves.values()),
                                    seed, retain_graph=True, allow_unused=True)  # kept for the link
            grads.update((p, g) for p, g in zip(self.tail_params, d) if g is not None)
            self.stash[batch] = (out, snap)
            read_cots = dict(zip(leaves, d[len(self.tail_params):]))
            direct = read_cots.pop(self.input, None)  # the tail may read the module input itself
            cot = direct if self.sends_link else None
            pairs = [(values[v], g) for v, g in read_cots.items() if g is not None]
        else:
            pairs = [(root, seed)]
        before_ids = [p.id for u in self.before for p in u.params]
        inputs = [live[p] for p in before_ids] + ([h_in] if self.sends_link else [])
        if pairs and inputs:
            outs, seeds = zip(*pairs)
            d = torch.autograd.grad(outs, inputs, None if seeds == (None,) else seeds, allow_unused=True)
            grads.update((p, g) for p, g in zip(before_ids, d) if g is not None)
            if self.sends_link and d[-1] is not None:
                cot = d[-1] if cot is None else cot + d[-1]
        output = out.detach() if self.k < self.K else None
        return OwnTerm(batch, float(loss.detach()), grads, output, cot.detach() if cot is not None else None)

    def link_term(self, batch: int, cotangent: torch.Tensor) -> dict:
        """BL-4.2.3: beta * cotangent back through the tail graph stored for ``batch``."""
        out, snap = self.stash.pop(batch)
        d = torch.autograd.grad(out, [snap[p] for p in self.tail_params], self.beta * cotangent,
                                allow_unused=True)
        return {p: g for p, g in zip(self.tail_params, d) if g is not None}

    def update(self, tick: int, own: OwnTerm | None, link) -> UpdateEvent | None:
        if own is None and link is None:
            return None
        grads = summed_terms(own, link)
        step_(self.params, grads, self.state, self.problem.optimizer, self.updates, self.decay)
        self.updates += 1
        self.last_grads = grads
        return update_event(tick, self.k, self.param_ids, own, link, grads)


# ------------------------------------------------------------------ transport

def _internal_shape(spec_shape) -> tuple[int, ...]:
    return (spec_shape[2], spec_shape[0], spec_shape[1]) if len(spec_shape) == 3 else tuple(spec_shape)


class TorchChannel:
    """One direction between neighbouring ranks, preallocated; every wait bounded."""

    def __init__(self, peer, tag, n_max, spec_shape, dtype, labels, timeout_s):
        self.peer, self.tag, self.timeout = peer, tag, datetime.timedelta(seconds=timeout_s)
        self.header = torch.zeros(2 + (n_max if labels else 0), dtype=torch.int64)
        data = torch.zeros((n_max, *_internal_shape(spec_shape)), dtype=dtype)
        # images travel in the backend's memory format (a row slice stays dense in it), so
        # neither end reorders them; both ends choose the same format for the same dtype
        self.data = data.contiguous(memory_format=image_format(data)) if data.dim() == 4 else data
        self.works: list = []

    def _wait(self):
        for w in self.works:
            w.wait(self.timeout)
        self.works = []

    def send(self, batch, array=None, y=None):
        self._wait()
        n = 0 if array is None else len(array)
        self.header[:2] = torch.tensor([batch, n])
        if y is not None:
            self.header[2:2 + n] = y
        self.works = [dist.isend(self.header, self.peer, tag=self.tag)]
        if n:
            self.data[:n].copy_(array)
            self.works.append(dist.isend(self.data[:n], self.peer, tag=self.tag + 1))

    def post(self):
        self.works = [dist.irecv(self.header, self.peer, tag=self.tag)]

    def receive(self, repost):
        self._wait()
        batch, n = int(self.header[0]), int(self.header[1])
        msg = None
        if batch != NO_BATCH:
            y = self.header[2:2 + n].clone()
            dist.irecv(self.data[:n], self.peer, tag=self.tag + 1).wait(self.timeout)
            msg = (batch, self.data[:n].clone(), y)
        if repost:
            self.post()
        return msg

    def flush(self):
        self._wait()


# ------------------------------------------------------------------ one process, every stage

def _to_torch(batch: Batch, dtype, input_shape=None, num_classes=None) -> tuple:
    x = np.asarray(batch.x)
    if input_shape is not None and x.shape[1:] != tuple(input_shape):
        raise SpecError(f"field 'x' has per-sample shape {x.shape[1:]}, the graph needs {tuple(input_shape)}")
    if not np.isfinite(x).all():
        raise FloatingPointError("input batch contains NaN or inf; check the input data (field 'x')")
    if num_classes is not None:
        check_labels(batch.y, x.shape[0], num_classes)
    x = to_internal_dense(torch.tensor(x, dtype=dtype))
    return int(batch.id), x, torch.as_tensor(np.asarray(batch.y), dtype=torch.long)


class TorchPipelinedRunner(PipelinedRunner):
    """Every :class:`TorchStage` in one process, driven by the reference's tick loop
    (a Runner of the protocol: ``step(batch)`` is one tick, ``step(None)`` a bubble)."""

    stage_class = TorchStage

    def __init__(self, problem: Problem, params: Mapping, buffers: Mapping):
        self.dtype = getattr(torch, problem.dtype)
        super().__init__(problem, params, buffers, xp=torch)

    def _admit(self, batch: Batch | None):
        return None if batch is None else _to_torch(batch, self.dtype, self.problem.graph.input_shape,
                                                         self.problem.graph.num_classes)

    @staticmethod
    def _host(t):
        return t.detach().cpu().numpy().copy()


# ------------------------------------------------------------------ one process per module

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tick_loop(stage: TorchStage, data, n_max: int, timeout_s: float, fail_at) -> dict:
    rank, K, problem = stage.k - 1, stage.K, stage.problem
    shapes, dtype = problem.graph.shapes, getattr(torch, problem.dtype)
    T = len(data) + drain_ticks(problem)
    fwd_in = TorchChannel(rank - 1, TAG_FORWARD, n_max, shapes[stage.input], dtype, True, timeout_s) if rank else None
    fwd_out = TorchChannel(rank + 1, TAG_FORWARD, n_max, shapes[stage.output], dtype, True, timeout_s) \
        if rank < K - 1 else None
    link_in = TorchChannel(rank + 1, TAG_LINK, n_max, shapes[stage.output], dtype, False, timeout_s) \
        if stage.link_ids else None
    link_out = TorchChannel(rank - 1, TAG_LINK, n_max, shapes[stage.input], dtype, False, timeout_s) \
        if stage.sends_link else None
    for ch in (fwd_in, link_in):
        if ch and T > 1:
            ch.post()
    events, losses = [], {}
    for t in range(T):
        stage.tick = t
        if fail_at is not None and tuple(fail_at[:2]) == (rank, t):  # test hook
            if len(fail_at) > 2 and fail_at[2] == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected fault (fail_at={tuple(fail_at)})")
        more = t + 1 < T
        if rank == 0:
            msg = _to_torch(data[t], dtype) if t < len(data) else None
        else:
            msg = fwd_in.receive(repost=more) if t else None
        link = link_in.receive(repost=more) if (link_in and t) else None
        own = stage.own_term(*msg) if msg else None
        if own:
            losses[t] = own.loss
        if fwd_out and more:
            fwd_out.send(*((own.batch, own.output, msg[2]) if own else (NO_BATCH,)))
        end_tick(stage, t, own, link, link_out if more else None, events)
    for ch in (fwd_out, link_out):
        if ch:
            ch.flush()
    return {"events": events, "losses": losses}


def _rank_main(rank, K, port, problem, data, params, buffers, timeout_s, fail_at, queue):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // K))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=K,
                            timeout=datetime.timedelta(seconds=timeout_s))
    stage = begun = None
    try:
        stage = TorchStage(problem, rank + 1, params, buffers)
        del params, buffers  # this rank keeps only its module's values
        n_max = max((len(b.y) for b in data), default=1)
        begun = time.monotonic()
        mine = _tick_loop(stage, data, n_max, timeout_s, fail_at)
        host = lambda d: {k: v.detach().cpu().numpy().copy() for k, v in d.items()}  # noqa: E731
        queue.put({"k": rank + 1, "params": host(stage.params), "buffers": host(stage.buffers), **mine})
    except BaseException as err:
        tick = getattr(stage, "tick", None)
        at = "" if tick is None else f" at tick {tick}, {time.monotonic() - begun:.1f} s into its ticks"
        sys.stderr.write(f"backlink torch distributed: rank {rank} (module {rank + 1}) failed{at}: "
                         f"{type(err).__name__}: {err}; stopping every rank\n{traceback.format_exc()}")
        sys.stderr.flush()
        raise
    dist.destroy_process_group()


def run_torch_distributed(problem: Problem, data: Sequence[Batch], params: Mapping | None = None,
                          buffers: Mapping | None = None, *, seed: int = 0, timeout_s: float = 60.0,
                          fail_at=None) -> dict:
    """Train ``problem`` (schedule 'pipelined') on ``data`` with one process per module (gloo).

    Spawns K processes and returns the gathered result: ``events`` (by tick, then module),
    ``losses`` (module -> tick -> loss), ``params``, ``buffers``. A failing rank raises
    ``torch.multiprocessing.ProcessRaisedException`` here after every rank has stopped.
    """
    import torch.multiprocessing as mp

    if params is None:
        from backlink.reference.models import init_params

        params, buffers = init_params(problem.graph, problem.partition, seed, problem.dtype)
    check_problem(problem, params)
    K = len(module_param_ids(problem))
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_rank_main, args=(K, _free_port(), problem, list(data), dict(params), dict(buffers), timeout_s,
                               fail_at, queue), nprocs=K, join=True)
    parts = sorted((queue.get() for _ in range(K)), key=lambda p: p["k"])
    return {"events": sorted((e for p in parts for e in p["events"]), key=lambda e: (e.time, e.module)),
            "losses": {p["k"]: p["losses"] for p in parts},
            "params": {k: v for p in parts for k, v in p["params"].items()},
            "buffers": {k: v for p in parts for k, v in p["buffers"].items()}}
