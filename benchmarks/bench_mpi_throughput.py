"""Throughput of the pipelined schedule: one process vs one module per MPI rank.

For greedy and BackLink on a small ResNet, the same run (same problem, initial values,
batches, ticks including the drain) is timed twice: in one process
(:class:`~backlink.reference.pipeline.PipelinedRunner`, modules one after the other) and
with ``mpiexec -n K`` (modules in parallel, :mod:`backlink.reference.distributed`). Every
process gets one BLAS thread (``OMP_NUM_THREADS=1``), so the ratio measures model
parallelism, not threading. Where :mod:`backlink.reference.simulator` exists its
predicted speed-up (FLOP costs, no communication cost) is printed beside the
measured one.

    python benchmarks/bench_mpi_throughput.py [--model resnet8] [--K 2] [--steps 16] [--batch 64]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER_FLAG = "--single-process-worker"


def run_args(args, method: str) -> list[str]:
    argv = ["--model", args.model, "--K", str(args.K), "--method", method, "--P", str(args.P),
            "--dataset", "synthetic", "--n-train", str(args.batch * args.steps), "--batch", str(args.batch),
            "--steps", str(args.steps), "--dtype", args.dtype, "--lr", "0.05", "--seed", str(args.seed)]
    return argv + (["--cuts", args.cuts] if args.cuts else [])


def single_process_worker(argv: list[str]) -> None:
    """Time the one-process run; print {"seconds", "samples"} as JSON."""
    from backlink.experiments.mpi_runner import build_parser, setup
    from backlink.reference.pipeline import PipelinedRunner
    from backlink.spec.pipeline import drain_ticks

    problem, params, buffers, batches = setup(build_parser().parse_args(argv))
    runner = PipelinedRunner(problem, params, buffers)
    feed = list(batches) + [None] * drain_ticks(problem)
    start = time.perf_counter()
    for b in feed:
        runner.step(b)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "samples": sum(len(b.y) for b in batches),
                      "cuts": list(problem.partition.cuts)}))


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def time_single(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, WORKER_FLAG, *argv], capture_output=True,
                          text=True, env=_env(), check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_mpi(argv: list[str], n: int) -> dict:
    from backlink.experiments.mpi_runner import mpiexec_path

    exe = mpiexec_path()
    if exe is None:
        raise SystemExit("mpiexec not found: pip install 'backlink[mpi]'")
    with tempfile.TemporaryDirectory() as out:
        cmd = [exe, "-n", str(n), sys.executable, "-m", "backlink.experiments.mpi_runner", "rank", *argv, "--out", out]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        if proc.returncode:
            raise SystemExit(f"MPI run failed:\n{proc.stderr}")
        result = json.loads((Path(out) / "result.json").read_text())
    return result


def predicted_speedup(argv: list[str], method: str, batch: int, steps: int):
    """The pipeline simulator's speed-up of K devices over one, from FLOP costs, if it exists:
    one device runs every task back to back (the sum of the K devices' busy times)."""
    try:
        from backlink.reference.flops import partition_costs
        from backlink.reference.simulator import simulate
    except ImportError:
        return None
    from backlink.experiments.mpi_runner import build_parser, setup

    problem, *_ = setup(build_parser().parse_args(argv), with_data=False)
    schedule = simulate(method, **partition_costs(problem.graph, problem.partition, batch),
                        link_length=problem.method.P, batches=steps)
    return sum(schedule.busy) / schedule.makespan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet8")
    p.add_argument("--K", type=int, default=2)
    p.add_argument("--cuts", default=None, help="explicit cut points (default: even unit counts)")
    p.add_argument("--P", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="runs of each, best kept (default %(default)s)")
    p.add_argument("--methods", nargs="+", default=["greedy", "backlink"], choices=["greedy", "backlink"])
    args = p.parse_args(argv)
    rows, load_before = [], os.getloadavg()[0]
    for method in args.methods:
        run = run_args(args, method)
        # interleaved repeats, best of each: the machine may be shared, noise only slows runs down
        ones, manys = [], []
        for _ in range(args.repeats):
            ones.append(time_single(run))
            manys.append(time_mpi(run, args.K))
        one, many = min(ones, key=lambda r: r["seconds"]), min(manys, key=lambda r: r["seconds"])
        sim = predicted_speedup(run, method, args.batch, args.steps)
        rows.append((method, one, many, sim))
    print(f"\n{args.model}, K = {args.K} (cuts {rows[0][1]['cuts']}), batch {args.batch}, {args.steps} batches "
          f"+ drain, {args.dtype}, 1 BLAS thread per process, best of {args.repeats}, "
          f"{os.cpu_count()} CPU cores on this machine, load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f} (a load near the core count means the ranks shared cores)")
    head = f"{'method':<9} {'1 process':>12} {f'{args.K} MPI ranks':>12} {'speed-up':>9} {'simulated':>10} {'rank idle':>16}"
    print(head)
    print(f"{'':<9} {'samples/s':>12} {'samples/s':>12} {'measured':>9} {'speed-up':>10} {'share':>16}")
    for method, one, many, sim in rows:
        s1, s2 = one["samples"] / one["seconds"], many["samples"] / many["seconds"]
        idle = "/".join(f"{w / many['seconds']:.0%}" for w in many["wait_seconds"])
        sim_text = "n/a" if sim is None else f"{sim:.2f}x"
        print(f"{method:<9} {s1:>12.1f} {s2:>12.1f} {s2 / s1:>8.2f}x {sim_text:>10} {idle:>16}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
        single_process_worker(sys.argv[2:])
    else:
        raise SystemExit(main())
