"""Training-step time: the NumPy reference vs the PyTorch backend (CPU), same graph, same run.

    python benchmarks/bench_numpy_vs_torch.py [--depth 32] [--batch 128] [--repeats 3]
                                              [--K 4] [--P 1] [--threads N] [--clock wall|cpu]
                                              [--profile]

Both backends run one synchronous step (forward, BL-3.7 gradients, SGD with momentum)
of a CIFAR ResNet on 32x32x3 float32 inputs for BP, greedy (K modules) and BackLink
(K modules, link length P), through the conformance runners (``prepare`` + ``step``).
Each time is the median of ``--repeats`` steps after one warm-up step. NumPy's BLAS
and torch get the same number of threads (printed); on a shared machine,
``--threads 1 --clock cpu`` gives stable numbers. ``--profile`` adds the reference's
time per primitive (forward and VJP) for one BackLink step.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections import defaultdict

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from backlink.backends.torch_backend import TorchBackend
from backlink.reference import primitives
from backlink.reference.backend import ReferenceBackend
from backlink.reference.models import build_model, even_cuts, init_params, make_partition
from backlink.spec import Batch, Method, Optimizer, Problem


def blas_threads() -> int:
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else 1


def median_steps(runners, batches, repeats: int, clock=time.perf_counter) -> list[float]:
    """Median step time of each runner; the runners alternate so that a load change on a
    shared machine hits both alike."""
    for r in runners:
        r.step(batches[0])  # warm-up: allocator, kernel selection
    times = [[] for _ in runners]
    for i in range(repeats):
        for r, ts in zip(runners, times):
            t = clock()
            r.step(batches[(i + 1) % len(batches)])
            ts.append(clock() - t)
    return [statistics.median(ts) for ts in times]


@contextlib.contextmanager
def timed_primitives():
    """Wrap every reference primitive's fwd/vjp with a timer; restore them on exit."""
    totals, saved = defaultdict(float), dict(primitives.PRIMS)

    def wrap(name, f, kind):
        def timed(*a, **kw):
            t = time.perf_counter()
            out = f(*a, **kw)
            totals[name, kind] += time.perf_counter() - t
            return out
        return timed

    for name, p in saved.items():
        primitives.PRIMS[name] = primitives.Primitive(wrap(name, p.fwd, "fwd"), wrap(name, p.vjp, "vjp"), p.update)
    im2col = primitives._im2col  # inside conv2d fwd/vjp: the patch-matrix copies, apart from the GEMMs
    primitives._im2col = wrap("(im2col)", im2col, "")
    try:
        yield totals
    finally:
        primitives.PRIMS.update(saved)
        primitives._im2col = im2col


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--P", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="default: NumPy's BLAS thread count")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time, robust on a shared machine with --threads 1")
    ap.add_argument("--profile", action="store_true", help="per-primitive time of one reference step")
    args = ap.parse_args(argv)

    threads = args.threads or blas_threads()
    torch.set_num_threads(threads)
    graph = build_model(f"resnet{args.depth}", input_shape=(32, 32, 3), num_classes=10)
    part = make_partition(graph, even_cuts(graph, args.K))
    params, buffers = init_params(graph, part, seed=0, dtype="float32")
    rng = np.random.default_rng(0)
    batches = [Batch(rng.standard_normal((args.batch, 32, 32, 3)).astype(np.float32),
                     rng.integers(0, 10, args.batch), i) for i in range(2)]
    methods = {"bp": Method("bp"), f"greedy K={args.K}": Method("greedy"),
               f"backlink K={args.K} P={args.P}": Method("backlink", link_length=args.P)}
    opt = Optimizer(lr=0.1, momentum=0.9)

    print(f"ResNet-{args.depth} ({len(graph.units)} units), batch {args.batch}, 32x32x3 float32, "
          f"cuts {part.cuts}; one synchronous training step (forward + BL-3.7 grads + SGD)")
    print(f"threads: NumPy BLAS {threads}, torch {torch.get_num_threads()} "
          f"(torch {torch.__version__}, NumPy {np.__version__}); {args.clock} clock, "
          f"median of {args.repeats} after 1 warm-up")
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    print(f"{'method':<22} {'numpy [s]':>10} {'torch [s]':>10} {'numpy/torch':>12}")
    with threadpool_limits(limits=threads, user_api="blas"):
        for name, method in methods.items():
            problem = Problem(graph, part, method, opt, dtype="float32")
            runners = [ReferenceBackend().prepare(problem, params, buffers),
                       TorchBackend("cpu").prepare(problem, params, buffers)]
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            t_np, t_torch = median_steps(runners, batches, args.repeats, clock)
            print(f"{name:<22} {t_np:>10.3f} {t_torch:>10.3f} {t_np / t_torch:>11.1f}x")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if args.profile:
            profile(graph, part, params, buffers, batches[0], Method("backlink", link_length=args.P), opt)


def profile(graph, part, params, buffers, batch, method, opt) -> None:
    runner = ReferenceBackend().prepare(Problem(graph, part, method, opt, dtype="float32"), params, buffers)
    runner.step(batch)
    with timed_primitives() as totals:
        t = time.perf_counter()
        runner.step(batch)
        step = time.perf_counter() - t
    print(f"\nNumPy reference, one BackLink step: {step:.3f} s; time per primitive:")
    for (name, kind), s in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:>15s} {kind:3s} {s:7.3f} s  {s / step:6.1%}" + ("  (part of conv2d)" if not kind else ""))
    rest = step - sum(s for (_, kind), s in totals.items() if kind)
    print(f"  {'other':>15s}     {rest:7.3f} s  {rest / step:6.1%}  (loss, SGD, bookkeeping)")


if __name__ == "__main__":
    main()
