"""BL-4.3/4.4: optimizer and learning-rate schedules as pure functions."""
from __future__ import annotations

import math
from typing import Mapping

from backlink.spec import LR_SCHEDULES, LRSchedule, Optimizer, SpecError

__all__ = ["lr_at", "sgd", "adamw", "step", "init_state", "check_optimizer", "state_arrays", "load_state"]

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


def init_state(params: Mapping, opt: Optimizer | None = None) -> dict:
    """SGD: momentum buffers, all zero. AdamW: (m, v, n) per parameter, zeros and count 0."""
    if opt is not None and opt.kind == "adamw":
        return {k: (0 * v, 0 * v, 0) for k, v in params.items()}
    return {k: 0 * v for k, v in params.items()}


def step(params: Mapping, grads: Mapping, state: Mapping, opt: Optimizer, t: int,
         decay: frozenset[str]) -> tuple[dict, dict]:
    """One update with the optimizer ``opt.kind`` names (BL-4.3 SGD, BL-4.7 AdamW)."""
    return (adamw if opt.kind == "adamw" else sgd)(params, grads, state, opt, t, decay)


def adamw(params: Mapping, grads: Mapping, state: Mapping, opt: Optimizer, t: int,
          decay: frozenset[str]) -> tuple[dict, dict]:
    """BL-4.7: one AdamW step (Loshchilov and Hutter 2019, PyTorch's ``AdamW`` semantics).

    ``state[k]`` is (m, v, n): first and second moments and the number of updates the
    parameter has had. Bias correction uses n (this update included), so a parameter
    that gets no gradient at a step keeps its count; the learning rate uses ``t``.
    """
    lr, (b1, b2) = lr_at(opt.lr, opt.schedule, t), opt.betas
    params, state = dict(params), dict(state)
    for k, g in grads.items():
        m, v, n = state[k]
        m, v, n = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * (g * g), n + 1
        theta = params[k] * (1 - lr * opt.weight_decay) if k in decay else params[k]  # decoupled decay
        vhat = v / (1 - b2 ** n)
        params[k] = theta - lr * (m / (1 - b1 ** n)) / (vhat ** 0.5 + opt.eps)
        state[k] = (m, v, n)
    return params, state


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


def state_arrays(state: Mapping, opt: Optimizer) -> dict:
    """BL-6.5.2 entries of the optimizer state: {(kind, id): array}. SGD: 'momentum';
    AdamW: 'momentum' (m), 'adam_v' (v) and 'adam_n' (the update count, 0-d int64)."""
    if opt.kind != "adamw":
        return {("momentum", k): v for k, v in state.items()}
    out = {}
    for k, (m, v, n) in state.items():
        out.update({("momentum", k): m, ("adam_v", k): v, ("adam_n", k): n})
    return out


def load_state(entry, params: Mapping, opt: Optimizer) -> dict:
    """The inverse of :func:`state_arrays`: ``entry(kind, id, shape)`` reads one array."""
    if opt.kind != "adamw":
        return {k: entry("momentum", k, p.shape) for k, p in params.items()}
    return {k: (entry("momentum", k, p.shape), entry("adam_v", k, p.shape), int(entry("adam_n", k, ())))
            for k, p in params.items()}
