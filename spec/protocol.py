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

__all__ = ["Capabilities", "Batch", "StepRecord", "Runner", "Backend", "LeanRunner", "LEAN_METHODS",
           "lean_missing", "state_key", "check_labels", "check_values"]


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


#: BL-6.5: the optional lean path for training, by member name.
LEAN_METHODS = ("train_step", "state_dict", "load_state_dict", "predict")


def state_key(kind: str, id: str = "") -> str:
    """BL-6.5.2: the key of one entry of ``Runner.state_dict()``.

    ``kind`` is 'param', 'buffer' or 'momentum' (then ``id`` is a spec id: 'param/u1.conv.w'),
    or 'step' (the number of completed steps, a 0-d int64 array; no id). With AdamW
    (BL-4.7) 'momentum' holds the first moment m, 'adam_v' the second moment v and
    'adam_n' the parameter's update count n (a 0-d int64 array).
    """
    if kind == "step":
        return "step"
    if kind not in STATE_KINDS:
        raise ValueError(f"state kind {kind!r}; allowed: {', '.join(STATE_KINDS)}, step")
    return f"{kind}/{id}"


STATE_KINDS = ("param", "buffer", "momentum", "adam_v", "adam_n")


@runtime_checkable
class LeanRunner(Protocol):
    """BL-6.5: a runner with the lean path (optional): training without a StepRecord.

    Every member computes where the runner keeps its state (its device); only the
    losses, the state dict and the logits cross to the host.
    """

    def train_step(self, batch: Batch) -> dict[int, float]:
        """The same update as ``step(batch)`` (BL-6.5.1); returns only loss id -> value."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter, buffer, momentum buffer and the step counter
        (keys: :func:`state_key`)."""

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the runner's state by ``state`` (as ``state_dict()`` returns it): after it,
        the runner continues exactly as the runner that produced ``state`` would."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits of the network's last unit on inputs ``x`` (BL-2.5: batch-norm
        uses and does not change its running statistics); a host (N, classes) array."""


def lean_missing(runner: object) -> list[str]:
    """The lean-path members (BL-6.5) that ``runner`` lacks; empty when it has them all."""
    return [m for m in LEAN_METHODS if not callable(getattr(runner, m, None))]


@runtime_checkable
class Backend(Protocol):
    name: str
    version: str
    capabilities: Capabilities

    def prepare(self, problem: Problem, params: Mapping[str, np.ndarray],
                buffers: Mapping[str, np.ndarray]) -> Runner:
        """Validate ``problem`` (raise ``SpecError`` for anything forbidden) and return a runner."""
