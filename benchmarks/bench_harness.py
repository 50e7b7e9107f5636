"""Harness overhead: one training step through ``backlink train`` vs the backend's bare step.

    python benchmarks/bench_harness.py [--backends numpy torch] [--model resnet8]
                                       [--dataset synthetic] [--n-train 1024] [--batch 64]
                                       [--method backlink] [--K 2] [--repeats 3] [--threads 1]

Per backend, interleaved (harness, bare, recorded, harness, bare, recorded, ...):

- harness: ``train()`` for one epoch (shuffling, batch slicing, normalisation, the
  divergence check, progress callbacks): its epoch time (without evaluation) / steps;
- bare: the same problem's runner, ``train_step`` over the same batches, pre-sliced;
- recorded: the same with ``step`` (the suite's StepRecord path; what BL-6.5 avoids).

Each is the median of ``--repeats`` epochs. Printed: ms per step and the ratios
harness / bare (the harness overhead) and recorded / bare. Small models on small
inputs are the worst case for the harness's share: a bigger model only dilutes it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=["numpy", "torch"])
    ap.add_argument("--model", default="resnet8")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--n-train", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--method", default="backlink")
    ap.add_argument("--K", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy/torch load their thread pools

    import numpy as np

    from backlink.experiments import data as datasets
    from backlink.experiments.backends import make_backend
    from backlink.experiments.train import RunConfig, build_problem, train
    from backlink.reference.models import init_params
    from backlink.spec import Batch

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    ds = datasets.load(args.dataset, n_train=args.n_train, n_test=64, seed=0)
    print(f"harness overhead: {args.model} on {args.dataset} ({args.n_train} train samples), batch {args.batch}, "
          f"{args.method} K={args.K}, float32, {args.threads} thread(s); median of {args.repeats} epochs")
    print(f"{'backend':>8}  {'harness ms':>10}  {'bare ms':>8}  {'recorded ms':>11}  "
          f"{'harness/bare':>12}  {'recorded/bare':>13}")
    for name in args.backends:
        cfg = RunConfig(model=args.model, dataset=args.dataset, n_train=args.n_train, n_test=64,
                        method=args.method, K=args.K, epochs=1, batch=args.batch, backend=name, progress=False)
        backend = make_backend(name)
        problem = build_problem(cfg, ds)
        rng = np.random.default_rng([0, 0])
        x = datasets.normalize(ds.x_train, ds.mean, ds.std)
        batches = [Batch(xb, yb, i) for xb, yb, i in datasets.batches(x, ds.y_train, args.batch, rng)]

        def bare(method: str) -> float:
            runner = backend.prepare(problem, *init_params(problem.graph, problem.partition, 0, "float32"))
            run = getattr(runner, method)
            t0 = time.perf_counter()
            for b in batches:
                run(b)
            return (time.perf_counter() - t0) / len(batches)

        def harness() -> float:
            return train(cfg, ds, backend)["history"][0]["seconds"] / len(batches)

        bare("train_step")  # warm-up: first-call costs (allocator, kernel selection) out of the timings
        times = {"harness": [], "bare": [], "recorded": []}
        for _ in range(args.repeats):
            times["harness"].append(harness())
            times["bare"].append(bare("train_step"))
            times["recorded"].append(bare("step"))
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name:>8}  {1e3 * m['harness']:>10.2f}  {1e3 * m['bare']:>8.2f}  {1e3 * m['recorded']:>11.2f}  "
              f"{m['harness'] / m['bare']:>12.3f}  {m['recorded'] / m['bare']:>13.3f}")


if __name__ == "__main__":
    main()
