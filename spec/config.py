"""BL-4: optimizers, learning-rate schedules, update schedules and update events."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .graph import Graph, SpecError
from .partition import Method, Partition, validate

__all__ = ["OPTIMIZER_KINDS", "LRSchedule", "Optimizer", "UpdateEvent", "Problem", "SCHEDULES", "DTYPES"]

SCHEDULES = ("synchronous", "pipelined")
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class LRSchedule:
    """BL-4.4: lr(t) for step t = 0, 1, ...

    ``constant``: base. ``step``: base * gamma ** (t // step_size).
    ``cosine``: linear warmup base*(t+1)/warmup for t < warmup, then
    base * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2.
    """

    kind: Literal["constant", "step", "cosine"] = "constant"
    step_size: int = 1
    gamma: float = 0.1
    warmup: int = 0
    total: int = 1


OPTIMIZER_KINDS = ("sgd", "adamw")


@dataclass(frozen=True)
class Optimizer:
    """BL-4.3: SGD with momentum, Nesterov and L2 weight decay (PyTorch semantics), or
    BL-4.7: AdamW (``kind="adamw"``).

    SGD, for a parameter theta with gradient g at step t (PyTorch's SGD, dampening 0):
    ``d = g + weight_decay * theta`` if the parameter's ``decay`` flag is set, else ``g``;
    ``buf = momentum * buf + d`` (buf starts at 0); ``u = d + momentum * buf`` if
    ``nesterov`` else ``buf`` (``d`` when momentum is 0); ``theta -= lr(t) * u``.

    AdamW, with n the number of updates this parameter has had, this one included:
    ``m = b1 * m + (1 - b1) * g``; ``v = b2 * v + (1 - b2) * g * g`` (both start at 0);
    ``theta = theta * (1 - lr(t) * weight_decay)`` if the ``decay`` flag is set (decoupled:
    the decay never enters m or v); ``theta -= lr(t) * (m / (1 - b1**n)) /
    (sqrt(v / (1 - b2**n)) + eps)``. ``momentum`` and ``nesterov`` are SGD's and stay 0.
    """

    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: LRSchedule = field(default_factory=LRSchedule)
    kind: Literal["sgd", "adamw"] = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class UpdateEvent:
    """BL-4.6: one optimizer update of one module's parameters.

    ``time`` is the step (synchronous) or tick (pipelined); ``module`` is 1-based;
    ``params`` the updated parameter ids in graph order (head after trunk);
    ``losses`` the 1-based ids of the losses whose terms were summed;
    ``batches`` the batch ids those terms were computed on.
    """

    time: int
    module: int
    params: tuple[str, ...]
    losses: tuple[int, ...]
    batches: tuple[int, ...]


@dataclass(frozen=True)
class Problem:
    """Everything a backend is asked to compute (the suite builds it)."""

    graph: Graph
    partition: Partition
    method: Method
    optimizer: Optimizer = field(default_factory=Optimizer)
    schedule: Literal["synchronous", "pipelined"] = "synchronous"
    dtype: Literal["float64", "float32"] = "float64"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SpecError` naming the field if the problem is forbidden (BL-6.1.1).

        Backends call this in ``prepare``: a problem may have been built unchecked.
        """
        validate(self.graph, self.partition, self.method)
        if self.schedule not in SCHEDULES:
            raise SpecError(f"field 'schedule' is {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if self.dtype not in DTYPES:
            raise SpecError(f"field 'dtype' is {self.dtype!r}; allowed: {', '.join(DTYPES)}")
