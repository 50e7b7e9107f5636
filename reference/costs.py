"""BL-7.6: ``backlink costs``, the memory and simulated-runtime table of BP, greedy and BackLink.

For each model and batch, K modules (InfoPro's split table where one exists, else
:func:`~backlink.reference.models.even_cuts`) and link length P: the peak activation
memory of the reference execution order (:mod:`.memory`, BL-7.2) and the simulated
runtime of the decoupled pipeline on K devices (:mod:`.simulator` over
:mod:`.flops` costs, BL-7.5), each against BP and BackLink against greedy (P = 0).
Nothing is trained or timed: the table follows from the graphs.
"""
from __future__ import annotations

import argparse
import json

from backlink.spec import Method, SpecError

from .flops import partition_costs
from .memory import activation_bytes
from .models import INFOPRO_TABLES, build_model, cuts_from_table, even_cuts, make_partition
from .simulator import simulate

__all__ = ["PAPER_CLAIMS", "DEFAULT_BATCH", "cost_rows", "format_table", "format_paper_table", "paper_footer",
           "add_subcommand"]

MB = 2 ** 20
#: Guo et al., IEEE TAI 2023 (abstract): BackLink vs BP in ResNet-110.
PAPER_CLAIMS = {"model": "resnet110", "memory_reduction": 0.79, "runtime_reduction": 0.52}
#: the batch sizes of the paper's peers for these models; other models default to 128
DEFAULT_BATCH = {"resnet32": 1024, "resnet110": 128}
DEFAULTS = dict(models=("resnet32", "resnet110"), batches=None, Ks=(2, 4, 8, 16),
                Ps=(0, 1, 2, 3), granularity="block", head="linear", dtype="float32",
                sim_batches=100, comm=0.0)


def _cuts(graph, depth: int | None, K: int) -> tuple[tuple[int, ...], str]:
    """InfoPro's split for (depth, K) where it has one (semantics.md section 6), else even cuts."""
    if (depth, K) in INFOPRO_TABLES:
        return cuts_from_table(graph, INFOPRO_TABLES[depth, K]), "infopro"
    return even_cuts(graph, K), "even"


def _depth(model: str) -> int | None:
    return int(model[len("resnet"):]) if model.startswith("resnet") else None


def _model_rows(model, batch, Ks, Ps, granularity, head, dtype, sim_batches, comm, input_shape) -> list[dict]:
    resnet = model.startswith("resnet")
    kw = {"granularity": granularity} if resnet else {}
    if input_shape is not None:
        kw["input_shape"] = tuple(input_shape)
    graph = build_model(model, **kw)
    sim = dict(batches=sim_batches, comm=comm)

    def figures(part, method):  # (peak activation bytes, simulated makespan)
        mem = activation_bytes(graph, part, method, batch, dtype).peak
        kind = "bp" if method.kind == "bp" else "backlink"
        return mem, simulate(kind, **partition_costs(graph, part, batch), link_length=method.P, **sim).makespan

    bp_mem, bp_time = figures(make_partition(graph, ()), Method("bp"))
    base = dict(model=model, input_shape=list(graph.input_shape), batch=batch, dtype=dtype,
                granularity=granularity if resnet else None, head=head, sim_batches=sim_batches,
                comm=comm, bp_memory_bytes=bp_mem, bp_runtime=bp_time)
    rows = [dict(base, method="bp", K=1, cuts=[], cuts_from="-", P=None, memory_bytes=bp_mem,
                 runtime=bp_time)]
    for K in Ks:
        cuts, source = _cuts(graph, _depth(model), K)
        part = make_partition(graph, cuts, head=head)
        greedy = figures(part, Method("greedy"))
        for P in Ps:
            row = dict(base, method="greedy" if P == 0 else "backlink", K=K, cuts=list(cuts),
                       cuts_from=source, P=P)
            try:
                mem, t = greedy if P == 0 else figures(part, Method("backlink", link_length=P))
            except SpecError as e:  # P longer than a module (BL-3.5)
                rows.append(dict(row, error=str(e)))
                continue
            rows.append(dict(row, memory_bytes=mem, runtime=t, memory_vs_greedy=mem / greedy[0] - 1,
                             runtime_vs_greedy=t / greedy[1] - 1))
    for row in rows:
        if "memory_bytes" in row:
            row["memory_reduction"] = 1 - row["memory_bytes"] / bp_mem
            row["runtime_reduction"] = 1 - row["runtime"] / bp_time
    return rows


