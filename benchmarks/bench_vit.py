"""ViT training-step time: the NumPy reference vs the PyTorch backend (CPU), same graph, same run.

    python benchmarks/bench_vit.py [--batch 64] [--depth 4] [--width 64] [--heads 4] [--patch 4]
                                   [--repeats 5] [--K 4] [--P 1] [--threads N] [--clock wall|cpu]

One synchronous step (forward, BL-3.7 gradients, AdamW) of a ViT (BL-2.8, half-block
units) on 28x28x1 float32 inputs, for BP and BackLink (K modules, link length P),
through the conformance runners. The two backends alternate step by step (A, B, A, B, ...)
and each time is the median of ``--repeats`` steps after one warm-up step; NumPy's BLAS
and torch get the same thread count (printed). ``--profile`` adds the reference's time
per primitive for one BackLink step.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from bench_numpy_vs_torch import median_steps, profile_step
from threadpoolctl import threadpool_info, threadpool_limits

from backlink.backends.torch_backend import TorchBackend
from backlink.reference.backend import ReferenceBackend
from backlink.reference.models import even_cuts, init_params, make_partition, vit
from backlink.spec import Batch, LRSchedule, Method, Optimizer, Problem


def blas_threads() -> int:
    """NumPy's BLAS thread count (1 if threadpoolctl finds no BLAS)."""
    return next((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), 1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--P", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="default: NumPy's BLAS thread count")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)

    threads = args.threads or blas_threads()
    torch.set_num_threads(threads)
    graph = vit(input_shape=(28, 28, 1), patch=args.patch, depth=args.depth, width=args.width, heads=args.heads,
                mlp_ratio=2, granularity="layer")
    part = make_partition(graph, even_cuts(graph, args.K))
    params, buffers = init_params(graph, part, seed=0, dtype="float32")
    rng = np.random.default_rng(0)
    batches = [Batch(rng.standard_normal((args.batch, 28, 28, 1)).astype(np.float32),
                     rng.integers(0, 10, args.batch), i) for i in range(2)]
    opt = Optimizer(kind="adamw", lr=1e-3, weight_decay=0.05, schedule=LRSchedule("cosine", warmup=2, total=100))
    methods = {"bp": Method("bp"), f"backlink K={args.K} P={args.P}": Method("backlink", link_length=args.P)}
    tokens, _ = graph.shapes["embed.pos"]
    print(f"ViT depth {args.depth}, width {args.width}, {args.heads} heads, patch {args.patch} ({tokens} tokens), "
          f"{len(graph.units)} half-block units, batch {args.batch}, 28x28x1 float32, cuts {part.cuts}; "
          f"one synchronous step (forward + BL-3.7 grads + AdamW)")
    print(f"threads: NumPy BLAS {threads}, torch {torch.get_num_threads()} (torch {torch.__version__}, "
          f"NumPy {np.__version__}); {args.clock} clock, median of {args.repeats} after 1 warm-up, "
          f"backends interleaved")
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    print(f"{'method':<22} {'numpy [s]':>10} {'torch [s]':>10} {'numpy/torch':>12}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with threadpool_limits(limits=threads, user_api="blas"):
        for name, method in methods.items():
            problem = Problem(graph, part, method, opt, dtype="float32")
            runners = [ReferenceBackend().prepare(problem, params, buffers),
                       TorchBackend("cpu").prepare(problem, params, buffers)]
            t_np, t_torch = median_steps(runners, batches, args.repeats, clock)
            print(f"{name:<22} {t_np:>10.3f} {t_torch:>10.3f} {t_np / t_torch:>11.2f}x")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if args.profile:
            problem = Problem(graph, part, Method("backlink", link_length=args.P), opt, dtype="float32")
            profile_step(ReferenceBackend().prepare(problem, params, buffers), batches[0],
                         f"NumPy reference, one BackLink K={args.K} P={args.P} step, {threads} BLAS thread(s)")


if __name__ == "__main__":
    main()
