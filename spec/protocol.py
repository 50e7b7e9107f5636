"""BL-6: the backend protocol that the conformance suite drives.

A backend is a few small members. The suite supplies the problem, the initial
parameters and buffers, and every batch: a backend never draws randomness.
All arrays crossing this boundary are host NumPy arrays keyed by spec ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from .config import Problem, UpdateEvent
from .graph import SpecError

__all__ = ["Capabilities", "Batch", "StepRecord", "Runner", "Backend", "check_labels", "check_values"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend claims to support; the rest of the suite is skipped with a reason."""

    dtypes: tuple[str, ...] = ("float64", "float32")
    devices: tuple[str, ...] = ("cpu",)
    methods: tuple[str, ...] = ("bp", "greedy", "backlink")
    schedules: tuple[str, ...] = ("synchronous",)
    primitives: bool = False  # implements Backend.primitive for BL-2.2 checks
    cross_module: bool = True


@dataclass(frozen=True)
class Batch:
    """One mini-batch: inputs NHWC (or N x D), integer labels, and its id."""

    x: np.ndarray
    y: np.ndarray
    id: int


def check_labels(y, n: int, num_classes: int) -> None:
    """BL-2.9.2: ``y`` must hold ``n`` integer labels in ``[0, num_classes)`` (1-D).

    Works on NumPy and CuPy arrays (reads ``dtype``, ``shape``, ``min``, ``max``): a
    float, boolean or one-hot ``y`` would otherwise be cast or broadcast silently, and
    a label out of range would index another class's logit (or raise deep inside).
    """
    if not hasattr(y, "dtype"):
        y = np.asarray(y)
    dtype, shape = np.dtype(y.dtype), tuple(y.shape)
    if dtype.kind not in "iu":
        raise SpecError(f"field 'y' has dtype {dtype}; labels must be integers (class indices "
                        f"0..{num_classes - 1}), not {'booleans' if dtype.kind == 'b' else 'floats or one-hot rows'}")
    if shape != (n,):
        raise SpecError(f"field 'y' has shape {shape}; the batch has {n} rows of x, so y needs shape ({n},)")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise SpecError(f"field 'y' holds labels {int(y.min())}..{int(y.max())}; the graph has "
                        f"{num_classes} classes, so labels must lie in 0..{num_classes - 1}")


def check_values(problem: Problem, params: Mapping, buffers: Mapping) -> None:
    """BL-6.1.2: one array of the declared shape per parameter and buffer id (trunk and heads)."""
    units = tuple(problem.graph.units) + tuple(problem.partition.heads)
    for field_name, given, specs in (("params", params, [a for u in units for a in u.params]),
                                     ("buffers", buffers, [a for u in units for a in u.buffers])):
        missing = [a.id for a in specs if a.id not in given]
        if missing:
            raise SpecError(f"field '{field_name}' lacks ids {missing[:5]}{'...' if len(missing) > 5 else ''}")
        for a in specs:
            shape = tuple(np.shape(given[a.id]))
            if shape != tuple(a.shape):
                raise SpecError(f"field '{field_name}[{a.id!r}]' has shape {shape}; the graph declares "
                                f"{tuple(a.shape)}")


@dataclass
class StepRecord:
    """What one ``Runner.step`` returns (BL-6.3).

    ``grads``: g(theta) of BL-3.7 for every parameter updated at this step, before the
    optimizer (synchronous) -- for the pipelined schedule, the summed terms per update.
    ``losses``: loss id -> value of L_k on the batch it was computed on.
    ``events``: the update events of this step/tick, in order.
    ``params`` and ``buffers``: every value after the step.
    """

    grads: dict[str, np.ndarray]
    losses: dict[int, float]
    events: list[UpdateEvent]
    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Runner(Protocol):
    def step(self, batch: Batch | None) -> StepRecord:
        """Run one synchronous step (or one pipeline tick) on ``batch``.

        Pipelined schedule (BL-4.2.1): one tick that feeds ``batch`` into module 1;
        ``None`` feeds nothing, and is how the suite drains the pipeline:
        ``spec.pipeline.drain_ticks(problem)`` calls of ``step(None)`` after the last batch.
        """


@runtime_checkable
class Backend(Protocol):
    name: str
    version: str
    capabilities: Capabilities

    def prepare(self, problem: Problem, params: Mapping[str, np.ndarray],
                buffers: Mapping[str, np.ndarray]) -> Runner:
        """Validate ``problem`` (raise ``SpecError`` for anything forbidden) and return a runner."""
