"""BL-4.3: SGD with momentum, Nesterov and weight decay on torch tensors, in place.

The same arithmetic, in the same order, as :func:`backlink.reference.optim.sgd` (no
``torch.optim``: its fused/foreach kernels may reorder operations). Learning-rate
schedules are the reference's own pure function.
"""
from __future__ import annotations

from typing import Mapping, MutableMapping

import torch

from backlink.reference.optim import lr_at
from backlink.spec import Optimizer

__all__ = ["sgd_"]


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
