"""Training-step time: NumPy reference vs PyTorch backend vs plain PyTorch, same model, one run.

    python benchmarks/bench_numpy_vs_torch.py [--depth 32] [--batch 128] [--repeats 3]
        [--threads 1 2] [--configs all|block|quick] [--numpy-threading workers|blas]
        [--no-plain] [--blas-check] [--profile] [--demo] [--malloc keep|default]

Three peers run one synchronous training step (forward, BL-3.7 gradients, SGD with
momentum) of a CIFAR ResNet on 32x32x3 float32 inputs, for BP, greedy and BackLink
(P=1) with K=4 and K=8 modules, at block and layer units:

- ``numpy``: the reference (``ReferenceBackend``); with n > 1 threads, by default its
  own worker threads with single-threaded BLAS (``--numpy-threading workers``), or
  OpenBLAS's threads (``blas``, the only choice before the reference had workers);
- ``torch``: the PyTorch backend (``TorchBackend('cpu')``);
- ``plain``: hand-written PyTorch (benchmarks/plain_torch.py, channels_last), the same
  network and gradients, trained module by module as a PyTorch user would.

Peers alternate step by step (A, B, C, A, B, C, ...) after one warm-up step each, so a
load change on a shared machine hits all alike; each time is the median of
``--repeats``. With 1 thread the clock is process CPU time (robust on a shared machine);
with more, wall time (CPU time would add the threads up). The load average is printed.
Then, from the same numbers, backlink/greedy step ratios per peer.

``--blas-check``: at each n > 1, the BP step of the reference with its workers vs with
n OpenBLAS threads (the design choice of backlink.reference.parallel). ``--profile``:
the reference's time per primitive in one BackLink step. ``--demo``: one epoch of the
README demo (resnet8 on mnist5k, K=4, P=1, batch 64) per method on the reference,
process CPU time at 1 thread; runs on older versions of the package too, to compare
(with ``--malloc default`` before experiments/allocator.py existed).

``--malloc keep`` (the default) keeps freed memory in the process, as the ``backlink``
command does; ``default`` leaves glibc's thresholds. All peers share the process, so
both settings compare them alike.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from backlink.reference import primitives
from backlink.reference.backend import ReferenceBackend
from backlink.reference.flops import op_flops
from backlink.reference.models import build_model, even_cuts, init_params, make_partition
from backlink.spec import Batch, Method, Optimizer, Problem, module_bounds, tail_bounds

sys.path.insert(0, str(Path(__file__).parent))
from plain_torch import PlainStep  # noqa: E402

CONFIGS = {  # name -> (method kind, K, units)
    "all": [("bp", 1, "block")] + [(kind, K, units) for units in ("block", "layer")
                                   for kind in ("greedy", "backlink") for K in (4, 8)],
    "block": [("bp", 1, "block")] + [(kind, K, "block") for kind in ("greedy", "backlink") for K in (4, 8)],
    "quick": [("bp", 1, "block"), ("greedy", 8, "block"), ("backlink", 8, "block")],
}


def label(kind, K, units):
    return "bp" if kind == "bp" else f"{kind} K={K}{' P=1' if kind == 'backlink' else ''} {units}"


class PlainRunner:
    """plain_torch.PlainStep behind the runners' ``step(batch)``."""

    def __init__(self, kind, cuts, depth, units):
        self.step_fn = PlainStep(kind, cuts, 1, depth, units)

    def step(self, batch):
        self.step_fn.step(batch.x, batch.y)


def numpy_backend(threads: int, threading: str) -> tuple[ReferenceBackend, int]:
    """The reference and the BLAS thread count to run it under, for ``threads`` threads."""
    if threads > 1 and threading == "workers":
        return ReferenceBackend(threads=threads), 1
    return ReferenceBackend(), threads


class Limited:
    """A runner whose steps run under a BLAS thread limit (entered per step: torch's
    steps in between must not see it)."""

    def __init__(self, runner, limit):
        self.runner, self.limit = runner, limit

    def step(self, batch):
        with threadpool_limits(limits=self.limit, user_api="blas"):
            return self.runner.step(batch)


def median_steps(runners, batches, repeats: int, clock) -> list[float]:
    """Median step time of each runner, the runners alternating step by step."""
    for r in runners:
        r.step(batches[0])  # warm-up: allocator, kernel selection
    times = [[] for _ in runners]
    for i in range(repeats):
        for r, ts in zip(runners, times):
            t = clock()
            r.step(batches[(i + 1) % len(batches)])
            ts.append(clock() - t)
    return [statistics.median(ts) for ts in times]


