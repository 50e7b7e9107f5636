"""What the suite feeds a backend and what it expects back.

The suite makes every initial array (``init_params`` with a drawn seed) and every
batch; backends never draw randomness. Expected values come from the reference
implementation run in float64 on the very same arrays (cast up from float32 where the
problem is float32), so they are independent of the backend under test.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from backlink.reference.backend import ReferenceBackend
from backlink.reference.models import init_params
from backlink.spec import Batch, Optimizer, Partition, Problem, StepRecord, reach_sets
from backlink.spec.pipeline import drain_ticks

__all__ = ["Case", "make_case", "run_backend", "run_reference", "unchecked_problem", "with_method",
           "reach_union", "all_param_ids", "describe_problem"]


def describe_problem(p: Problem) -> str:
    g, m, part = p.graph, p.method, p.partition
    head = f", heads {[h.name for h in part.heads]}" if part.heads else ""
    text = (f"graph {g.name!r} units {[u.name for u in g.units]}, cuts {list(part.cuts)}{head}; "
            f"method {m.kind}")
    if m.kind == "backlink":
        text += f" P={m.link_length} beta={m.beta}"
    if m.kind != "bp" and m.loss_weights is not None:
        text += f" loss_weights={m.loss_weights}"
    if m.allow_cross_module:
        text += " allow_cross_module"
    if p.optimizer != Optimizer():
        text += f"; {p.optimizer}"
    return text + f"; schedule {p.schedule}; dtype {p.dtype}"


@dataclass(frozen=True, repr=False)
class Case:
    """A problem with its initial arrays and batches, all made by the suite."""

    problem: Problem
    params: Mapping[str, np.ndarray]
    buffers: Mapping[str, np.ndarray]
    batches: tuple[Batch, ...]
    seed: int

    def describe(self) -> str:
        b = self.batches[0]
        return (f"{describe_problem(self.problem)}; {len(self.batches)} batch(es) of {len(b.y)}, "
                f"ids {[x.id for x in self.batches]}; seed {self.seed}")

    __repr__ = describe

    def _repr_pretty_(self, printer, cycle):  # how hypothesis prints a falsifying example
        printer.text(self.describe())


def make_case(problem: Problem, seed: int, batch_size: int = 4, steps: int = 1,
              first_id: int = 0) -> Case:
    """Initial arrays from ``init_params(seed)`` and ``steps`` batches from ``default_rng([seed, 1])``."""
    g = problem.graph
    params, buffers = init_params(g, problem.partition, seed, problem.dtype)
    rng = np.random.default_rng([seed, 1])
    batches = tuple(Batch(rng.standard_normal((batch_size, *g.input_shape)).astype(problem.dtype),
                          rng.integers(0, g.num_classes, batch_size), first_id + t)
                    for t in range(steps))
    return Case(problem, params, buffers, batches, seed)


def _feed(case: Case) -> list[Batch | None]:
    feed = list(case.batches)
    if case.problem.schedule == "pipelined":
        feed += [None] * drain_ticks(case.problem)
    return feed


def run_backend(backend, case: Case) -> list[StepRecord]:
    """Prepare ``backend`` on copies of the case's arrays and run every batch (and drain)."""
    runner = backend.prepare(case.problem, copy.deepcopy(dict(case.params)),
                             copy.deepcopy(dict(case.buffers)))
    return [runner.step(copy.deepcopy(b)) for b in _feed(case)]


def run_reference(case: Case) -> list[StepRecord]:
    """The expected records: the reference backend in float64 on the case's arrays."""
    problem = dataclasses.replace(case.problem, dtype="float64")
    up = lambda d: {k: np.array(v, dtype=np.float64) for k, v in d.items()}  # noqa: E731
    runner = ReferenceBackend().prepare(problem, up(case.params), up(case.buffers))
    records = []
    for b in _feed(case):
        records.append(runner.step(None if b is None else
                                   Batch(np.array(b.x, dtype=np.float64), np.array(b.y), b.id)))
    return records


def unchecked_problem(graph, partition=Partition(), method=None, optimizer=None,
                      schedule="synchronous", dtype="float64") -> Problem:
    """A Problem built without its own validation, to check that ``prepare`` validates."""
    from backlink.spec import Method

    p = object.__new__(Problem)
    fields = dict(graph=graph, partition=partition, method=method or Method(),
                  optimizer=optimizer or Optimizer(), schedule=schedule, dtype=dtype)
    for k, v in fields.items():
        object.__setattr__(p, k, v)
    return p


def with_method(case: Case, **changes) -> Case:
    problem = dataclasses.replace(case.problem, method=dataclasses.replace(case.problem.method, **changes))
    return dataclasses.replace(case, problem=problem)


def all_param_ids(problem: Problem) -> set[str]:
    units = problem.graph.units + tuple(problem.partition.heads)
    return {p.id for u in units for p in u.params}


def reach_union(problem: Problem) -> set[str]:
    return {p for r in reach_sets(problem.graph, problem.partition, problem.method) for p in r.own | r.tail}
