"""A plain, hand-written PyTorch peer for the benchmarks: CIFAR ResNet + BP, greedy, BackLink.

What a PyTorch user would write without this project: ``nn.Conv2d``/``nn.BatchNorm2d``
blocks (the same ResNet as ``backlink.reference.models.resnet``: option-B shortcuts,
linear heads = global average pool + ``nn.Linear``), cut into the same units and
modules, trained module by module with ``torch.optim.SGD``:

- BP: one loss, one ``backward``;
- greedy: each module's input is detached;
- BackLink(P): module k's input is not detached, but the last P units of module k-1
  read a detached copy of their input (``entry``), so loss k stops there (BL-3.4).
  Module k-1 first back-props its own loss through the tail (``retain_graph``) and on
  from ``entry``'s gradient; loss k later adds its link term to the tail's weights.

The gradients are BL-3.7's (beta = 1, unit loss weights); only the step time is used.
``channels_last=True`` is the layout PyTorch's CPU convolutions are fastest with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PlainResNet", "PlainStep"]


class Block(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = None
        if stride != 1 or cin != width:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def first(self, x):  # layer unit l1: conv1 + bn1 + relu (the block input rides along)
        return F.relu(self.bn1(self.conv1(x))), x

    def second(self, state):  # layer unit l2: conv2 + bn2 + shortcut + add + relu
        h, x = state
        return F.relu(self.bn2(self.conv2(h)) + (x if self.shortcut is None else self.shortcut(x)))

    def forward(self, x):
        return self.second(self.first(x))


class PlainResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2; ``units(granularity)`` lists callables, one per graph unit."""

    def __init__(self, depth: int = 32, num_classes: int = 10, widths=(16, 32, 64), in_channels: int = 3):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for s, width in enumerate(widths):
            for b in range(n):
                blocks.append(Block(cin, width, 2 if s > 0 and b == 0 else 1))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, num_classes)

    def classifier(self, x):
        return self.fc(x.mean(dim=(2, 3)))

    def units(self, granularity: str) -> list:
        per_block = [[b] if granularity == "block" else [b.first, b.second] for b in self.blocks]
        return [self.stem] + [u for us in per_block for u in us] + [self.classifier]


def _detached(state):
    """A leaf copy of a unit boundary (a tensor, or a tuple inside a block)."""
    if isinstance(state, tuple):
        return tuple(_detached(s) for s in state)
    return state.detach().requires_grad_()


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


class PlainStep:
    """One synchronous training step of ``kind`` ('bp', 'greedy', 'backlink') per call."""

    def __init__(self, kind: str, cuts, P: int = 1, depth: int = 32, granularity: str = "block",
                 widths=(16, 32, 64), channels_last: bool = True, lr: float = 0.1, momentum: float = 0.9):
        self.kind, self.P, self.channels_last = kind, P if kind == "backlink" else 0, channels_last
        self.net = PlainResNet(depth, widths=widths)
        self.units = self.net.units(granularity)
        bounds = [0, *cuts, len(self.units)]
        self.bounds = list(zip(bounds[:-1], bounds[1:]))
        widths_at = [self._width_after(c) for c in cuts]
        self.heads = nn.ModuleList(nn.Linear(w, 10) for w in widths_at)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        params = list(self.net.parameters()) + list(self.heads.parameters())
        self.opt = torch.optim.SGD(params, lr=lr, momentum=momentum)

    def _width_after(self, cut: int) -> int:
        x = torch.zeros(1, 3, 32, 32)
        with torch.no_grad():
            for u in self.units[:cut]:
                x = u(x)
        return x.shape[1]

    def _head(self, k, h):
        return self.heads[k](h.mean(dim=(2, 3)))

    def step(self, x_nhwc, y) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.backward(x_nhwc, y)
        self.opt.step()

    def backward(self, x_nhwc, y) -> None:
        """Accumulate BL-3.7's gradients into the parameters' ``.grad``."""
        x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)  # NHWC memory: already channels_last
        if not self.channels_last:
            x = x.contiguous()
        y = torch.from_numpy(y)
        h, K = x, len(self.bounds)
        for k, (a, b) in enumerate(self.bounds):
            if self.kind == "greedy" and k > 0:
                h = h.detach()
            split = b - self.P if self.kind == "backlink" and k < K - 1 else b  # the next loss's tail
            for i in range(a, split):
                h = self.units[i](h)
            before, entry = h, None
            if split < b:
                entry = _detached(h)
                h = entry
                for i in range(split, b):
                    h = self.units[i](h)
            loss = F.cross_entropy(self._head(k, h) if k < K - 1 else h, y)
            loss.backward(retain_graph=entry is not None)  # the tail's graph waits for loss k+1
            if entry is not None:  # own loss on through the rest of module k (if any)
                pairs = [(b, e.grad) for b, e in zip(_flat(before), _flat(entry)) if b.requires_grad]
                if pairs:
                    torch.autograd.backward(*zip(*pairs))
