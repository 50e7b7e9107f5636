"""BackLink for plain ``torch.nn`` networks: no spec graph needed.

A network is a chain of units (``nn.Sequential`` or a list of modules, each mapping one
tensor to one tensor). Cut it into K modules, give every module but the last an
auxiliary head, and :meth:`BackLink.backward_step` leaves on every parameter the
``.grad`` of BL-3.7 -- BP, greedy local training, or BackLink(P, beta) -- so that any
``torch.optim`` optimizer can take the step::

    net = BackLink(units, K=4, link_length=1, example_input=x0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt.zero_grad()
    losses = net.backward_step(x, y)     # {1: L_1, ..., K: L_K}
    opt.step()

Like ``loss.backward()``, gradients are added to ``.grad``; modules run in whatever
train/eval mode they are in, and batch-norm statistics are updated once per step.
A unit may start with an in-place op (``nn.ReLU(inplace=True)``) as in plain PyTorch.
Parameters belong to one unit or head each (BL-2.1.5): shared ones are refused.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backlink.spec import Method, Partition, module_bounds, tail_bounds

from .segments import SegmentRecord, backprop_loss, make_plan

__all__ = ["BackLink", "LinearHead", "even_cuts"]

METHODS = ("bp", "greedy", "backlink")
HeadFactory = Callable[[int, torch.Tensor], nn.Module]


class LinearHead(nn.Module):
    """Global average pool over every axis after the channel axis (if any), then a linear layer."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.flatten(2).mean(dim=2) if h.dim() > 2 else h)


