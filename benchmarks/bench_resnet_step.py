"""ResNet forward+backward on the NumPy reference: step time, per-primitive time, and conv
throughput as a share of ``numpy.matmul`` peak measured in the same run.

    python benchmarks/bench_resnet_step.py [--depth 32] [--batch 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict

import numpy as np

from backlink.reference import primitives
from backlink.reference.backlink import gradients
from backlink.reference.models import build_model, init_params, make_partition
from backlink.spec import Method


def matmul_peak(n: int = 2048, dtype=np.float32, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul (the BLAS peak we compare against)."""
    a, b = np.ones((n, n), dtype), np.ones((n, n), dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def conv_flops(graph, batch: int) -> float:
    """Forward multiply-add FLOPs of every conv2d in the graph, times 3 (fwd, dx, dw)."""
    total = 0
    for u in graph.units:
        for op in u.ops:
            if op.prim == "conv2d":
                h, w, o = graph.shapes[op.out]
                k, cin = op.kw["kernel"], graph.shapes[op.inputs[0]][-1]
                total += 2 * h * w * o * k * k * cin
    return 3.0 * total * batch


def instrument():
    """Wrap every primitive's callables (forward, VJP and its halves) with a timer; returns the totals dict."""
    totals = defaultdict(float)

    def wrap(name, f, kind):
        if f is None:
            return None

        def timed(*a, **kw):
            t = time.perf_counter()
            out = f(*a, **kw)
            totals[(name, kind)] += time.perf_counter() - t
            return out
        return timed

    for name, p in list(primitives.PRIMS.items()):
        primitives.PRIMS[name] = dataclasses.replace(p, **{
            f.name: wrap(name, getattr(p, f.name), f.name) for f in dataclasses.fields(p) if f.name != "update"})
    return totals


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    graph = build_model(f"resnet{args.depth}", input_shape=(32, 32, 3), num_classes=10)
    part = make_partition(graph, (), head="linear")
    params, buffers = init_params(graph, part, seed=0, dtype="float32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    step = lambda: gradients(graph, part, Method("bp"), params, buffers, x, y)  # noqa: E731

    peak = matmul_peak()
    step()  # warm-up
    times = sorted(_timed(step) for _ in range(args.repeats))
    totals = instrument()
    step()
    conv_time = sum(t for (name, _), t in totals.items() if name == "conv2d")
    flops = conv_flops(graph, args.batch)

    print(f"ResNet-{args.depth}, batch {args.batch}, 3x32x32 float32, BP forward+backward, NumPy reference")
    print(f"numpy.matmul peak (2048^3 float32):        {peak:8.1f} GFLOP/s")
    print(f"step time (median of {args.repeats}):               {times[len(times) // 2]:8.3f} s")
    print(f"conv FLOPs per step (fwd+dx+dw):           {flops / 1e9:8.2f} GFLOP")
    print(f"conv throughput (im2col+GEMM+col2im):      {flops / conv_time / 1e9:8.1f} GFLOP/s"
          f" = {flops / conv_time / 1e9 / peak:.0%} of matmul peak")
    print(f"whole-step conv throughput:                {flops / times[len(times) // 2] / 1e9:8.1f} GFLOP/s"
          f" = {flops / times[len(times) // 2] / 1e9 / peak:.0%} of matmul peak")
    print("\nper-primitive time in one instrumented step:")
    total = sum(totals.values())
    for (name, kind), t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:>15s} {kind:10s} {t:7.3f} s  {t / total:5.1%}")


if __name__ == "__main__":
    main()
