"""Convolution designs of the NumPy reference, timed side by side in one run.

    python benchmarks/bench_conv_designs.py [--batch 128] [--repeats 5] [--threads 1] [--step] [--pair]

Per stage of a CIFAR ResNet (32x32x16, 16x16x32, 8x8x64; 3x3, stride 1, padding 1), the
median time of:

- ``im2col`` and ``rows``: the reference's two patch designs (reference/conv.py),
  each forced on every stage, forward and forward + both VJPs (the reference picks rows
  where they pay: see ROWS_PER_DROPPED);
- ``GEMM alone``: the forward's arithmetic at OpenBLAS's rate, one GEMM on the whole
  im2col patch matrix built beforehand (a design at this time spends nothing on patches;
  one BLAS call, so one thread whatever ``--threads`` says);
- ``9 GEMMs``: a rejected prototype, nine GEMMs on shifted slices of the flat padded image
  (no patch copy at all, K = c), forward only, images shared among the worker threads;
- ``wide GEMM``: a rejected prototype, the reference's row patches with one GEMM per group
  (the k weight slices side by side, N = k*o) and k shifted adds, forward only;
- ``winograd``: a rejected prototype, Winograd F(2x2, 3x3) (2.25x fewer GEMM FLOPs, but
  its transforms move c numbers at a time), forward only, with its three parts; whole-batch
  NumPy calls, so one thread whatever ``--threads`` says.

The GEMM kernel OpenBLAS picks can be forced for a run (``OPENBLAS_CORETYPE=Haswell``, ...,
before the command); the ``GEMM alone`` rows then show its rate.

``--step``: whole BP steps of ResNet-32 on the reference with row patches where they pay
(the reference's rule) or im2col everywhere, at image groups of 1, 2 and 4 MB,
interleaved step by step (the choice of ROWS_PER_DROPPED and COLUMN_BYTES).
With 1 thread the clock is process CPU time, with more wall time.

``--pair``: where two worker threads lose against two cores. Per stage, the reference's
forward convolution (single-threaded BLAS) run alone, twice at once in two threads of one
process, and twice at once in two processes; wall ms per convolution. What two threads lose
and two processes do not is lost inside the process (not to the GIL's hand-overs alone:
groups twice as large, so half the NumPy calls, gain 2-6% on a whole 2-thread step, see
``--step --threads 2``); what both lose is lost to the shared hardware.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

from backlink.experiments.allocator import keep_freed_memory
from backlink.reference import conv as C, parallel

STAGES = [(32, 16), (16, 32), (8, 64)]  # (image size, channels)
IM2COL, ROWS = 10 ** 9, 0  # ROWS_PER_DROPPED values: never row patches / always


def median_ms(f, repeats, clock):
    f()
    times = []
    for _ in range(repeats):
        t = clock()
        f()
        times.append(clock() - t)
    return 1e3 * statistics.median(times)


def nine_gemms(x, w):
    """Forward: y = sum over the 9 taps of (flat padded image shifted by the tap) @ W[tap];
    the images are shared among the active worker threads, as the reference's groups are."""
    n, h, wd, c = x.shape
    o, wp = w.shape[-1], wd + 2
    y = np.empty((n, h, wd, o), x.dtype)

    def run(images):
        xpad = np.zeros((h + 3, wp, c), x.dtype)  # one spare row: every shifted slice fits
        acc, tmp = np.empty((h * wp, o), x.dtype), np.empty((h * wp, o), x.dtype)
        for i in images:
            xpad[1:h + 1, 1:wd + 1] = x[i]
            flat = xpad.reshape(-1, c)
            for t in range(9):
                shift = (t // 3) * wp + t % 3
                np.matmul(flat[shift:shift + h * wp], w[t // 3, t % 3], out=tmp if t else acc)
                if t:
                    acc += tmp
            y[i] = acc.reshape(h, wp, o)[:, :wd]

    parallel.map_runs(run, range(n))
    return y


def wide_gemm(x, w):
    """Forward on the reference's row patches R, but one GEMM per group with the k weight
    slices side by side (N = k*o), then y_j = sum_ki Z[j + ki*wo, ki*o:(ki+1)*o]."""
    k, _, c, o = w.shape
    plan = C._RowPlan(k, 1, *x.shape[1:])
    wk = np.concatenate(list(w.reshape(k, k * c, o)), axis=1)  # (k*c, k*o)
    y = np.empty(x.shape[:3] + (o,), x.dtype)

    def scratch(m):
        rows = m * plan.hp * plan.wo
        return plan.scratch(np, m, x.dtype) + (np.empty((rows, k * o), x.dtype), np.empty((rows, o), x.dtype))

    def group(s, bufs):
        xpad, rbuf, z, acc = bufs
        m = s.stop - s.start
        R, n = plan.patches(x[s], xpad, rbuf), plan.sums(m)
        zs = np.matmul(R, wk, out=z[:len(R)])
        np.copyto(acc[:n], zs[:n, :o])
        for ki in range(1, k):
            acc[:n] += zs[ki * plan.wo:ki * plan.wo + n, ki * o:(ki + 1) * o]
        y[s] = acc[:len(R)].reshape(m, plan.hp, plan.wo, o)[:, :plan.ho]

    C._for_groups(x, plan.ho * plan.wo, k * k * c, group, scratch)
    return y


WINOGRAD_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)


def winograd(x, w, parts, clock):
    """Forward by Winograd F(2x2, 3x3); adds each part's time to ``parts``."""
    n, h, wd, c = x.shape
    o, th, tw = w.shape[-1], h // 2, wd // 2
    t0 = clock()
    u = np.einsum("ia,abco,jb->ijco", WINOGRAD_G, w, WINOGRAD_G).reshape(16, c, o)
    xpad = np.zeros((n, h + 2, wd + 2, c), x.dtype)
    xpad[:, 1:-1, 1:-1] = x
    d = [xpad[:, a:a + 2 * th:2] for a in range(4)]  # the 4 rows of every tile
    rows = [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]  # B^T along rows
    v = np.empty((4, 4, n, th, tw, c), x.dtype)
    for i, r in enumerate(rows):  # B along columns: c numbers at a time
        col = [r[:, :, b:b + 2 * tw:2] for b in range(4)]
        np.subtract(col[0], col[2], out=v[i, 0])
        np.add(col[1], col[2], out=v[i, 1])
        np.subtract(col[2], col[1], out=v[i, 2])
        np.subtract(col[1], col[3], out=v[i, 3])
    t1 = clock()
    m = np.matmul(v.reshape(16, -1, c), u).reshape(4, 4, n, th, tw, o)
    t2 = clock()
    s = [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]  # A^T along rows
    y = np.empty((n, th, 2, tw, 2, o), x.dtype)
    for a in range(2):
        y[:, :, a, :, 0] = s[a][0] + s[a][1] + s[a][2]
        y[:, :, a, :, 1] = s[a][1] - s[a][2] - s[a][3]
    for key, dt in (("input transform", t1 - t0), ("16 GEMMs", t2 - t1), ("output transform", clock() - t2)):
        parts[key] = parts.get(key, 0.0) + dt
    return y.reshape(n, h, wd, o)


def gemm_alone_ms(x, w, repeats, clock):
    """The forward's one im2col GEMM, on the whole patch matrix built beforehand."""
    cols, w2 = C._im2col(x, 3, 1, 1)[0], w.reshape(-1, w.shape[-1])  # reshape copies: built once
    out = np.empty((cols.shape[0], w.shape[-1]), x.dtype)
    return median_ms(lambda: np.matmul(cols, w2, out=out), repeats, clock)


def stages(args, clock) -> None:
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, float32, 3x3 stride 1 padding 1; median ms of {args.repeats}")
    for size, ch in STAGES:
        x = rng.standard_normal((args.batch, size, size, ch), dtype=np.float32)
        w = (0.1 * rng.standard_normal((3, 3, ch, ch))).astype(np.float32)
        times, ref = {}, None
        C.ROW_CHANNELS = 0
        for name, rule in (("im2col", IM2COL), ("rows", ROWS)):
            C.ROWS_PER_DROPPED = rule
            y, saved = C.conv2d(x, w, kernel=3, out=ch, stride=1, padding=1)
            g = rng.standard_normal(y.shape, dtype=np.float32)
            ref = y if ref is None else ref
            fwd = median_ms(lambda: C.conv2d(x, w, kernel=3, out=ch, stride=1, padding=1), args.repeats, clock)
            vjps = median_ms(lambda: (C.conv2d_dx(saved, g), C.conv2d_dw(saved, g)), args.repeats, clock)
            times[name] = (fwd, fwd + vjps)
        scale = np.abs(ref).max()
        prototypes = {"9 GEMMs": lambda: nine_gemms(x, w), "wide GEMM": lambda: wide_gemm(x, w),
                      "winograd": lambda: winograd(x, w, {}, clock)}
        for name, f in prototypes.items():
            err = np.abs(f() - ref).max() / scale
            assert err < 1e-5, f"{name} differs from the reference by {err:.1e}"
        gemm = gemm_alone_ms(x, w, args.repeats, clock)
        parts = {}
        wino = median_ms(lambda: winograd(x, w, parts, clock), args.repeats, clock)
        nine = median_ms(lambda: nine_gemms(x, w), args.repeats, clock)
        wide = median_ms(lambda: wide_gemm(x, w), args.repeats, clock)
        base = times["im2col"][0]
        print(f"\n{size}x{size}x{ch}         forward   vs im2col   forward + dx + dw")
        for name, (f, total) in times.items():
            print(f"  {name:<14} {f:8.1f}   {base / f:8.2f}x   {total:8.1f}")
        print(f"  {'GEMM alone':<14} {gemm:8.1f}   {base / gemm:8.2f}x   (im2col's one GEMM, its patches prebuilt)")
        print(f"  {'9 GEMMs':<14} {nine:8.1f}   {base / nine:8.2f}x")
        print(f"  {'wide GEMM':<14} {wide:8.1f}   {base / wide:8.2f}x")
        share = ", ".join(f"{k} {1e3 * v / (args.repeats + 1):.1f}" for k, v in parts.items())
        print(f"  {'winograd':<14} {wino:8.1f}   {base / wino:8.2f}x   ({share})")


def steps(args, clock) -> None:
    from backlink.reference.backend import ReferenceBackend
    from backlink.reference.models import build_model, init_params, make_partition
    from backlink.spec import Batch, Method, Optimizer, Problem

    graph = build_model("resnet32", input_shape=(32, 32, 3), num_classes=10)
    part = make_partition(graph, ())
    params, buffers = init_params(graph, part, seed=0, dtype="float32")
    problem = Problem(graph, part, Method("bp"), Optimizer(lr=0.1, momentum=0.9), dtype="float32")
    rng = np.random.default_rng(0)
    batch = Batch(rng.standard_normal((args.batch, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, args.batch), 0)
    runner = ReferenceBackend(threads=args.threads).prepare(problem, params, buffers)
    default = f"rows where they pay, {C.COLUMN_BYTES >> 20} MB"
    rules = (("rows", C.ROWS_PER_DROPPED), ("im2col", IM2COL))
    designs = {f"{name} {mb} MB": (rule, mb << 20) for name, rule in rules for mb in (1, 2, 4)}
    times = {d: [] for d in designs}
    runner.step(batch)
    for _ in range(args.repeats):
        for d, (rule, group) in designs.items():
            C.ROWS_PER_DROPPED, C.COLUMN_BYTES = rule, group
            t = clock()
            runner.step(batch)
            times[d].append(clock() - t)
    print(f"\nResNet-32 BP step, batch {args.batch}, {args.threads} thread(s), median s of {args.repeats} "
          f"(interleaved); the reference's setting: {default}")
    for d, ts in times.items():
        print(f"  {d:<12} {statistics.median(ts):7.3f}")


def convs_for(seconds, size, ch, batch):
    """Median wall ms of the reference's forward convolution, repeated for ``seconds``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, ch), dtype=np.float32)
    w = (0.1 * rng.standard_normal((3, 3, ch, ch))).astype(np.float32)
    times, end = [], time.perf_counter() + seconds
    with threadpool_limits(limits=1, user_api="blas"):
        C.conv2d(x, w, kernel=3, out=ch, stride=1, padding=1)
        while time.perf_counter() < end:
            t = time.perf_counter()
            C.conv2d(x, w, kernel=3, out=ch, stride=1, padding=1)
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def pair(args) -> None:
    print(f"\ntwo convolutions at once (forward, batch {args.batch}, 1-thread BLAS each): wall ms per convolution")
    spawn = multiprocessing.get_context("spawn")
    for size, ch in STAGES:
        job = (2.0, size, ch, args.batch)
        alone = convs_for(*job)
        threaded = []
        runs = [threading.Thread(target=lambda: threaded.append(convs_for(*job))) for _ in range(2)]
        for r in runs:
            r.start()
        for r in runs:
            r.join()
        with spawn.Pool(2) as pool:
            processes = pool.starmap(convs_for, [job, job])
        print(f"  {size}x{size}x{ch}: alone {alone:.1f}; two threads {max(threaded):.1f} "
              f"({max(threaded) / alone:.2f}x); two processes {max(processes):.1f} ({max(processes) / alone:.2f}x)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="the reference's worker threads (BLAS at 1)")
    ap.add_argument("--step", action="store_true", help="also whole BP steps per design and group size")
    ap.add_argument("--pair", action="store_true", help="only: two convolutions at once, in threads vs processes")
    args = ap.parse_args(argv)
    keep_freed_memory()
    if args.pair:
        return pair(args)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    rule, channels, group = C.ROWS_PER_DROPPED, C.ROW_CHANNELS, C.COLUMN_BYTES
    with threadpool_limits(limits=1, user_api="blas"), parallel.threads(args.threads):
        try:
            stages(args, clock)
            C.ROWS_PER_DROPPED, C.ROW_CHANNELS = rule, channels
            if args.step:
                steps(args, clock)
        finally:
            C.ROWS_PER_DROPPED, C.ROW_CHANNELS, C.COLUMN_BYTES = rule, channels, group


if __name__ == "__main__":
    main()
