"""BL-4.3 SGD (momentum, Nesterov, weight decay) and BL-4.7 AdamW on torch tensors, in place.

The same arithmetic, in the same order, as :func:`backlink.reference.optim.sgd` (no
``torch.optim``: its fused/foreach kernels may reorder operations). Learning-rate
schedules are the reference's own pure function.
"""
from __future__ import annotations

from typing import Mapping, MutableMapping

import torch

from backlink.reference.optim import lr_at
from backlink.spec import Optimizer

__all__ = ["sgd_", "adamw_", "step_"]


@torch.no_grad()
def sgd_(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
         state: MutableMapping[str, torch.Tensor], opt: Optimizer, t: int,
         decay: frozenset[str]) -> None:
    """Update ``params`` (those with a gradient) and momentum ``state`` in place at step ``t``."""
    lr = lr_at(opt.lr, opt.schedule, t)
    for k, g in grads.items():
        p = params[k]
        d = g + opt.weight_decay * p if (opt.weight_decay and k in decay) else g
        if opt.momentum:
            buf = state.get(k)
            # momentum * 0 + d == d: the reference's zero-initialised buffer, without the zeros
            buf = d.clone() if buf is None else buf.mul_(opt.momentum).add_(d)
            state[k] = buf
            d = d + opt.momentum * buf if opt.nesterov else buf
        p.sub_(lr * d)


def step_(params, grads, state, opt: Optimizer, t: int, decay: frozenset[str]) -> None:
    """One update in place with the optimizer ``opt.kind`` names."""
    (adamw_ if opt.kind == "adamw" else sgd_)(params, grads, state, opt, t, decay)


@torch.no_grad()
def adamw_(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
           state: MutableMapping[str, tuple], opt: Optimizer, t: int, decay: frozenset[str]) -> None:
    """BL-4.7, as :func:`backlink.reference.optim.adamw`: ``state[k]`` is (m, v, n)."""
    lr, (b1, b2) = lr_at(opt.lr, opt.schedule, t), opt.betas
    for k, g in grads.items():
        p = params[k]
        m, v, n = state.get(k) or (torch.zeros_like(p), torch.zeros_like(p), 0)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        n += 1
        state[k] = (m, v, n)
        if k in decay:
            p.mul_(1 - lr * opt.weight_decay)  # decoupled: never through m or v
        denom = (v / (1 - b2 ** n)).sqrt_().add_(opt.eps)
        p.sub_(lr * (m / (1 - b1 ** n)) / denom)
