"""The BL-7.6 cost table in the paper's layout: memory and simulated runtime saved vs BP.

    python benchmarks/costs_table.py [--long] [--check]

ResNet-32 (batch 1024) and ResNet-110 (batch 128), K in {2, 4, 8, 16}, P in {0..3}:
peak activation memory of the reference order (spec BL-7.2) and simulated runtime of
the pipelined methods (BL-7.5), each as the share saved against BP, with the paper's
ResNet-110 claims underneath. ``--long`` adds the full table of ``backlink costs``.
``--check`` also measures one small configuration per method on the reference engine
and stops with an error unless it equals the model, byte for byte. Nothing is
trained; the table takes about a second.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from backlink.reference.costs import cost_rows, format_paper_table, format_table, paper_footer
from backlink.reference.memory import activation_bytes, measure
from backlink.reference.models import build_model, even_cuts, init_params, make_partition
from backlink.spec import Method


def check_model_against_engine(n: int = 8) -> list[str]:
    """Measured peak == modelled peak for BP, greedy and BackLink(1, 2) on a small ResNet."""
    graph = build_model("resnet20", input_shape=(16, 16, 3))
    part = make_partition(graph, even_cuts(graph, 4))
    params, buffers = init_params(graph, part, 0, "float32")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, 16, 16, 3)).astype("float32"), rng.integers(0, 10, n)
    lines = []
    for method in (Method("bp"), Method("greedy"), Method("backlink", link_length=1),
                   Method("backlink", link_length=2)):
        model = activation_bytes(graph, part, method, n, "float32").peak
        got = measure(graph, part, method, params, buffers, x, y)
        if got != model:
            raise SystemExit(f"{method.kind} P={method.P}: measured {got} B, model {model} B")
        lines.append(f"{method.kind:>8} P={method.P}: {got} B measured = model")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--long", action="store_true", help="also print the full table")
    p.add_argument("--check", action="store_true", help="check the memory model on the engine first")
    args = p.parse_args(argv)
    if args.check:
        print("\n".join(check_model_against_engine()) + "\n")
    rows = cost_rows()
    print(format_paper_table(rows))
    if args.long:
        print("\n" + format_table(rows))
    print("\n" + paper_footer(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
