"""The synchronous schedule (BL-4.1) of a spec :class:`~backlink.spec.Problem` on torch.

Each step forwards module k's segments and head, back-propagates w_k * L_k along its
walk (:mod:`.segments`), frees what no later loss walks, and goes on with module k+1;
then one SGD update of every parameter that got a gradient. Batch-norm running
statistics are updated by the single forward of each unit (BL-2.5).
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from backlink.reference.backend import state_entry, synchronous_events
from backlink.reference.optim import check_optimizer, load_state, state_arrays
from backlink.spec import (INPUT, Batch, Problem, SpecError, StepRecord, check_labels, module_bounds,
                           state_key, tail_bounds, validate)

from .ops import apply_op, to_internal_dense, to_spec
from .optim import step_
from .segments import SegmentRecord, backprop_loss, make_plan

__all__ = ["TorchRunner", "host"]


def host(t: torch.Tensor) -> np.ndarray:
    """A NumPy copy (never a view: parameters and buffers change in place later), C-ordered
    whatever ``t``'s strides (a conv weight's gradient comes back permuted from OIHW)."""
    return t.detach().cpu().numpy().copy()


def _tensors(arrays: Mapping, specs, dtype, device, field: str, grad: bool) -> dict:
    """Load the suite's arrays, checking that every id is there with its declared shape."""
    missing = sorted({s.id for s in specs} - set(arrays))
    if missing:
        raise SpecError(f"field {field!r} lacks ids {missing[:5]}{'...' if len(missing) > 5 else ''}")
    out = {}
    for s in specs:
        a = np.asarray(arrays[s.id])
        if tuple(a.shape) != tuple(s.shape):
            raise SpecError(f"field '{field}[{s.id!r}]' has shape {a.shape}, the spec declares {s.shape}")
        out[s.id] = torch.tensor(a, dtype=dtype, device=device).requires_grad_(grad)
    return out