def cost_rows(models=DEFAULTS["models"], batches=DEFAULTS["batches"], Ks=DEFAULTS["Ks"],
              Ps=DEFAULTS["Ps"], granularity="block", head="linear", dtype="float32",
              sim_batches=100, comm=0.0, input_shape=None) -> list[dict]:
    """One row per (model, K, P), plus one BP row per model (see the module docstring).

    ``batches`` gives one batch size per model, or one for all, or None for
    :data:`DEFAULT_BATCH` (128 for other models). Rows whose P is longer
    than a module (BL-3.5) carry ``error`` instead of figures. ``input_shape`` (per
    sample) replaces the builders' defaults (ResNets: 32x32x3).
    """
    models = list(models)
    batches = [DEFAULT_BATCH.get(m, 128) for m in models] if batches is None else list(batches)
    if len(batches) == 1:
        batches *= len(models)
    if len(batches) != len(models):
        raise SpecError(f"field 'batch' has {len(batches)} sizes for {len(models)} models; "
                        f"give one per model or one for all")
    rows = []
    for model, batch in zip(models, batches):
        rows += _model_rows(model, batch, Ks, Ps, granularity, head, dtype, sim_batches, comm, input_shape)
    return rows


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:+.1f}%"


def _render(header, body) -> str:
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _title(r) -> str:
    shape = "x".join(map(str, r["input_shape"]))
    units = f"{r['granularity']} units" if r["granularity"] else "units"
    comm = f", {r['comm']:g} FLOP per message" if r["comm"] else ""
    return (f"{r['model']} ({shape}), batch {r['batch']}, {r['dtype']}, {r['head']} heads, P in {units}; "
            f"runtime: {r['sim_batches']} batches on K devices{comm}, in 1e12 FLOP")


def format_table(rows: list[dict]) -> str:
    """One block per model: peak activation MB and simulated runtime, vs BP and vs greedy."""
    header = ("method", "K", "cuts", "P", "peak MB", "vs BP", "runtime", "vs BP", "mem vs greedy",
              "time vs greedy")
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        body = []
        for r in mine:
            if "error" in r:
                body.append((r["method"], str(r["K"]), r["cuts_from"], str(r["P"]), "n/a (P > module)",
                             "", "", "", "", ""))
                continue
            bp, bl = r["method"] == "bp", r["method"] == "backlink"
            body.append((r["method"], str(r["K"]), r["cuts_from"], "-" if bp else str(r["P"]),
                         f"{r['memory_bytes'] / MB:.1f}", "" if bp else _pct(-r["memory_reduction"]),
                         f"{r['runtime'] / 1e12:.2f}", "" if bp else _pct(-r["runtime_reduction"]),
                         _pct(r.get("memory_vs_greedy")) if bl else "",
                         _pct(r.get("runtime_vs_greedy")) if bl else ""))
        out.append(_title(mine[0]) + "\n" + _render(header, body))
    return "\n\n".join(out)


