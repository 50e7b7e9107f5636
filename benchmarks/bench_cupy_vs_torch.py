"""CuPy backend vs the PyTorch backend on CUDA (cuDNN): training-step time and GPU memory.

Same graph, parameters and batch for both, measured in the same run; prints the ratio
cupy/torch per (model, batch, method) and the memory each allocator reports. The
"xp only" column is the CuPy backend with its hand-written kernels off
(``BACKLINK_CUDA_KERNELS=0``: the plain xp composition), which shows what they pay.

    python benchmarks/bench_cupy_vs_torch.py [--quick] [--repeats 5]

Needs CuPy, torch with CUDA and a GPU (run it through ``bash .ci/gpu``).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np

from backlink.backends.cupy_backend import CupyBackend, require_gpu
from backlink.reference.models import build_model, even_cuts, init_params, make_partition
from backlink.spec import Batch, Method, Optimizer, Problem

METHODS = {"bp": Method("bp"), "greedy": Method("greedy"), "backlink": Method("backlink", 1)}


def timed_steps(runner, batch, sync, repeats):
    runner.step(batch)  # warm-up: kernels compiled, pools grown
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner.step(batch)
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


@contextlib.contextmanager
def kernels_off():
    old = os.environ.get("BACKLINK_CUDA_KERNELS")
    os.environ["BACKLINK_CUDA_KERNELS"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["BACKLINK_CUDA_KERNELS"]
        else:
            os.environ["BACKLINK_CUDA_KERNELS"] = old


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="only ResNet-32, batch 128")
    ap.add_argument("--K", type=int, default=4)
    args = ap.parse_args(argv)
    cupy = require_gpu()
    import torch

    from backlink.backends.torch_backend import TorchBackend

    pool = cupy.get_default_memory_pool()
    settings = [(32, 128)] + ([] if args.quick else [(110, 1024)])
    print(f"GPU: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, cupy {cupy.__version__}, "
          f"torch {torch.__version__} (cuDNN {torch.backends.cudnn.version()}), float32, K={args.K}, P=1")
    rows = [("model", "batch", "method", "cupy ms", "xp only ms", "torch ms", "cupy/torch", "cupy pool MB",
             "torch max alloc MB")]
    for depth, n in settings:
        graph = build_model(f"resnet{depth}", input_shape=(32, 32, 3), num_classes=10)
        part = make_partition(graph, even_cuts(graph, args.K), head="linear")
        params, buffers = init_params(graph, part, seed=0, dtype="float32")
        rng = np.random.default_rng(0)
        batch = Batch(rng.standard_normal((n, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, n), 0)
        for name, method in METHODS.items():
            problem = Problem(graph, part, method, Optimizer(0.1, 0.9, True, 5e-4), dtype="float32")
            pool.free_all_blocks()
            cu = timed_steps(CupyBackend().prepare(problem, params, buffers), batch,
                             cupy.cuda.Device().synchronize, args.repeats)
            cu_mem = pool.total_bytes()
            with kernels_off():
                plain = timed_steps(CupyBackend().prepare(problem, params, buffers), batch,
                                    cupy.cuda.Device().synchronize, args.repeats)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            th = timed_steps(TorchBackend("cuda").prepare(problem, params, buffers), batch,
                             torch.cuda.synchronize, args.repeats)
            th_mem = torch.cuda.max_memory_allocated()
            rows.append((f"resnet{depth}", str(n), name, f"{cu * 1e3:.1f}", f"{plain * 1e3:.1f}", f"{th * 1e3:.1f}",
                         f"{cu / th:.2f}x",
                         f"{cu_mem / 2**20:.0f}", f"{th_mem / 2**20:.0f}"))
            print("  ".join(rows[-1]), flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print("(step = forward + backward + SGD update + copying the StepRecord to the host, for both)")


if __name__ == "__main__":
    main()
