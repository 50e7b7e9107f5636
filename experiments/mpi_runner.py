"""Command line of the MPI runner, and the launcher the ``backlink`` CLI can call.

Rank program (one module per rank)::

    mpiexec -n 2 python -m backlink.experiments.mpi_runner rank --model mlp --K 2 --dataset digits --steps 50

Launcher (spawns ``mpiexec -n K`` itself)::

    python -m backlink.experiments.mpi_runner --model mlp --K 2 --dataset digits --steps 50
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from backlink.spec import Batch, Problem

__all__ = ["setup", "make_batches", "build_parser", "main", "mpiexec_path", "launch", "add_subcommand",
           "n_ranks"]


def _cuts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cuts must be comma-separated unit indices, e.g. 2,4; got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mlp", help="mlp, cnn, vgg, resnet8/14/20/... (default %(default)s)")
    p.add_argument("--granularity", default="block", choices=["block", "layer"])
    p.add_argument("--method", default="backlink", choices=["bp", "greedy", "backlink"])
    p.add_argument("--K", type=int, default=2, help="modules = MPI ranks (default %(default)s)")
    p.add_argument("--cuts", type=_cuts, default=None, help="explicit cut points, overrides --K")
    p.add_argument("--P", "--link-length", dest="link_length", type=int, default=1)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--head", default="linear", choices=["linear", "conv"])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="stop after this many batches")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine", choices=["constant", "step", "cosine"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--out", default=None, help="folder for checkpoint-rank*.npz, params.npz, result.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-rank*.npz")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds a rank waits for a neighbour before aborting the job (default %(default)s)")
    p.add_argument("--inject-fault", default=None, metavar="RANK:TICK[:hang]", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backlink.experiments.mpi_runner rank",
                                description="Pipelined BackLink / greedy training, one module per MPI rank")
    add_arguments(p)
    return p


def _run_config(args):
    from .train import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    return RunConfig(**kw, n_test=None, progress=False)


def setup(args, with_data: bool = True) -> tuple[Problem, dict, dict, list[Batch] | None]:
    """The problem, initial values and batches a run with these arguments uses, on any rank."""
    from . import data as datasets
    from backlink.reference.models import init_params
    from .train import _setup

    cfg = _run_config(args)
    ds = datasets.load(cfg.dataset, root=cfg.data_root, n_train=cfg.n_train, seed=cfg.seed)
    problem = dataclasses.replace(_setup(cfg, ds), schedule="pipelined")
    params, buffers = init_params(problem.graph, problem.partition, cfg.seed, cfg.dtype)
    batches = make_batches(ds, cfg.batch, cfg.epochs, cfg.seed, args.steps) if with_data else None
    return problem, params, buffers, batches


def make_batches(ds, batch: int, epochs: int, seed: int, steps: int | None = None) -> list[Batch]:
    """Normalised batches, epoch by epoch in the order of ``default_rng([seed, epoch])``."""
    from . import data as datasets

    out: list[Batch] = []
    for epoch in range(epochs):
        x = datasets.normalize(ds.x_train, ds.mean, ds.std)
        for xb, yb, _ in datasets.batches(x, ds.y_train, batch, np.random.default_rng([seed, epoch])):
            if steps is not None and len(out) >= steps:
                return out
            out.append(Batch(xb, yb, len(out)))
    return out


def _fault(text):
    if text is None:
        return None
    rank, tick, *how = text.split(":")
    return (int(rank), int(tick), *how)


def main(argv=None) -> int:
    """The rank program: every rank of ``mpiexec -n K`` runs this."""
    from mpi4py import MPI

    from backlink.reference.distributed import run_distributed

    args = build_parser().parse_args(argv)
    rank = MPI.COMM_WORLD.rank
    problem, params, buffers, batches = setup(args, with_data=rank == 0)
    result = run_distributed(problem, batches, params, buffers, out=args.out, resume=args.resume,
                             timeout_s=args.timeout, fail_at=_fault(args.inject_fault))
    if rank == 0:
        n = sum(len(b.y) for b in batches)
        last = {k: v[max(v)] for k, v in result["losses"].items() if v}
        print(f"{problem.method.kind} on {MPI.COMM_WORLD.size} ranks: {result['batches']} batches, "
              f"{len(result['events'])} update events, {n / result['seconds']:.1f} samples/s; "
              f"last loss per module {last}" + (f"; wrote {args.out}" if args.out else ""))
    return 0


# ------------------------------------------------------------------- launcher

def mpiexec_path() -> str | None:
    """mpiexec beside this Python (the mpich wheel installs it there), else on PATH."""
    here = Path(os.path.realpath(sys.executable)).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def n_ranks(args) -> int:
    """Ranks a run needs: one per module."""
    if args.method == "bp":
        return 1
    return len(args.cuts) + 1 if args.cuts else args.K


def launch(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run the rank program under ``mpiexec -n K`` and return the finished process."""
    exe = mpiexec_path()
    if exe is None:
        raise FileNotFoundError("mpiexec not found: pip install 'backlink[mpi]' (mpi4py + the mpich wheel)")
    n = n_ranks(build_parser().parse_args(argv))
    cmd = [exe, "-n", str(n), sys.executable, "-m", "backlink.experiments.mpi_runner", "rank", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(cmd, timeout=timeout, env=env)


def add_subcommand(sub) -> None:
    """``backlink mpi ...``: for the CLI's list of contributed subcommands."""
    p = sub.add_parser("mpi", help="pipelined training with one module per MPI rank (spawns mpiexec)")
    add_arguments(p)
    p.set_defaults(func=lambda args: launch(_argv(args)).returncode)


def _argv(args) -> list[str]:
    """Rebuild the rank program's arguments from a parsed namespace."""
    out = []
    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value, flag = getattr(args, action.dest, action.default), action.option_strings[0]
        if value == action.default:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            out.append(flag)
        else:
            out += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return out


if __name__ == "__main__":  # "rank ARGS": the rank program under mpiexec; otherwise the launcher
    if sys.argv[1:2] == ["rank"]:
        raise SystemExit(main(sys.argv[2:]))
    raise SystemExit(launch(sys.argv[1:]).returncode)