def format_paper_table(rows: list[dict]) -> str:
    """Paper style: per model, one line per K; per P, 'memory saved / runtime saved' vs BP."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and r["method"] != "bp"]
        Ps = list(dict.fromkeys(r["P"] for r in mine))
        header = ("K", *(("greedy" if P == 0 else f"BackLink P={P}") for P in Ps))
        body = []
        for K in dict.fromkeys(r["K"] for r in mine):
            cells = {r["P"]: ("n/a" if "error" in r else
                              f"{100 * r['memory_reduction']:.0f}% / {100 * r['runtime_reduction']:.0f}%")
                     for r in mine if r["K"] == K}
            body.append((str(K), *(cells.get(P, "") for P in Ps)))
        bp = next(r for r in rows if r["model"] == model and r["method"] == "bp")
        out.append(f"{model} (batch {bp['batch']}): memory saved / simulated runtime saved vs BP "
                   f"(BP: {bp['memory_bytes'] / MB:.0f} MB)\n" + _render(header, body))
    return "\n\n".join(out)


def paper_footer(rows: list[dict]) -> str:
    """The best BackLink (P >= 1) figures of the paper's model next to the paper's claims."""
    model = PAPER_CLAIMS["model"]
    ok = [r for r in rows if r["model"] == model and r["method"] == "backlink" and "error" not in r]
    if not ok:
        return ""
    mem = max(ok, key=lambda r: r["memory_reduction"])
    run = max(ok, key=lambda r: r["runtime_reduction"])
    return (f"{model}: BackLink saves up to {100 * mem['memory_reduction']:.0f}% activation memory "
            f"(K={mem['K']}, P={mem['P']}) and up to {100 * run['runtime_reduction']:.0f}% simulated "
            f"runtime (K={run['K']}, P={run['P']}) vs BP.\n"
            f"Paper (Guo et al. 2023): up to {100 * PAPER_CLAIMS['memory_reduction']:.0f}% less memory and "
            f"{100 * PAPER_CLAIMS['runtime_reduction']:.0f}% less simulated runtime than BP in ResNet-110.\n"
            f"Not the same accounting: the paper's is not published; ours counts activations only "
            f"(BL-7.2) and FLOP-costed pipelines (BL-7.5). See spec/costs.md, BL-7.6.")


# ---------------------------------------------------------------- command line

def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs integers separated by commas, e.g. 2,4,8; got {text!r}")


def _flat(groups) -> tuple[int, ...]:
    """``--K 2 4`` and ``--K 2,4`` both give (2, 4); defaults are flat already."""
    return tuple(v for g in groups for v in (g if isinstance(g, tuple) else (g,)))


def cmd_costs(args) -> int:
    batch = None if args.batch is None else _flat(args.batch)
    for name, values, low in (("K", _flat(args.K), 1), ("P", _flat(args.P), 0), ("batch", batch or (1,), 1)):
        if min(values) < low:  # a bad value would only show up as an error row of the table
            raise SpecError(f"field '{name}' (--{name}) has {min(values)}; every value must be >= {low}")
    rows = cost_rows(args.models, batch, _flat(args.K), _flat(args.P), args.granularity,
                     args.head, args.dtype, args.batches, args.comm, args.input_shape)
    if args.json:
        print(json.dumps({"rows": rows, "paper_claims": PAPER_CLAIMS}, indent=2))
        return 0
    print(format_paper_table(rows) if args.paper else format_table(rows))
    footer = paper_footer(rows)
    if footer:
        print("\n" + footer)
    return 0


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add ``backlink costs`` to the CLI's subparsers."""
    d = DEFAULTS
    p = subparsers.add_parser("costs", help="peak activation memory and simulated runtime of BP, greedy "
                                            "and BackLink (no training)")
    p.add_argument("--models", nargs="+", default=list(d["models"]),
                   help="models (default: resnet32 resnet110), 10 classes")
    p.add_argument("--input-shape", type=_ints, default=None,
                   help="per-sample input H,W,C (default: the builder's, 32,32,3 for ResNets)")
    p.add_argument("--batch", type=_ints, nargs="+", default=None,
                   help="batch size per model, or one for all (default: resnet32 1024, resnet110 128, "
                        "others 128)")
    p.add_argument("--K", type=_ints, nargs="+", default=d["Ks"], help="module counts (default 2,4,8,16)")
    p.add_argument("--P", type=_ints, nargs="+", default=d["Ps"], help="link lengths in units (default 0,1,2,3)")
    p.add_argument("--granularity", default=d["granularity"], choices=["block", "layer"])
    p.add_argument("--head", default=d["head"], choices=["linear", "conv"])
    p.add_argument("--dtype", default=d["dtype"], choices=["float32", "float64"])
    p.add_argument("--batches", type=int, default=d["sim_batches"],
                   help="batches in the simulated run (default %(default)s)")
    p.add_argument("--comm", type=float, default=d["comm"],
                   help="cost of one inter-device message, in FLOPs (default %(default)s)")
    p.add_argument("--paper", action="store_true", help="compact table: saved memory / runtime vs BP")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_costs)
    return p
