"""Plots of training results (matplotlib is imported only when a plot is asked for)."""
from __future__ import annotations

__all__ = ["plot_curves"]


def plot_curves(results: list[dict], path: str) -> str:
    """Test accuracy per epoch, one line per method; saves a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
