"""BL-3.7: the gradients of BP, greedy local training and BackLink(P, beta), module by module.

For module k (1-based, units [c_{k-1}, c_k)), in order k = 1..K:

1. forward module k (and head k) on the module input h_{k-1};
2. seed dL_k/dlogits scaled by w_k and run backward through head k and module k:
   this gives w_k * dL_k/dtheta for the module's own parameters and, when module k
   has a tail, the cotangent of h_{k-1} (otherwise nobody reads it: not computed).
   In the units of the next module's tail, conv/linear weight VJPs are not taken:
   the ops' output cotangents are kept for step 3 of module k+1;
3. BackLink: scale that cotangent by beta and run backward through the stored tail,
   units [c_{k-1} - P, c_{k-1}): this gives beta * w_k * dL_k/dtheta there. The pass
   stops at the tail's inputs (BL-3.4), which is what makes it a true partial derivative
   restricted to the reach set, so no VJP is taken into them. An op with a kept
   cotangent takes one weight VJP on (kept + this pass's cotangent): the two terms of
   BL-3.7 in one product, exact because a VJP is linear in the cotangent;
4. free what no later loss needs: residuals of units before c_k - P, and every value
   except the activations later units read (kept cotangents stay until step 3 of k+1).

So live memory follows the method: BP holds everything, greedy one module and its
head, BackLink one module, its head, the P-unit tail of the previous module and its
kept cotangents. The order of k changes memory, never results (BL-4.1). ``meter`` sees the live
activation bytes (BL-7.2) after step 1 ("forward"), after head k's backward ("head"),
after each unit's backward ("unit:i") and each tail unit's ("link:i"), i the 0-based
unit index; :mod:`.memory` predicts the same numbers from the graph alone.
"""
from __future__ import annotations

from typing import Callable, Mapping, MutableMapping

from backlink.spec import (INPUT, Graph, Method, Partition, SpecError, check_labels, module_bounds,
                           tail_bounds, validate)

from . import engine
from .primitives import cross_entropy, cross_entropy_vjp
from .xp import array_namespace

__all__ = ["gradients", "predict", "check_finite"]

Meter = Callable[[str, int, int], None]  # (phase, 1-based module, live bytes)


def _measure(meter: Meter | None, phase: str, k: int, frozen: tuple, *live) -> None:
    """BL-7.2: report the bytes ``live`` holds, parameters and buffers (``frozen``) excluded."""
    if meter:
        meter(phase, k + 1, engine.live_bytes(*live, exclude=frozen))


def check_finite(name: str, a) -> None:
    xp = array_namespace(a)
    if not bool(xp.isfinite(a).all()):
        raise FloatingPointError(f"{name} contains NaN or inf; check the input data "
                                 f"(field 'x') and lower the learning rate if it happened in training")


def gradients(graph: Graph, partition: Partition, method: Method, params: Mapping,
              buffers: MutableMapping, x, y, *, meter: Meter | None = None,
              validated: bool = False) -> tuple[dict, dict[int, float]]:
    """Return (g, losses): g(theta) of BL-3.7 for every parameter, and L_k per 1-based k.

    ``buffers`` (batch-norm running statistics) are updated in place, once.
    """
    if not validated:
        validate(graph, partition, method)
    check_finite("input batch", x)
    if x.shape[1:] != tuple(graph.input_shape):
        raise SpecError(f"field 'x' has per-sample shape {x.shape[1:]}, graph {graph.name!r} "
                        f"needs {tuple(graph.input_shape)}")
    check_labels(y, x.shape[0], graph.num_classes)
    units = graph.units
    bounds = module_bounds(len(units), partition, method)
    K = len(bounds)
    weights = (1.0,) if method.kind == "bp" else (method.loss_weights or (1.0,) * K)
    values, grads, losses = {INPUT: x}, {}, {}
    saved: dict[int, dict] = {}  # unit index -> residuals, kept while a loss may need them
    kept: dict = {}  # op output -> own-loss cotangent whose weight VJP waits for the next link
    frozen = (params, buffers)  # not activations: excluded from the meter
    entering = lambda i: graph.crossing(i) if i > 0 else {INPUT}  # noqa: E731 (values read at/after unit i, made before)
    for k, (a, b) in enumerate(bounds):
        for i in range(a, b):
            saved[i] = engine.forward(units[i].ops, values, params, buffers)
        head = partition.heads[k] if k < K - 1 else None
        head_saved = engine.forward(head.ops, values, params, buffers) if head else {}
        logits_name = head.output if head else units[b - 1].output
        loss, ce = cross_entropy(values[logits_name], y)
        losses[k + 1] = float(loss)
        held = (values, saved, head_saved, ce[0], kept)  # what stays live until step 4 (BL-7.2)
        _measure(meter, "forward", k, frozen, *held)
        cot = {logits_name: cross_entropy_vjp(ce, weights[k])}
        if head:
            engine.backward(head.ops, head_saved, cot, grads)
        _measure(meter, "head", k, frozen, *held, cot)
        t0, t1 = tail_bounds(bounds, k, method)
        n0, n1 = tail_bounds(bounds, k + 1, method) if k + 1 < K else (0, 0)  # the next loss's tail
        stop = () if t1 > t0 else entering(a)  # the module input's cotangent feeds only a link
        for i in reversed(range(a, b)):
            engine.backward(units[i].ops, saved[i], cot, grads, stop=stop, defer=kept if n0 <= i < n1 else None)
            _measure(meter, f"unit:{i}", k, frozen, *held, cot)
        if t1 > t0:  # the BackLink: carry loss k's error P units into the previous module
            cot = {v: method.beta * g for v, g in cot.items()}
            for i in reversed(range(t0, t1)):
                engine.backward(units[i].ops, saved[i], cot, grads, stop=entering(t0), pending=kept)
                engine.flush(units[i].ops, saved[i], kept, grads)
                _measure(meter, f"link:{i}", k, frozen, *held, cot)
        del cot, head_saved, ce, held
        keep_from = b - method.P
        for i in [i for i in saved if i < keep_from]:
            del saved[i]
        needed = graph.crossing(b) if b < len(units) else set()
        for v in [v for v in values if v not in needed]:
            del values[v]
    return grads, losses


def predict(graph: Graph, params: Mapping, buffers: Mapping, x, partition: Partition | None = None):
    """Eval-mode logits of the network (and of every head when ``partition`` is given)."""
    values = {INPUT: x}
    frozen = dict(buffers)
    for u in graph.units:
        engine.forward(u.ops, values, params, frozen, training=False)
    out = [values[graph.units[-1].output]]
    for head in (partition.heads if partition else ()):
        engine.forward(head.ops, values, params, frozen, training=False)
        out.append(values[head.output])
    return out[0] if partition is None else out


def accuracy(logits, y) -> float:
    xp = array_namespace(logits)
    return float((xp.argmax(logits, axis=1) == y).mean())