def even_cuts(n_units: int, K: int) -> tuple[int, ...]:
    """K modules of n_units // K or n_units // K + 1 units each."""
    return tuple(i * n_units // K for i in range(1, K))


def _units(units) -> list[nn.Module]:
    items = list(units.children()) if isinstance(units, nn.Sequential) else list(units)
    for i, u in enumerate(items):
        if not isinstance(u, nn.Module):
            raise ValueError(f"field 'units[{i}]' is a {type(u).__name__}; every unit must be an nn.Module")
    if not items:
        raise ValueError("field 'units' is empty; give at least one nn.Module")
    return items


def _resolve_cuts(cuts, K, n: int, method: str) -> tuple[int, ...]:
    if cuts is None and K is None:
        if method != "bp":
            raise ValueError(f"method {method!r} needs modules: give field 'cuts' (unit indices "
                             f"0 < c < {n}) or field 'K' (1 <= K <= {n})")
        return ()
    if cuts is None:
        if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= n:
            raise ValueError(f"field 'K' = {K!r}: the network has {n} units, so 1 <= K <= {n}")
        return even_cuts(n, K)
    cuts = tuple(cuts)
    for i, c in enumerate(cuts):
        if not isinstance(c, int) or isinstance(c, bool) or not 0 < c < n:
            raise ValueError(f"field 'cuts[{i}]' = {c!r}: cut points are integers 0 < c < {n} "
                             f"(the number of units)")
    if list(cuts) != sorted(set(cuts)):
        raise ValueError(f"field 'cuts' = {list(cuts)} must be strictly increasing without "
                         f"duplicates; did you mean {sorted(set(cuts))}?")
    if K is not None and K != len(cuts) + 1:
        raise ValueError(f"fields 'cuts' and 'K' disagree: {len(cuts)} cuts make "
                         f"{len(cuts) + 1} modules, K = {K!r}; give only one of them")
    return cuts


def _finite_nonnegative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _check_method(method, link_length, beta, loss_weights, K, bounds, allow_cross_module) -> None:
    if not isinstance(link_length, int) or isinstance(link_length, bool) or link_length < 0:
        raise ValueError(f"field 'link_length' = {link_length!r}; it must be an integer >= 0 (0 is greedy)")
    if not _finite_nonnegative(beta):
        raise ValueError(f"field 'beta' = {beta!r}; it must be a finite number >= 0 (0: no link terms)")
    if loss_weights is not None:
        if isinstance(loss_weights, (str, bytes)) or not hasattr(loss_weights, "__len__"):
            raise ValueError(f"field 'loss_weights' = {loss_weights!r}; give a sequence of K = {K} numbers")
        if len(loss_weights) != K:
            raise ValueError(f"field 'loss_weights' has {len(loss_weights)} entries; K = {K} needs {K}")
        bad = [i for i, w in enumerate(loss_weights) if not _finite_nonnegative(w)]
        if bad:
            raise ValueError(f"field 'loss_weights[{bad[0]}]' = {loss_weights[bad[0]]!r}; loss weights "
                             f"must be finite numbers >= 0 (BL-3.3)")
    if method == "backlink" and K > 1 and not allow_cross_module:
        sizes = [b - a for a, b in bounds[:-1]]
        if link_length > min(sizes):
            k = sizes.index(min(sizes)) + 1
            raise ValueError(f"field 'link_length' = {link_length} is longer than module {k}, which has "
                             f"{sizes[k - 1]} units; use link_length <= {min(sizes)}, or set "
                             f"allow_cross_module=True to let tails reach earlier modules (BL-3.5)")


def _warn_ignored(method: str, given: dict) -> None:
    """BL-3.3: BP ignores P, beta and the loss weights; greedy ignores P and beta. Say so."""
    ignored = {"bp": ("link_length", "beta", "loss_weights", "allow_cross_module"),
               "greedy": ("link_length", "beta", "allow_cross_module")}.get(method, ())
    for name in ignored:
        value = given[name]
        if value is None or (name == "link_length" and value == 0) or (name == "allow_cross_module" and not value):
            continue
        warnings.warn(f"field {name!r} = {value!r} is ignored by method {method!r} (BL-3.3); "
                      f"drop it, or use method='backlink'", UserWarning, stacklevel=3)


def _check_shared(owners: dict, module: nn.Module, name: str) -> None:
    """BL-2.1.5: a parameter belongs to exactly one unit or head; ``owners`` maps id -> name."""
    for pname, p in module.named_parameters():
        other = owners.setdefault(id(p), f"{name} ({pname})")
        if not other.startswith(f"{name} "):
            raise ValueError(f"{name} shares parameter {pname!r} with {other}: every parameter must "
                             f"belong to one unit or head (BL-2.1.5), or its gradient would be summed "
                             f"from two reach sets; give each its own copy (copy.deepcopy)")


def _tensor_out(h, i: int) -> torch.Tensor:
    if not isinstance(h, torch.Tensor):
        raise ValueError(f"field 'units[{i}]' returned a {type(h).__name__}, not a tensor: every unit maps one "
                         f"tensor to one tensor; wrap it so that it returns the activation the next unit reads")
    return h


def _check_labels(y, n: int, classes: int | None) -> None:
    """BL-3.2.2: y holds n integer class indices in [0, classes)."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"field 'y' is a {type(y).__name__}; give a torch tensor of class indices")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"field 'y' has dtype {y.dtype}; labels must be integer class indices "
                         f"(not one-hot rows or probabilities)")
    if tuple(y.shape) != (n,):
        raise ValueError(f"field 'y' has shape {tuple(y.shape)}; the batch has {n} rows, so y needs shape ({n},)")
    if classes is not None and n:
        lo, hi = (int(v) for v in torch.aminmax(y))
        if lo < 0 or hi >= classes:
            raise ValueError(f"field 'y' holds labels {lo}..{hi}; the logits have {classes} classes, "
                             f"so labels must lie in 0..{classes - 1}")


class BackLink(nn.Module):
    """A unit chain cut into modules, trained by ``method`` ('bp', 'greedy' or 'backlink').

    ``cuts``: unit indices where modules end (module k = units[c_{k-1}:c_k]); or ``K``
    for K near-equal modules. ``head_factory(k, h_k)`` builds head k (1-based) from an
    example module output; ``"linear"`` is global-average-pool + linear. Heads are
    built from ``example_input`` (or the first batch, or :meth:`build`); build them
    before handing :meth:`parameters` to an optimizer. ``link_length`` is P (units of
    module k-1 that loss k reaches; default 1), ``beta`` its weight (default 1; 0 runs no
    tail pass), ``loss_weights`` w_1..w_K; ``allow_cross_module`` lets P exceed a module
    (BL-3.5: the tail then spans earlier modules, never their heads). Arguments the
    method ignores (P and beta under greedy, those and the loss weights under BP) warn.
    """

    def __init__(self, units: Sequence[nn.Module] | nn.Sequential, *, cuts=None, K=None,
                 head_factory: HeadFactory | str = "linear", link_length: int | None = None,
                 beta: float | None = None, method: str = "backlink",
                 loss_weights: Sequence[float] | None = None, allow_cross_module: bool = False,
                 example_input: torch.Tensor | None = None):
        super().__init__()
        self.trunk = nn.ModuleList(_units(units))
        n = len(self.trunk)
        if method not in METHODS:
            raise ValueError(f"field 'method' is {method!r}; allowed: {', '.join(METHODS)}")
        _warn_ignored(method, dict(link_length=link_length, beta=beta, loss_weights=loss_weights,
                                   allow_cross_module=allow_cross_module))
        link_length = 1 if link_length is None else link_length
        beta = 1.0 if beta is None else beta
        owners: dict = {}
        for i, u in enumerate(self.trunk):
            _check_shared(owners, u, f"units[{i}]")
        self._owners = owners
        self.cuts = _resolve_cuts(cuts, K, n, method)
        bounds = module_bounds(n, Partition(self.cuts), Method(kind=method, link_length=0))
        if method == "bp":
            loss_weights = None  # BP has the one loss L_K, weight 1 (BL-3.3)
        _check_method(method, link_length, beta, loss_weights, len(bounds), bounds, allow_cross_module)
        # beta = 0 makes every tail term zero: plan no tail pass at all (and retain no tail graph)
        linked = link_length if (method == "backlink" and beta != 0) else 0
        spec_method = Method(kind=method, link_length=linked, beta=beta, allow_cross_module=allow_cross_module)
        self.bounds = module_bounds(n, Partition(self.cuts), spec_method)
        self.K = len(self.bounds)
        if not (head_factory == "linear" or callable(head_factory)):
            raise ValueError(f"field 'head_factory' is {head_factory!r}; allowed: 'linear' or a "
                             f"callable (k, example_activation) -> nn.Module")
        self.method, self.link_length, self.beta = method, link_length, float(beta)
        self.allow_cross_module = allow_cross_module
        self.loss_weights = tuple(float(w) for w in (loss_weights or (1.0,) * self.K))
        self.head_factory = head_factory
        tails = [tail_bounds(self.bounds, k, spec_method) for k in range(self.K)]
        self.plan = make_plan(n, self.bounds, tails, self.beta)
        self.heads = nn.ModuleList()
        self._inplace_input: set[int] = set()  # units that modify their input in place
        self.num_classes: int | None = None
        self.built = self.K == 1
        if example_input is not None:
            self.build(example_input)

    # ------------------------------------------------------------------ building heads

    @torch.no_grad()
    def build(self, example_input: torch.Tensor) -> "BackLink":
        """Create the heads from the module outputs on ``example_input`` (eval mode, no
        statistics updated) and check that every head and the trunk give 2-D logits."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            h, outs, inplace = example_input.clone(), [], set()
            for i, u in enumerate(self.trunk):
                version = h._version
                out = _tensor_out(u(h), i)
                if h._version != version:  # e.g. nn.ReLU(inplace=True) first: see _forward_segment
                    inplace.add(i)
                h = out
                outs.append(h)  # for shapes only: a later in-place unit may change its values
            if h.dim() != 2:
                raise ValueError(f"field 'units': the last unit must produce 2-D logits (batch, classes), "
                                 f"got shape {tuple(h.shape)}")
            classes = h.shape[1]
            heads = [self._make_head(k + 1, outs[b - 1], classes) for k, (_, b) in enumerate(self.bounds[:-1])]
        finally:
            for m, mode in modes:
                m.training = mode
        owners = dict(self._owners)
        for k, head in enumerate(heads, 1):
            _check_shared(owners, head, f"head {k}")
            head.train(self.training)
        self.heads = nn.ModuleList(heads)
        self._inplace_input, self.num_classes = inplace, classes
        self.built = True
        return self

    def _make_head(self, k: int, h: torch.Tensor, classes: int) -> nn.Module:
        if self.head_factory == "linear":
            if h.dim() < 2:
                raise ValueError(f"module {k} outputs shape {tuple(h.shape)}; head_factory 'linear' "
                                 f"needs (batch, channels, ...)")
            head = LinearHead(h.shape[1], classes)
        else:
            head = self.head_factory(k, h)
            if not isinstance(head, nn.Module):
                raise ValueError(f"field 'head_factory' returned a {type(head).__name__} for module {k}; "
                                 f"it must return an nn.Module")
        head = head.to(device=h.device, dtype=h.dtype)
        head.eval()
        out = head(h)
        if out.dim() != 2 or tuple(out.shape) != (h.shape[0], classes):
            raise ValueError(f"field 'head_factory': head {k} maps module {k}'s output {tuple(h.shape)} "
                             f"to {tuple(out.shape)}; it must give 2-D logits ({h.shape[0]}, {classes})")
        return head

    def parameters(self, recurse: bool = True):
        if not self.built:
            raise RuntimeError("the auxiliary heads are not built yet, so their parameters would miss "
                               "the optimizer: pass example_input=... to BackLink(...) or call "
                               ".build(x) before .parameters()")
        return super().parameters(recurse)

    # ------------------------------------------------------------------ forward / backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits (the trunk alone; heads are for training)."""
        for u in self.trunk:
            x = u(x)
        return x

    def backward_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
        """Forward ``x`` module by module and add each parameter's BL-3.7 gradient to its
        ``.grad``; return ``{k: L_k}`` (1-based, unweighted)."""
        if not self.built:
            self.build(x)
        _check_labels(y, x.shape[0], self.num_classes)
        orig, producer, records, losses = {0: x}, {0: -1}, {}, {}
        pending: dict = {}  # a linked tail's own-loss cotangents, until its link (segments.py)
        for k, (a, b) in enumerate(self.bounds):
            for j in self.plan.segments_of(a, b):
                records[j] = self._forward_segment(j, orig, producer)
            if k < self.K - 1:
                head = self.heads[k]
                logits, extra = head(orig[b]), _trainable(head.parameters())
            else:
                logits, extra = orig[b], []
            if logits.dim() != 2:
                raise ValueError(f"loss {k + 1}: logits have shape {tuple(logits.shape)}; need 2-D (batch, classes)")
            if self.num_classes is None:  # K = 1: never built, the range is checked here
                _check_labels(y, x.shape[0], logits.shape[1])
            loss = F.cross_entropy(logits, y)
            losses[k + 1] = float(loss.detach())
            backprop_loss(loss, self.loss_weights[k], self.plan.walks[k], records, producer, extra,
                          self.plan.retained_after(k), _accumulate_grad, self.plan.deferred, pending)
            del loss, logits
            for j in [j for j in records if self.plan.last_use[j] <= k]:
                del records[j]
            for v in [v for v in orig if v != b and producer[v] not in records]:
                del orig[v]
        return losses

    def _forward_segment(self, j: int, orig: dict, producer: dict) -> SegmentRecord:
        s, e = self.plan.segments[j]
        leaf = orig[s].detach().requires_grad_(s > 0)
        # A unit that writes its input in place (ReLU(inplace=True)) may not touch a leaf that
        # requires grad, nor the previous segment's output that leaf aliases: give it a copy,
        # as plain PyTorch would hand it a non-leaf.
        h = leaf.clone() if (s > 0 and s in self._inplace_input) else leaf
        for i, u in enumerate(self.trunk[s:e], s):
            h = _tensor_out(u(h), i)
        orig[e], producer[e] = h, j
        params = _trainable(p for u in self.trunk[s:e] for p in u.parameters())
        return SegmentRecord({s: leaf}, {e: h}, params)


def _trainable(params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    unique = dict.fromkeys(p for p in params if p.requires_grad)  # shared weights once
    return [(p, p) for p in unique]


def _accumulate_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g.detach().clone() if g.requires_grad else g
    else:
        p.grad.add_(g)
