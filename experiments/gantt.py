"""Gantt chart of a simulated pipeline schedule (matplotlib imported only when drawing)."""
from __future__ import annotations

from backlink.reference.simulator import KINDS, Schedule

__all__ = ["KIND_COLOURS", "plot_gantt"]

KIND_COLOURS = {"fwd": "#4c72b0", "bwd": "#dd8452", "head": "#55a868", "link": "#c44e52"}


def plot_gantt(schedule: Schedule, path: str, title: str | None = None, label_batches: bool = True) -> str:
    """Draw one row per device (device 0 on top), one bar per task coloured by kind,
    labelled with its batch number when the bar is wide enough; save a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    K = len(schedule.busy)
    span = schedule.makespan or 1.0
    fig, ax = plt.subplots(figsize=(10, 0.5 * K + 1.5))
    for t in schedule.tasks:
        if t.duration <= 0:
            continue
        ax.barh(t.device, t.duration, left=t.start, height=0.8, color=KIND_COLOURS[t.kind],
                edgecolor="black", linewidth=0.3)
        if label_batches and t.duration > 0.02 * span:  # skip labels that would not fit
            ax.text(t.start + t.duration / 2, t.device, str(t.batch), ha="center", va="center",
                    fontsize=7, color="white")
    ax.set_yticks(range(K), [f"device {k}" for k in range(K)])
    ax.set_ylim(K - 0.5, -0.5)
    ax.set_xlim(0, span)
    ax.set_xlabel("time")
    ax.set_title(title or f"{schedule.method}: makespan {schedule.makespan:.4g}")
    used = [k for k in KINDS if any(t.kind == k for t in schedule.tasks)]
    ax.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in used],
              loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=len(used), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
