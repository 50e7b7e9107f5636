"""BL-4: optimizers, learning-rate schedules, update schedules and update events."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Literal

from .graph import Graph, SpecError
from .partition import Method, Partition, validate

__all__ = ["OPTIMIZER_KINDS", "LRSchedule", "Optimizer", "UpdateEvent", "Problem", "validate_problem",
           "SCHEDULES", "DTYPES", "LR_SCHEDULES"]

SCHEDULES = ("synchronous", "pipelined")
DTYPES = ("float64", "float32")
LR_SCHEDULES = ("constant", "step", "cosine")


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class LRSchedule:
    """BL-4.4: the learning rate lr(t) at optimizer step t = 0, 1, ... for base rate ``base``.

    The formulas, one per line (each line is a Python expression that
    ``tests/test_spec_formulas.py`` evaluates against the reference's ``lr_at``; the
    LaTeX in spec/schedules.md states the same)::

        constant:                  base
        step:                      base * gamma ** (t // step_size)
        cosine, t < warmup:        base * (t + 1) / warmup
        cosine, t >= warmup:       base / 2 * (1 + cos(pi * min(t - warmup, total - warmup) / (total - warmup)))

    So the cosine schedule reaches 0 at t = total and stays at 0 after it (the
    ``min`` clamps; it does not rise again). Fields a kind does not use are ignored.
    Allowed values: ``kind`` in constant, step, cosine; ``step_size >= 1``;
    ``0 <= warmup < total`` (cosine). :meth:`validate` raises :class:`SpecError` naming
    ``optimizer.schedule.<field>`` otherwise (the problem's own ``schedule`` is the
    synchronous/pipelined choice, a different field).
    """

    kind: Literal["constant", "step", "cosine"] = "constant"
    step_size: int = 1
    gamma: float = 0.1
    warmup: int = 0
    total: int = 1

    def validate(self, where: str = "optimizer.schedule") -> None:
        """Raise :class:`SpecError` naming ``<where>.<field>`` if the schedule is forbidden (BL-4.4)."""
        if self.kind not in LR_SCHEDULES:
            raise SpecError(f"field '{where}.kind' is {self.kind!r}; allowed: {', '.join(LR_SCHEDULES)}")
        if self.kind == "step":
            if not _is_int(self.step_size) or self.step_size < 1:
                raise SpecError(f"field '{where}.step_size' is {self.step_size!r}; it must be an integer >= 1")
            if not _finite(self.gamma) or self.gamma < 0:
                raise SpecError(f"field '{where}.gamma' is {self.gamma!r}; it must be a finite number >= 0")
        if self.kind == "cosine" and not (_is_int(self.warmup) and _is_int(self.total)
                                          and 0 <= self.warmup < self.total):
            raise SpecError(f"fields '{where}.warmup' = {self.warmup!r}, '{where}.total' = {self.total!r}: "
                            f"need integers 0 <= warmup < total")


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

    Parameters without a gradient at the step are not touched (no decay either).

    ``schedule`` is the learning-rate schedule (BL-4.4), named ``optimizer.schedule`` in
    errors. Allowed values: ``lr``, ``momentum``, ``weight_decay`` finite and >= 0;
    ``nesterov`` needs ``momentum > 0``; AdamW (BL-4.7.3): ``betas`` two numbers in [0, 1),
    ``eps`` finite and > 0, ``momentum`` 0 and ``nesterov`` False. :meth:`validate` raises
    :class:`SpecError` naming ``optimizer.<field>`` otherwise.
    """

    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: LRSchedule = field(default_factory=LRSchedule)
    kind: Literal["sgd", "adamw"] = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def validate(self) -> None:
        """Raise :class:`SpecError` naming ``optimizer.<field>`` if forbidden (BL-4.3.3, BL-4.4, BL-4.7.3)."""
        self._validate_kind()
        for name in ("lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if not _finite(v) or v < 0:
                raise SpecError(f"field 'optimizer.{name}' is {v!r}; it must be a finite number >= 0")
        if self.nesterov not in (True, False):
            raise SpecError(f"field 'optimizer.nesterov' is {self.nesterov!r}; it must be True or False")
        if self.nesterov and self.momentum == 0:
            raise SpecError("field 'optimizer.nesterov' is True with momentum 0; Nesterov needs "
                            "optimizer.momentum > 0")
        if not isinstance(self.schedule, LRSchedule):
            raise SpecError(f"field 'optimizer.schedule' is {self.schedule!r}; it must be a "
                            f"backlink.spec.LRSchedule")
        self.schedule.validate()

    def _validate_kind(self) -> None:
        """BL-4.7.3: the optimizer kind and AdamW's own fields."""
        if self.kind not in OPTIMIZER_KINDS:
            raise SpecError(f"field 'optimizer.kind' is {self.kind!r}; allowed: {', '.join(OPTIMIZER_KINDS)}")
        if self.kind != "adamw":
            return
        if self.momentum or self.nesterov:
            raise SpecError("fields 'optimizer.momentum'/'optimizer.nesterov' are SGD's; AdamW's momentum is "
                            "'optimizer.betas': leave momentum 0 and nesterov False")
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(_finite(b) and 0 <= b < 1 for b in betas)):
            raise SpecError(f"field 'optimizer.betas' is {betas!r}; it must be two numbers in [0, 1)")
        if not _finite(self.eps) or self.eps <= 0:
            raise SpecError(f"field 'optimizer.eps' is {self.eps!r}; it must be a finite number > 0")


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

        Checks everything: graph, partition and method (:func:`validate`), the optimizer
        and its learning-rate schedule (:meth:`Optimizer.validate`), ``schedule`` and
        ``dtype``. Backends call this (or :func:`validate_problem`) in ``prepare``: the
        suite builds forbidden problems without running it.
        """
        validate(self.graph, self.partition, self.method)
        if not isinstance(self.optimizer, Optimizer):
            raise SpecError(f"field 'optimizer' is {self.optimizer!r}; it must be a backlink.spec.Optimizer")
        self.optimizer.validate()
        if self.schedule not in SCHEDULES:
            raise SpecError(f"field 'schedule' is {self.schedule!r}; allowed: {', '.join(SCHEDULES)} "
                            f"(the learning-rate schedule is optimizer.schedule)")
        if self.dtype not in DTYPES:
            raise SpecError(f"field 'dtype' is {self.dtype!r}; allowed: {', '.join(DTYPES)}")


def validate_problem(problem: Problem) -> None:
    """The whole-problem validator for backends: ``problem.validate()``, also for a problem
    built without ``Problem``'s own checks (BL-6.1.1). Raises :class:`SpecError` naming
    the field: ``cuts[1]``, ``link_length``, ``optimizer.lr``, ``optimizer.schedule.warmup``,
    ``schedule``, ``dtype``, ...
    """
    Problem.validate(problem)
