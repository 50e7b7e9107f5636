"""The ``backlink`` command line: ``train``, ``compare`` (and ``costs``, ``mpi`` where available)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

from .allocator import keep_freed_memory

__all__ = ["main", "build_parser"]

MAIN_HELP = "BackLink local training: train and compare BP, greedy local and BackLink."


def _cuts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cuts must be comma-separated unit indices, e.g. 2,4,6; got {text!r}")


def _run_args(p: argparse.ArgumentParser, with_method: bool, grid: bool = False) -> None:
    """The run options; ``grid``: K, P, beta, head and seed take lists (``backlink sweep``)."""
    from backlink.experiments.train import RunConfig

    d = RunConfig()
    g = p.add_argument_group("model and method")
    g.add_argument("--model", default=d.model,
                   help="mlp, cnn, vgg, resnet8/14/20/32/56/110, vit (default %(default)s)")
    g.add_argument("--granularity", default=d.granularity, choices=["block", "layer"],
                   help="ResNet/ViT unit grain: link length counts these units; a ViT's layer is a "
                        "half-block (default %(default)s)")
    if with_method:
        g.add_argument("--method", default=d.method, choices=["bp", "greedy", "backlink"])
    many = dict(nargs="+") if grid else {}
    listed = (lambda v: [v]) if grid else (lambda v: v)
    g.add_argument("--K", type=int, default=listed(d.K), help="number of modules (default %(default)s)", **many)
    if not grid:
        g.add_argument("--cuts", type=_cuts, default=None, help="explicit cut points, overrides --K")
    g.add_argument("--split", default=d.split, choices=["even", "infopro"],
                   help="where K modules are cut: even (balanced unit counts, default) or infopro "
                        "(InfoPro's split tables: resnet32 K=8/16, resnet110 K=16)")
    g.add_argument("--P", "--link-length", dest="link_length", type=int, default=listed(d.link_length),
                   help="BackLink link length in units (default %(default)s)", **many)
    g.add_argument("--beta", type=float, default=listed(d.beta), **many)
    g.add_argument("--head", default=listed(d.head), choices=["linear", "conv"], **many)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help="digits, mnist5k, fashion-mnist, cifar10, cifar100, stl10, synthetic")
    g.add_argument("--data-root", default=None, help="folder holding the dataset files")
    g.add_argument("--n-train", type=int, default=None)
    g.add_argument("--n-test", type=int, default=None)
    g.add_argument("--augment", action="store_true", help="random crop (pad 4) + horizontal flip")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch", type=int, default=d.batch)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "adamw"],
                   help="sgd (BL-4.3, default) or adamw (BL-4.7: --momentum/--no-nesterov unused)")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--schedule", default=d.schedule, choices=["constant", "step", "cosine"])
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    g = p.add_argument_group("run")
    g.add_argument("--seed", "--seeds", dest="seed", type=int, default=[0, 1, 2] if grid else d.seed,
                   help="seed(s) (default %(default)s)", **many)
    g.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"])
    g.add_argument("--backend", default=d.backend, metavar="NAME",
                   help="numpy (the reference, default), cupy (the reference on a GPU), torch, or "
                        "package.module:Class (a backend defined elsewhere; BL-6)")
    g.add_argument("--device", default=d.device, choices=["cpu", "cuda"],
                   help="for backends that take one (torch: default cuda if available, else cpu); "
                        "with the reference, cuda means --backend cupy")
    if grid:
        g.add_argument("--out", required=True, help="sweep folder: sweep.json, runs/, summary.csv/json, plots/")
        g.add_argument("--jobs", type=int, default=1,
                       help="worker processes, each with one BLAS/torch thread (default %(default)s)")
    else:
        g.add_argument("--out", default=None, help="run folder for checkpoint.npz and result.json")
        g.add_argument("--resume", action="store_true",
                       help="continue from OUT/checkpoint.npz (written with the same settings; epochs may change)")
        g.add_argument("--overwrite", action="store_true", help="start over in an OUT folder that holds a run")
        g.add_argument("--checkpoint-every", default=None, metavar="N|Nmin",
                       help="also checkpoint every N steps or N minutes inside an epoch (default: after each "
                            "epoch only); resuming from one is bit-identical")
    g.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")


def _config(args):
    from backlink.experiments.train import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in vars(args).items() if k in names})


def cmd_train(args) -> int:
    from backlink.experiments.train import format_table, train

    result = train(_config(args))
    print(format_table([result]))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def cmd_compare(args) -> int:
    from backlink.experiments.train import compare, format_table

    results = compare(_config(args), methods=args.methods, plot=args.plot)
    cfg = results[0]["config"]
    print(f"\n{cfg['model']} on {cfg['dataset']}, {cfg['epochs']} epochs, batch {cfg['batch']}, "
          f"seed {cfg['seed']}, cuts {results[-1]['cuts']}")
    print(format_table(results))
    if args.plot:
        print(f"accuracy curves: {args.plot}")
    return 0


def cmd_sweep(args) -> int:
    from backlink.experiments.aggregate import format_summary, summarize, write_summary
    from backlink.experiments.plots import plot_sweep
    from backlink.experiments.sweep import Grid, run_sweep, wall_seconds
    from backlink.experiments.train import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)} - {"K", "link_length", "beta", "head", "seed"}
    base = RunConfig(**{k: v for k, v in vars(args).items() if k in names})
    grid = Grid(tuple(args.methods), tuple(args.K), tuple(args.link_length), tuple(args.beta),
                tuple(args.head), tuple(args.seed))
    results = run_sweep(base, grid, args.out, jobs=args.jobs, progress=args.progress)
    rows = summarize(results)
    write_summary(rows, args.out, meta={"command": "backlink " + shlex.join(args.argv), "grid": dataclasses.asdict(grid),
                                        "base": dataclasses.asdict(base), "jobs": args.jobs,
                                        "wall_seconds": wall_seconds(args.out)})
    print(f"\n{base.model} on {base.dataset}, {base.epochs} epochs, batch {base.batch}, backend {base.backend}, "
          f"seeds {list(grid.seeds)} (mean ± std over seeds)")
    print(format_summary(rows))
    if args.plot:
        paths = plot_sweep(rows, f"{args.out}/plots", title=f"{base.model} on {base.dataset}")
        print("plots: " + ", ".join(paths))
    print(f"table: {args.out}/summary.csv, {args.out}/summary.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from backlink import __version__
    from backlink.spec import SPEC_VERSION

    p = argparse.ArgumentParser(prog="backlink", description=MAIN_HELP)
    p.add_argument("--version", action="version", version=f"backlink {__version__} (spec {SPEC_VERSION})")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one method and print its results")
    _run_args(t, with_method=True)
    t.add_argument("--json", action="store_true", help="also print the result as JSON")
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("compare", help="train BP, greedy and BackLink on the same setup; print a table")
    _run_args(c, with_method=False)
    c.add_argument("--methods", nargs="+", default=["bp", "greedy", "backlink"],
                   choices=["bp", "greedy", "backlink"])
    c.add_argument("--plot", default=None, help="save accuracy curves to this PNG")
    c.set_defaults(func=cmd_compare)
    w = sub.add_parser("sweep", help="a grid of runs (methods x K x P x beta x head x seeds); "
                                     "mean ± std table, CSV/JSON and plots")
    _run_args(w, with_method=False, grid=True)
    w.add_argument("--methods", nargs="+", default=["bp", "greedy", "backlink"],
                   choices=["bp", "greedy", "backlink"])
    w.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG plots")
    w.set_defaults(func=cmd_sweep)
    for extra in ("reference.costs", "experiments.mpi_runner"):  # subcommands contributed by other modules
        try:
            mod = __import__(f"backlink.{extra}", fromlist=["add_subcommand"])
        except ImportError:
            continue
        if hasattr(mod, "add_subcommand"):
            mod.add_subcommand(sub)
    return p


def main(argv=None) -> int:
    keep_freed_memory()  # this process trains: a step's freed arrays stay for the next (allocator.py)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from backlink.reference.xp import DeviceUnavailable
    from backlink.spec import SpecError

    try:
        return args.func(args)
    except (SpecError, FileNotFoundError, FloatingPointError, ValueError, DeviceUnavailable) as e:
        print(f"backlink {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a failed write (disk full, read-only): not a mistake in the command
        print(f"backlink {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
