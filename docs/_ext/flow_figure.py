"""Draw the gradient flow of BP, greedy and BackLink from the spec's own reach sets.

The figure is computed, not drawn by hand: a six-unit chain cut into three modules is
given to :func:`backlink.spec.reach_sets`, and each loss's backward arrow spans exactly
the units its reach set covers (solid: own module and head, dashed: linked tail).
Sphinx runs it at ``builder-inited``; ``python docs/_ext/flow_figure.py OUT.png`` runs it
by hand.
"""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["chain_problem", "reach_units", "draw", "setup"]

N_UNITS, CUTS, LINK = 6, (2, 4), 1
MODULE_COLOURS = ("#dbe9f6", "#fde2cf", "#dcefd8")
LOSS_COLOURS = ("#1f5fa8", "#c8501e", "#2e7d32")


def chain_problem():
    """A chain of ``linear`` units, its partition, and the three methods drawn."""
    from backlink.spec import ArraySpec, Graph, Method, Op, Partition, Unit

    def dense(name, x):
        w, b = ArraySpec(f"{name}.w", (2, 2), "he", 2), ArraySpec(f"{name}.b", (2,), "zeros")
        return Unit(name, (Op(f"{name}.y", "linear", (x,), (w.id, b.id), attrs=(("out", 2),)),), (w, b))

    units, x = [], "x"
    for i in range(1, N_UNITS + 1):
        units.append(dense(f"u{i}", x))
        x = f"u{i}.y"
    graph = Graph("chain", (2,), 2, tuple(units))
    heads = tuple(dense(f"a{k}", f"u{c}.y") for k, c in enumerate(CUTS, 1))
    methods = (("BP (end-to-end)", Method("bp")),
               ("Greedy local (BackLink with P = 0)", Method("greedy")),
               (f"BackLink, P = {LINK}", Method("backlink", link_length=LINK)))
    return graph, Partition(CUTS, heads), methods


def reach_units(graph, reach):
    """(own unit indices, tail unit indices), 0-based, of one reach set."""
    def covered(ids):
        return sorted(i for i, u in enumerate(graph.units) if {p.id for p in u.params} <= ids)
    return covered(reach.own), covered(reach.tail)


def _unit_box(ax, i, module, label):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((i + 0.12, -0.32), 0.76, 0.64, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=MODULE_COLOURS[module % 3], edgecolor="#555555", linewidth=1))
    ax.text(i + 0.5, 0, label, ha="center", va="center", fontsize=10)


def _loss_marker(ax, x, y, k, colour):
    ax.text(x, y, f"$L_{k}$", ha="center", va="center", fontsize=11, color=colour,
            bbox=dict(boxstyle="circle,pad=0.15", facecolor="white", edgecolor=colour))


def _backward(ax, start, stop, y, colour, dashed):
    """A backward arrow from x=start leftwards to x=stop, ending on a stop bar."""
    ax.annotate("", xy=(stop, y), xytext=(start, y),
                arrowprops=dict(arrowstyle="-|>", color=colour, lw=2, linestyle="--" if dashed else "-",
                                shrinkA=0, shrinkB=0))


def _stop_bar(ax, x, y, colour):
    ax.plot([x, x], [y - 0.09, y + 0.09], color=colour, lw=2.5, solid_capstyle="butt")


def _panel(ax, graph, partition, title, method):
    from backlink.spec import module_bounds, reach_sets

    bounds = module_bounds(len(graph.units), partition, method)
    for k, (a, b) in enumerate(bounds):
        for i in range(a, b):
            _unit_box(ax, i, k if len(bounds) > 1 else 0, f"$u_{i + 1}$")
    for i in range(len(graph.units) - 1):  # forward arrows between units
        ax.annotate("", xy=(i + 1.12, 0), xytext=(i + 0.88, 0),
                    arrowprops=dict(arrowstyle="->", color="#777777", lw=1))
    for r in reach_sets(graph, partition, method):
        k, colour = r.loss, LOSS_COLOURS[(r.loss - 1) % 3]
        own, tail = reach_units(graph, r)
        end = bounds[k - 1][1]
        y = -0.62 - 0.2 * ((k - 1) % 2)
        _loss_marker(ax, end + 0.05 if k == len(bounds) else end - 0.5, 0.72, k, colour)
        if k < len(bounds):
            ax.plot([end - 0.5, end - 0.5], [0.32, 0.55], color=colour, lw=1)
        ax.plot([end - 0.02, end - 0.02], [0.5 if k == len(bounds) else 0.32, y], color=colour, lw=1.2)
        _backward(ax, end - 0.02, min(own) + 0.02, y, colour, dashed=False)
        stop = min(own) + 0.02
        if tail:
            _backward(ax, min(own) + 0.02, min(tail) + 0.02, y, colour, dashed=True)
            stop = min(tail) + 0.02
        if stop > 0.1:
            _stop_bar(ax, stop, y, colour)
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlim(-0.1, len(graph.units) + 0.5)
    ax.set_ylim(-1.0, 1.0)
    ax.axis("off")


def draw(out: Path) -> Path:
    """Write the figure to ``out`` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    graph, partition, methods = chain_problem()
    fig, axes = plt.subplots(len(methods), 1, figsize=(8.2, 6.6))
    for ax, (title, method) in zip(axes, methods):
        _panel(ax, graph, partition, title, method)
    legend = [Line2D([], [], color="#444444", lw=2, label=r"backward pass of $L_k$ through its module (and head)"),
              Line2D([], [], color="#444444", lw=2, ls="--", label=r"BackLink: into the last $P$ units of the previous module, scaled by $\beta$"),
              Line2D([], [], color="#444444", lw=2.5, marker="|", markersize=12, ls="none", label="backward pass stops")]
    fig.legend(handles=legend, loc="lower center", ncol=1, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def _on_builder_inited(app) -> None:
    draw(Path(app.srcdir) / "_generated" / "flow.png")


def setup(app):
    app.connect("builder-inited", _on_builder_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    print(draw(Path(sys.argv[1] if len(sys.argv) > 1 else "flow.png")))
