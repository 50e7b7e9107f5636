"""Plots of training results (matplotlib is imported only when a plot is asked for).

:func:`plot_curves`: one run per method. :func:`plot_sweep`: a sweep's summary rows
(:func:`backlink.experiments.aggregate.summarize`): accuracy vs K per method (the
layout of InfoPro's Table 2), accuracy vs P, accuracy vs peak activation memory, and
learning curves with a band of +- one std over seeds.
"""
from __future__ import annotations

from pathlib import Path

from .aggregate import group_label

__all__ = ["plot_curves", "plot_sweep"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: list[dict], path: str) -> str:
    """Test accuracy per epoch, one line per method; saves a PNG at ``path``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        c = r["config"]
        label = c["method"] + (f" (P={c['link_length']})" if c["method"] == "backlink" else "")
        h = r["history"]
        ax.plot([e["epoch"] for e in h], [100 * e["test_acc"] for e in h], marker="o", label=label)
    c = results[0]["config"]
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"{c['model']} on {c['dataset']}, K={results[-1]['K']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _series(rows):
    """Rows grouped into lines: greedy, and BackLink per (P, beta); BP apart."""
    bp = next((r for r in rows if r["method"] == "bp" and r["n"]), None)
    lines: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] == "bp" or not r["n"]:
            continue
        name = "greedy" if r["method"] == "greedy" else f"BackLink P={r['P']}" + (
            f" beta={r['beta']:g}" if r["beta"] != 1.0 else "")
        if r["head"] != "linear":
            name += f" ({r['head']} head)"
        lines.setdefault(name, []).append(r)
    return bp, lines


def _bp_band(ax, bp, horizontal=True):
    if bp is None:
        return
    m, s = 100 * bp["acc_mean"], 100 * bp["acc_std"]
    ax.axhline(m, color="k", ls="--", lw=1, label=f"BP ({m:.2f}%)")
    ax.axhspan(m - s, m + s, color="k", alpha=0.08)


def plot_sweep(rows: list[dict], folder: str, title: str = "") -> list[str]:
    """Four PNGs in ``folder``: acc_vs_K, acc_vs_P, acc_vs_memory, curves. Returns their paths."""
    plt = _plt()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bp, lines = _series(rows)
    paths = []

    def save(fig, ax, name, xlabel, ylabel="test accuracy (%)"):
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(str(path))

    fig, ax = plt.subplots(figsize=(6, 4))
    _bp_band(ax, bp)
    for name, rs in lines.items():
        rs = sorted(rs, key=lambda r: r["K"])
        ax.errorbar([r["K"] for r in rs], [100 * r["acc_mean"] for r in rs], [100 * r["acc_std"] for r in rs],
                    marker="o", capsize=3, label=name)
    Ks = sorted({r["K"] for rs in lines.values() for r in rs})
    ax.set_xscale("log", base=2)
    ax.set_xticks(Ks, [str(k) for k in Ks])
    save(fig, ax, "acc_vs_K", "K (modules)")

    fig, ax = plt.subplots(figsize=(6, 4))  # greedy is BackLink with P = 0
    _bp_band(ax, bp)
    for K in Ks:
        pts = sorted(((0 if r["method"] == "greedy" else r["P"], r) for rs in lines.values() for r in rs
                      if r["K"] == K and r["beta"] == 1.0), key=lambda pr: pr[0])
        ax.errorbar([p for p, _ in pts], [100 * r["acc_mean"] for _, r in pts],
                    [100 * r["acc_std"] for _, r in pts], marker="o", capsize=3, label=f"K={K}")
    Ps = sorted({p for rs in lines.values() for r in rs for p in [0 if r["method"] == "greedy" else r["P"]]})
    ax.set_xticks(Ps, [("0 (greedy)" if p == 0 else str(p)) for p in Ps])
    save(fig, ax, "acc_vs_P", "link length P (units)")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in ([bp] if bp else []) + [r for rs in lines.values() for r in rs]:
        ax.errorbar(r["peak_act_mb"], 100 * r["acc_mean"], 100 * r["acc_std"], marker="o", capsize=3,
                    label=group_label(r))
    save(fig, ax, "acc_vs_memory", "peak activation memory (MB, BL-7 model)")

    fig, axes = plt.subplots(1, max(len(Ks), 1), figsize=(5 * max(len(Ks), 1), 4), sharey=True, squeeze=False)
    for ax, K in zip(axes[0], Ks or [None]):
        for r in ([bp] if bp else []) + [r for rs in lines.values() for r in rs if r["K"] == K]:
            c = r["curves"]["test_acc"]
            ep = list(range(1, len(c["mean"]) + 1))
            m = [100 * v for v in c["mean"]]
            s = [100 * v for v in c["std"]]
            ax.plot(ep, m, marker=".", label=group_label(r), ls="--" if r["method"] == "bp" else "-")
            ax.fill_between(ep, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2)
        ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"{title} K={K}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(str(path))
    return paths