class TorchRunner:
    """One :class:`~backlink.spec.Problem` with its parameters, buffers and optimizer state."""

    def __init__(self, problem: Problem, params: Mapping, buffers: Mapping, device: str = "cpu"):
        g, part, method = problem.graph, problem.partition, problem.method
        validate(g, part, method)
        check_optimizer(problem.optimizer)
        self.problem, self.device = problem, torch.device(device)
        self.dtype = getattr(torch, problem.dtype)
        units = tuple(g.units) + tuple(part.heads)  # heads too for BP: the record lists them
        specs = [p for u in units for p in u.params]
        self.params = _tensors(params, specs, self.dtype, self.device, "params", True)
        self.buffers = _tensors(buffers, [b for u in units for b in u.buffers], self.dtype,
                                self.device, "buffers", False)
        self.decay = frozenset(p.id for p in specs if p.decay)
        self.state: dict[str, torch.Tensor] = {}
        self.t = 0
        self._prepare_plan()

    def _prepare_plan(self) -> None:
        g, part, method = self.problem.graph, self.problem.partition, self.problem.method
        n = len(g.units)
        self.bounds = module_bounds(n, part, method)
        K = len(self.bounds)
        self.weights = (1.0,) if method.kind == "bp" else (method.loss_weights or (1.0,) * K)
        tails = [tail_bounds(self.bounds, k, method) for k in range(K)]
        self.plan = make_plan(n, self.bounds, tails, method.beta)
        self.reads, self.keeps = [], []  # per segment: values read from before; values kept after
        for s, e in self.plan.segments:
            made = {op.out for u in g.units[s:e] for op in u.ops}
            read = {v for u in g.units[s:e] for op in u.ops for v in op.inputs if v not in made}
            keep = (g.crossing(e) if e < n else {g.units[-1].output}) & made
            self.reads.append(sorted(read))
            self.keeps.append(keep)
        self.crossing = [g.crossing(b) if b < n else set() for _, b in self.bounds]

    # ------------------------------------------------------------------ one step

    def step(self, batch: Batch) -> StepRecord:
        p = self.problem
        x, y = self._batch(batch)
        with self._exact_math():
            grads, losses = self.gradients(x, y)
            step_(self.params, grads, self.state, p.optimizer, self.t, self.decay)
        events = synchronous_events(p, self.t, batch.id)
        self.t += 1
        return StepRecord({k: host(v) for k, v in grads.items()}, losses, events,
                          {k: host(v) for k, v in self.params.items()},
                          {k: host(v) for k, v in self.buffers.items()})

    def _batch(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.problem.graph
        x = np.asarray(batch.x)
        if x.shape[1:] != tuple(g.input_shape):
            raise SpecError(f"field 'x' has per-sample shape {x.shape[1:]}, graph {g.name!r} "
                            f"needs {tuple(g.input_shape)}")
        if not np.isfinite(x).all():
            raise FloatingPointError("input batch contains NaN or inf; check the input data (field 'x')")
        check_labels(batch.y, x.shape[0], g.num_classes)
        xt = to_internal_dense(torch.tensor(x, dtype=self.dtype, device=self.device))
        return xt, torch.as_tensor(np.asarray(batch.y), dtype=torch.long, device=self.device)

    @contextlib.contextmanager
    def _exact_math(self):
        """No TF32 on CUDA: float32 results must stay within the spec's float32 tolerances."""
        if self.device.type != "cuda":
            yield
            return
        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                            allow_tf32=False):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, dict[int, float]]:
        """(g, losses) of BL-3.7; batch-norm buffers are updated in place, once."""
        g, part, plan = self.problem.graph, self.problem.partition, self.plan
        orig, producer, records = {INPUT: x}, {INPUT: -1}, {}
        grads: dict[str, torch.Tensor] = {}
        losses: dict[int, float] = {}
        pending: dict = {}  # a linked tail's own-loss cotangents, until its link (segments.py)

        def accumulate(pid, d):
            grads[pid] = grads[pid] + d if pid in grads else d

        K = len(self.bounds)
        for k, (a, b) in enumerate(self.bounds):
            for j in plan.segments_of(a, b):
                records[j] = self._forward_segment(j, orig, producer)
            extra = []
            if k < K - 1:
                head = part.heads[k]
                vals = {g.units[b - 1].output: orig[g.units[b - 1].output]}
                for op in head.ops:
                    apply_op(op, vals, self.params, self.buffers)
                logits = vals[head.output]
                extra = [(p.id, self.params[p.id]) for p in head.params]
            else:
                logits = orig[g.units[-1].output]
            loss = F.cross_entropy(logits, y)
            losses[k + 1] = float(loss.detach())
            backprop_loss(loss, self.weights[k], plan.walks[k], records, producer, extra,
                          plan.retained_after(k), accumulate, plan.deferred, pending)
            del loss, logits
            self._free(k, b, records, orig, producer)
        return grads, losses

    def _forward_segment(self, j: int, orig: dict, producer: dict) -> SegmentRecord:
        s, e = self.plan.segments[j]
        leaves = {v: orig[v].detach().requires_grad_(v != INPUT) for v in self.reads[j]}
        vals = dict(leaves)
        for i in range(s, e):
            self._run_unit(i, vals)
        outputs = {v: vals[v] for v in self.keeps[j]}
        orig.update(outputs)
        producer.update(dict.fromkeys(outputs, j))
        params = [(p.id, self.params[p.id]) for u in self.problem.graph.units[s:e] for p in u.params]
        return SegmentRecord(leaves, outputs, params)

    def _run_unit(self, i: int, vals: dict) -> None:
        """Forward unit ``i`` of the graph, adding its values to ``vals`` (training mode)."""
        for op in self.problem.graph.units[i].ops:
            apply_op(op, vals, self.params, self.buffers)

    def _free(self, k: int, b: int, records: dict, orig: dict, producer: dict) -> None:
        """Drop the graphs no later loss walks and values no later forward reads."""
        for j in [j for j in records if self.plan.last_use[j] <= k]:
            del records[j]
        needed = self.crossing[k]
        for v in [v for v in orig if v not in needed and producer[v] not in records]:
            del orig[v]

    # ------------------------------------------- BL-6.5 lean path: only losses leave the device

    def train_step(self, batch: Batch) -> dict[int, float]:
        """The update of :meth:`step`, returning only the losses (no host copies)."""
        x, y = self._batch(batch)
        with self._exact_math():
            grads, losses = self.gradients(x, y)
            step_(self.params, grads, self.state, self.problem.optimizer, self.t, self.decay)
        self.t += 1
        return losses

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits: batch norm reads its running statistics and leaves them."""
        xt = to_internal_dense(torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device))
        vals = {INPUT: xt}
        with self._exact_math():
            for unit in self.problem.graph.units:
                for op in unit.ops:
                    apply_op(op, vals, self.params, self.buffers, training=False)
        return host(to_spec(vals[self.problem.graph.units[-1].output]))

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {state_key("step"): np.asarray(self.t, dtype=np.int64)}
        out.update({state_key("param", k): host(v) for k, v in self.params.items()})
        out.update({state_key("buffer", k): host(v) for k, v in self.buffers.items()})
        zeros = {k: torch.zeros_like(v) for k, v in self.params.items()}
        adamw = self.problem.optimizer.kind == "adamw"  # state 0 until the first update (the reference's zeros)
        state = {k: self.state.get(k, (z, z, 0) if adamw else z) for k, z in zeros.items()}
        for (kind, k), v in state_arrays(state, self.problem.optimizer).items():
            out[state_key(kind, k)] = np.asarray(v, dtype=np.int64) if kind == "adam_n" else host(v)
        return out

    @torch.no_grad()
    def load_state_dict(self, state) -> None:
        for kind, d in (("param", self.params), ("buffer", self.buffers)):
            for k, v in d.items():
                v.copy_(torch.as_tensor(state_entry(state, kind, k, tuple(v.shape)), dtype=self.dtype))
        def entry(kind, k, shape):
            a = state_entry(state, kind, k, tuple(shape))
            return a if kind == "adam_n" else torch.as_tensor(a, dtype=self.dtype, device=self.device).clone()
        self.state.clear()
        self.state.update(load_state(entry, self.params, self.problem.optimizer))
        self.t = int(state_entry(state, "step", "", ()))
