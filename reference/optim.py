"""BL-4.3/4.4: optimizer and learning-rate schedules as pure functions."""
from __future__ import annotations

import math
from typing import Mapping

from backlink.spec import LR_SCHEDULES, LRSchedule, Optimizer, SpecError

__all__ = ["lr_at", "sgd", "init_state", "check_optimizer"]

SCHEDULE_KINDS = LR_SCHEDULES


def check_optimizer(opt: Optimizer) -> None:
    """BL-4.3.3 / BL-4.4: the spec's own validator (kept under this name for callers)."""
    if not isinstance(opt, Optimizer):
        raise SpecError(f"field 'optimizer' is {opt!r}; it must be a backlink.spec.Optimizer")
    opt.validate()


def lr_at(base: float, s: LRSchedule, t: int) -> float:
    """Learning rate at step ``t`` (0-based).

    >>> from backlink.spec import LRSchedule
    >>> from backlink.reference.optim import lr_at
    >>> [round(lr_at(0.1, LRSchedule("cosine", warmup=2, total=6), t), 4) for t in range(6)]
    [0.05, 0.1, 0.1, 0.0854, 0.05, 0.0146]
    """
    if s.kind == "constant":
        return base
    if s.kind == "step":
        return base * s.gamma ** (t // s.step_size)
    if t < s.warmup:
        return base * (t + 1) / s.warmup
    progress = min(t - s.warmup, s.total - s.warmup) / (s.total - s.warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def init_state(params: Mapping) -> dict:
    """Momentum buffers, all zero."""
    return {k: 0 * v for k, v in params.items()}


def sgd(params: Mapping, grads: Mapping, state: Mapping, opt: Optimizer, t: int,
        decay: frozenset[str]) -> tuple[dict, dict]:
    """One SGD step on the parameters in ``grads``; returns (new params, new state).

    ``decay``: ids of parameters that take weight decay (ArraySpec.decay).
    Parameters without a gradient are left as they are.
    """
    lr = lr_at(opt.lr, opt.schedule, t)
    params, state = dict(params), dict(state)
    for k, g in grads.items():
        d = g + opt.weight_decay * params[k] if (opt.weight_decay and k in decay) else g
        if opt.momentum:
            state[k] = opt.momentum * state[k] + d
            d = d + opt.momentum * state[k] if opt.nesterov else state[k]
        params[k] = params[k] - lr * d
    return params, state
