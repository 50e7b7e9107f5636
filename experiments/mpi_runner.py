"""Command line of the MPI runner, and the launcher the ``backlink`` CLI can call.

Rank program (one module per rank)::

    mpiexec -n 2 python -m backlink.experiments.mpi_runner rank --model mlp --K 2 --dataset digits --steps 50

Launcher (spawns ``mpiexec -n K`` itself)::

    python -m backlink.experiments.mpi_runner --model mlp --K 2 --dataset digits --steps 50

The launcher checks everything it can before it spawns a rank (the settings, K against
the model, the run folder, a checkpoint to resume and its configuration), uses the
``mpiexec`` of the active environment, and takes its ranks down with it when it is
stopped or killed.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from backlink.spec import Batch, Problem

__all__ = ["setup", "make_batches", "build_parser", "main", "mpiexec_path", "launch", "add_subcommand",
           "n_ranks", "check_launch", "MAY_CHANGE_ON_RESUME"]

#: Settings a resumed run may change; every other one must equal the checkpoint's.
MAY_CHANGE_ON_RESUME = ("epochs", "steps", "timeout", "checkpoint_every")
_NOT_COMPARED = ("func", "command", "out", "resume", "overwrite", "inject_fault")  # where and how, not what


def _cuts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cuts must be comma-separated unit indices, e.g. 2,4; got {text!r}")


def _every(text: str):
    if text == "epoch":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--checkpoint-every takes a number of batches or 'epoch'; got {text!r}")


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
    p.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds a run")
    p.add_argument("--checkpoint-every", type=_every, default="epoch", metavar="N|epoch",
                   help="with --out: also checkpoint every N batches, or every epoch (default); "
                        "resuming from one is bit-identical to an uninterrupted run")
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
    return _setup_run(args, with_data)[:4]


def _setup_run(args, with_data: bool):
    """setup(...) and the number of training samples (one epoch)."""
    from . import data as datasets
    from backlink.reference.models import init_params
    from .train import build_problem

    cfg = _run_config(args)
    ds = datasets.load(cfg.dataset, root=cfg.data_root, n_train=cfg.n_train, seed=cfg.seed)
    problem = dataclasses.replace(build_problem(cfg, ds), schedule="pipelined")
    params, buffers = init_params(problem.graph, problem.partition, cfg.seed, cfg.dtype)
    batches = make_batches(ds, cfg.batch, cfg.epochs, cfg.seed, args.steps) if with_data else None
    return problem, params, buffers, batches, len(ds.y_train)


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


def run_info(args) -> dict:
    """The settings stored with a checkpoint, compared on --resume (all but the run's location)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_COMPARED}


def every_batches(args, ds_size: int) -> int | None:
    """--checkpoint-every in batches (None without --out)."""
    if not args.out:
        return None
    return -(-ds_size // args.batch) if args.checkpoint_every == "epoch" else args.checkpoint_every


def _set_parent_death_signal() -> None:
    """Linux: receive SIGTERM when the parent process dies, even by SIGKILL (no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _fault(text):
    if text is None:
        return None
    rank, tick, *how = text.split(":")
    return (int(rank), int(tick), *how)


def main(argv=None) -> int:
    """The rank program: every rank of ``mpiexec -n K`` runs this."""
    from mpi4py import MPI

    from backlink.reference.distributed import run_distributed

    _set_parent_death_signal()  # mpiexec (or its proxy) gone: this rank goes too
    args = build_parser().parse_args(argv)
    rank = MPI.COMM_WORLD.rank
    problem, params, buffers, batches, n_train = _setup_run(args, with_data=rank == 0)
    result = run_distributed(problem, batches, params, buffers, out=args.out, resume=args.resume,
                             timeout_s=args.timeout, checkpoint_every=every_batches(args, n_train),
                             run_info=run_info(args), fail_at=_fault(args.inject_fault))
    if rank == 0 and result.get("nothing_left"):
        print(_nothing_left(args, result))
    elif rank == 0:
        last = {k: v[max(v)] for k, v in result["losses"].items() if v}
        print(f"{problem.method.kind} on {MPI.COMM_WORLD.size} ranks: {result['batches']} batches, "
              f"{len(result['events'])} update events, {result['samples'] / result['seconds']:.1f} samples/s; "
              f"last loss per module {last}" + (f"; wrote {args.out}" if args.out else ""))
    return 0


def _nothing_left(args, result) -> str:
    """A resumed run that had already fed every batch: the figures of the run that did."""
    import json

    path = Path(args.out) / "result.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    last = {int(k): v[max(v, key=int)] for k, v in saved.get("losses", {}).items() if v}
    return (f"nothing left to do: the run in {args.out} already fed all {result['batches']} batches "
            f"(tick {result['tick']}); its last segment: {saved.get('batches', '?')} batches, "
            f"last loss per module {last}. Raise --epochs or --steps to train further")


# ------------------------------------------------------------------- launcher

def mpiexec_path() -> str | None:
    """The active environment's mpiexec: the one in this Python's own ``bin`` (a virtual
    environment, where the mpich wheel puts it), else the first on PATH. Never one found
    through the interpreter's real path: a venv's python links to a base interpreter
    whose folder may hold another MPI than the one mpi4py here was built against."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which("mpiexec")


def n_ranks(args) -> int:
    """Ranks a run needs: one per module."""
    if args.method == "bp":
        return 1
    return len(args.cuts) + 1 if args.cuts else args.K


def check_launch(args) -> int:
    """Everything checkable before a rank is spawned; returns the number of ranks.

    Raises ValueError / SpecError / FileNotFoundError naming the option to fix.
    """
    from backlink.reference.distributed import find_checkpoint, read_meta

    from .checks import check_positive_int, check_resume_config, check_run_config, probe_writable

    check_run_config(_run_config(args))
    if not (isinstance(args.timeout, (int, float)) and math.isfinite(args.timeout) and args.timeout > 0):
        raise ValueError(f"field 'timeout' (--timeout) is {args.timeout!r}; allowed: seconds > 0")
    check_positive_int("steps", args.steps, optional=True)
    if args.checkpoint_every != "epoch":
        check_positive_int("checkpoint_every", args.checkpoint_every)
    problem, *_ = setup(args, with_data=False)  # the model, the data and K against the model
    n = n_ranks(args)
    if args.out:
        out = Path(args.out)
        held = sorted(out.glob("checkpoint-rank*.npz")) if out.is_dir() else []
        if args.resume:
            _, files = find_checkpoint(out, n)
            check_resume_config(read_meta(files[0]).get("config") or {}, run_info(args), MAY_CHANGE_ON_RESUME, out,
                                defaults=run_info(build_parser().parse_args([])))
        elif held and not args.overwrite:
            raise ValueError(f"field 'out' (--out): {out} already holds a run ({held[0].name}); add --resume to "
                             f"continue it, --overwrite to start over, or choose another folder")
        elif held:
            for f in list(out.glob("checkpoint-rank*.npz")) + [out / "params.npz", out / "result.json"]:
                f.unlink(missing_ok=True)
        probe_writable(out)
    return n


def launch(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Check the run, then run the rank program under ``mpiexec -n K``; return the finished process.

    mpiexec runs in its own process group and gets SIGTERM if this process dies; SIGTERM,
    SIGINT or SIGHUP here stop the whole group (mpiexec and every rank) before exiting.
    """
    args = build_parser().parse_args(argv)
    n = check_launch(args)
    exe = mpiexec_path()
    if exe is None:
        raise FileNotFoundError(f"mpiexec not found in {Path(sys.executable).parent} nor on PATH: "
                                f"pip install 'backlink[mpi]' (mpi4py + the mpich wheel) in this environment")
    cmd = [exe, "-n", str(n), sys.executable, "-m", "backlink.experiments.mpi_runner", "rank", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_set_parent_death_signal)
    stopped: dict = {}

    def stop(signum, frame):  # only signal here: the loop below waits and escalates
        stopped.setdefault("signal", signum)
        stopped.setdefault("at", time.monotonic())
        _signal_group(proc, signal.SIGTERM)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    old = {s: signal.signal(s, stop) for s in handled} if _main_thread() else {}
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while proc.poll() is None:
            time.sleep(0.1)
            now = time.monotonic()
            if "at" in stopped and now - stopped["at"] > 5.0:
                _signal_group(proc, signal.SIGKILL)  # mpiexec did not end its ranks in time
            if deadline is not None and now > deadline:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
                raise subprocess.TimeoutExpired(cmd, timeout)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stopped:
        name = signal.Signals(stopped["signal"]).name
        print(f"backlink mpi: stopped by {name}; mpiexec and its {n} ranks were ended", file=sys.stderr)
        raise SystemExit(128 + stopped["signal"])
    return subprocess.CompletedProcess(cmd, proc.returncode)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal mpiexec's process group: mpiexec, its proxies and the ranks."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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


def _launcher_main(argv) -> int:
    from backlink.spec import SpecError

    try:
        return launch(argv).returncode
    except (SpecError, ValueError, FileNotFoundError) as e:
        print(f"backlink mpi: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # "rank ARGS": the rank program under mpiexec; otherwise the launcher
    if sys.argv[1:2] == ["rank"]:
        raise SystemExit(main(sys.argv[2:]))
    raise SystemExit(_launcher_main(sys.argv[1:]))