def make_runners(args, threads, kind, K, units):
    graph = build_model(f"resnet{args.depth}", input_shape=(32, 32, 3), num_classes=10, granularity=units)
    cuts = even_cuts(graph, K) if K > 1 else ()
    part = make_partition(graph, cuts)
    params, buffers = init_params(graph, part, seed=0, dtype="float32")
    method = Method(kind, link_length=1) if kind == "backlink" else Method(kind)
    problem = Problem(graph, part, method, Optimizer(lr=0.1, momentum=0.9), dtype="float32")
    backend, blas = numpy_backend(threads, args.numpy_threading)
    runners = [Limited(backend.prepare(problem, params, buffers), blas)]
    from backlink.backends.torch_backend import TorchBackend

    runners.append(TorchBackend("cpu").prepare(problem, params, buffers))
    if not args.no_plain:
        runners.append(PlainRunner(kind, cuts, args.depth, units))
    return runners


def table(args, threads, batches) -> dict:
    torch.set_num_threads(threads)
    clock = time.process_time if threads == 1 else time.perf_counter
    names = ["numpy", "torch"] + ([] if args.no_plain else ["plain"])
    how = "" if threads == 1 else f", numpy threading: {args.numpy_threading}"
    print(f"\n== {threads} thread(s){how}; {'CPU' if threads == 1 else 'wall'} time per step [s], "
          f"median of {args.repeats}; load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    head = "".join(f"{n:>8}" for n in names) + f"{'np/torch':>10}" + ("" if args.no_plain else f"{'np/plain':>10}{'torch/plain':>12}")
    print(f"{'config':<26}{head}")
    out = {}
    for kind, K, units in CONFIGS[args.configs]:
        ts = median_steps(make_runners(args, threads, kind, K, units), batches, args.repeats, clock)
        out[kind, K, units] = ts
        ratios = f"{ts[0] / ts[1]:>9.2f}x" + ("" if args.no_plain else f"{ts[0] / ts[2]:>9.2f}x{ts[1] / ts[2]:>11.2f}x")
        print(f"{label(kind, K, units):<26}" + "".join(f"{t:>8.3f}" for t in ts) + ratios, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    links = [(K, units) for kind, K, units in CONFIGS[args.configs] if kind == "backlink"
             and ("greedy", K, units) in out]
    if links:
        print(f"backlink/greedy step, {threads} thread(s) (FLOPs: the arithmetic floor, see link_flops):")
        for K, units in links:
            b, g = out["backlink", K, units], out["greedy", K, units]
            print(f"  K={K} P=1 {units:<6}" + "".join(f"  {n} {bi / gi:.2f}x" for n, bi, gi in zip(names, b, g))
                  + f"  FLOPs {link_flops(args.depth, K, units):.2f}x")
    return out


def link_flops(depth: int, K: int, units: str) -> float:
    """BackLink (P = 1) / greedy trunk FLOPs of one step, in the reference's order (BL-7.2):
    no discarded input cotangent, each tail weight gradient once. The link adds, per module
    k > 1, the input cotangent at module k's entry and the tail's internal input-cotangent
    VJPs; nothing an implementation of BL-3.7 can skip. Heads are left out (both have them).
    """
    g = build_model(f"resnet{depth}", input_shape=(32, 32, 3), num_classes=10, granularity=units)
    method = Method("backlink", link_length=1)
    bounds = module_bounds(len(g.units), make_partition(g, even_cuts(g, K)), method)

    def input_vjps(u, entry_only=False):
        """FLOPs of unit ``u``'s input-cotangent VJPs (a GEMM's backward less its weight VJP);
        ``entry_only``: only those of the GEMMs reading the unit's input."""
        x, total = u.ops[0].inputs[0], 0.0
        for op in u.ops:
            f, b = op_flops(op, g.shapes)
            gemm = op.prim in ("conv2d", "linear")
            if entry_only:
                total += b - f if gemm and x in op.inputs else 0.0
            else:
                total += b - f if gemm else b
        return total

    total = sum(sum(op_flops(op, g.shapes)) for u in g.units for op in u.ops)
    greedy = total - sum(input_vjps(g.units[a], entry_only=True) for a, _ in bounds)
    tails = {k: tail_bounds(bounds, k, method) for k in range(1, len(bounds))}
    link = sum(input_vjps(g.units[i]) for t0, t1 in tails.values() for i in range(t0, t1))
    link += sum(input_vjps(g.units[bounds[k][0]], True) - input_vjps(g.units[t0], True) for k, (t0, _) in tails.items())
    return (greedy + link) / greedy


def blas_check(args, threads, batches) -> None:
    """The reference's BP step: its worker threads vs the same number of OpenBLAS threads."""
    graph = build_model(f"resnet{args.depth}", input_shape=(32, 32, 3), num_classes=10)
    part = make_partition(graph, ())
    params, buffers = init_params(graph, part, seed=0, dtype="float32")
    problem = Problem(graph, part, Method("bp"), Optimizer(lr=0.1, momentum=0.9), dtype="float32")
    one = Limited(ReferenceBackend().prepare(problem, params, buffers), 1)
    workers = Limited(ReferenceBackend(threads=threads).prepare(problem, params, buffers), 1)
    blas = Limited(ReferenceBackend().prepare(problem, params, buffers), threads)
    t1, tw, tb = median_steps([one, workers, blas], batches, args.repeats, time.perf_counter)
    print(f"\nreference BP step, wall [s]: 1 thread {t1:.3f}; {threads} worker threads (1-thread BLAS) "
          f"{tw:.3f} ({t1 / tw:.2f}x faster); {threads} OpenBLAS threads {tb:.3f} ({t1 / tb:.2f}x faster); "
          f"load average {os.getloadavg()[0]:.2f}")


@contextlib.contextmanager
def timed_primitives():
    """Wrap every reference primitive's callables with a timer; restore them on exit."""
    totals, saved = defaultdict(float), dict(primitives.PRIMS)

    def wrap(name, f, kind):
        if f is None:
            return None

        def timed(*a, **kw):
            t = time.process_time()
            out = f(*a, **kw)
            totals[name, kind] += time.process_time() - t
            return out
        return timed

    for name, p in saved.items():
        fields = {f.name: wrap(name, getattr(p, f.name), f.name) for f in dataclasses.fields(p) if f.name != "update"}
        primitives.PRIMS[name] = dataclasses.replace(p, **fields)
    try:
        yield totals
    finally:
        primitives.PRIMS.update(saved)


def profile(args, batch) -> None:
    graph = build_model(f"resnet{args.depth}", input_shape=(32, 32, 3), num_classes=10)
    part = make_partition(graph, even_cuts(graph, 8))
    params, buffers = init_params(graph, part, seed=0, dtype="float32")
    problem = Problem(graph, part, Method("backlink", link_length=1), Optimizer(lr=0.1, momentum=0.9), dtype="float32")
    with threadpool_limits(limits=1, user_api="blas"):
        profile_step(ReferenceBackend().prepare(problem, params, buffers), batch,
                     "NumPy reference, one BackLink K=8 P=1 step, 1 thread")


def profile_step(runner, batch, title: str) -> None:
    """Print the time per primitive of one step of a reference runner (after a warm-up step)."""
    runner.step(batch)
    with timed_primitives() as totals:
        t = time.process_time()
        runner.step(batch)
        step = time.process_time() - t
    print(f"\n{title}: {step:.3f} s CPU; time per primitive:")
    for (name, kind), s in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:>15s} {kind:10s} {s:7.3f} s  {s / step:6.1%}")
    rest = step - sum(totals.values())
    print(f"  {'other':>15s} {'':10s} {rest:7.3f} s  {rest / step:6.1%}  (loss, SGD, bookkeeping)")


def demo_epoch() -> None:
    """One epoch of the README demo per method on the reference (process CPU time)."""
    from backlink.experiments.train import RunConfig, train

    cfg = RunConfig(model="resnet8", dataset="mnist5k", K=4, link_length=1, epochs=1, batch=64, lr=0.1,
                    progress=False)
    import backlink

    print(f"\nREADME demo, one epoch (resnet8, mnist5k, K=4, P=1, batch 64), reference, 1 thread, "
          f"package at {Path(backlink.__file__).parents[2]}")
    with threadpool_limits(limits=1, user_api="blas"):
        torch.set_num_threads(1)
        for m in ("bp", "greedy", "backlink"):
            t = time.process_time()
            r = train(dataclasses.replace(cfg, method=m), backend=ReferenceBackend())
            print(f"  {m:<9} epoch + eval {time.process_time() - t:7.2f} s CPU "
                  f"(training loop {r['history'][0]['seconds']:.2f} s wall)", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--configs", choices=tuple(CONFIGS), default="all")
    ap.add_argument("--numpy-threading", choices=("workers", "blas"), default="workers")
    ap.add_argument("--no-plain", action="store_true", help="leave out the plain PyTorch peer")
    ap.add_argument("--blas-check", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--demo", action="store_true", help="only the README demo epoch")
    ap.add_argument("--malloc", choices=("keep", "default"), default="keep",
                    help="keep: freed memory stays in the process, as under the backlink command "
                         "(experiments/allocator.py); default: glibc's own thresholds")
    args = ap.parse_args(argv)
    if args.malloc == "keep":
        try:
            from backlink.experiments.allocator import keep_freed_memory
        except ImportError:  # a package version from before it (--demo runs on those too)
            sys.exit("--malloc keep: this backlink has no experiments.allocator; use --malloc default")
        keep_freed_memory()
    if args.demo:
        return demo_epoch()
    rng = np.random.default_rng(0)
    batches = [Batch(rng.standard_normal((args.batch, 32, 32, 3)).astype(np.float32),
                     rng.integers(0, 10, args.batch), i) for i in range(2)]
    print(f"ResNet-{args.depth}, batch {args.batch}, 32x32x3 float32; one synchronous training step "
          f"(forward + BL-3.7 grads + SGD); torch {torch.__version__}, NumPy {np.__version__}")
    for threads in args.threads:
        table(args, threads, batches)
        if args.blas_check and threads > 1:
            blas_check(args, threads, batches)
    if args.profile:
        profile(args, batches[0])


if __name__ == "__main__":
    main()
