"""Aggregates of a sweep: mean +- std over seeds per (method, K, P, beta, head), as CSV and JSON.

Columns: test accuracy, peak activation memory (the BL-7 model of the reference's
execution order, which the reference's measured bytes equal), training time per
epoch, and gap closed = (acc - greedy) / (BP - greedy) at the same K (from the means;
BackLink rows only). std is the sample standard deviation (ddof 1; 0 for one seed).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

__all__ = ["summarize", "write_summary", "format_summary", "markdown_table", "table_rows", "COLUMNS",
           "group_label"]

COLUMNS = ("method", "K", "P", "beta", "head", "n", "diverged", "epochs", "acc_mean", "acc_std",
           "peak_act_mb", "sec_per_epoch_mean", "sec_per_epoch_std", "gap_closed")
METHOD_ORDER = {"bp": 0, "greedy": 1, "backlink": 2}


def _key(r: dict) -> tuple:
    c = r["config"]
    if c["method"] == "bp":
        return ("bp", 1, 0, 1.0, "-")
    return (c["method"], c["K"], c["link_length"] if c["method"] == "backlink" else 0,
            float(c["beta"]) if c["method"] == "backlink" else 1.0, c["head"])


def group_label(row: dict) -> str:
    if row["method"] == "bp":
        return "BP"
    if row["method"] == "greedy":
        return f"greedy K={row['K']}"
    beta = "" if row["beta"] == 1.0 else f", beta={row['beta']:g}"
    return f"BackLink K={row['K']} P={row['P']}{beta}"


def _std(v) -> float:
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _curve(runs: list[dict], field: str) -> dict:
    n = min(len(r["history"]) for r in runs)
    a = np.array([[h[field] for h in r["history"][:n]] for r in runs], dtype=float)
    return {"mean": a.mean(axis=0).tolist(), "std": (a.std(axis=0, ddof=1) if len(runs) > 1
                                                     else np.zeros(n)).tolist()}


def summarize(results: list[dict]) -> list[dict]:
    """One row per group of runs that differ only in seed, with their learning curves."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(_key(r), []).append(r)
    rows = []
    for key in sorted(groups, key=lambda k: (k[1] if k[0] != "bp" else 0, METHOD_ORDER[k[0]], k[2:])):
        runs = [r for r in groups[key] if "diverged" not in r]
        method, K, P, beta, head = key
        row = {"method": method, "K": K, "P": P, "beta": beta, "head": head, "n": len(runs),
               "diverged": len(groups[key]) - len(runs),
               "seeds": sorted(r["config"]["seed"] for r in runs)}
        if runs:
            acc = [r["test_acc"] for r in runs]
            spe = [r["seconds_per_epoch"] for r in runs]
            row.update(epochs=runs[0]["config"]["epochs"], acc_mean=float(np.mean(acc)), acc_std=_std(acc),
                       peak_act_mb=runs[0]["peak_activation_bytes"] / 2**20,
                       sec_per_epoch_mean=float(np.mean(spe)), sec_per_epoch_std=_std(spe),
                       curves={"test_acc": _curve(runs, "test_acc"), "train_loss": _curve(runs, "train_loss")})
        rows.append(row)
    _gap_closed(rows)
    return rows


def _gap_closed(rows: list[dict]) -> None:
    bp = next((r for r in rows if r["method"] == "bp" and r["n"]), None)
    for r in rows:
        r["gap_closed"] = None
        if r["method"] != "backlink" or not r["n"] or bp is None:
            continue
        greedy = next((g for g in rows if g["method"] == "greedy" and g["K"] == r["K"]
                       and g["head"] == r["head"] and g["n"]), None)
        if greedy and bp["acc_mean"] != greedy["acc_mean"]:
            r["gap_closed"] = (r["acc_mean"] - greedy["acc_mean"]) / (bp["acc_mean"] - greedy["acc_mean"])


def write_summary(rows: list[dict], folder: Path, meta: dict | None = None) -> tuple[Path, Path]:
    """``summary.csv`` (the table) and ``summary.json`` (the table, curves and ``meta``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "summary.csv", folder / "summary.json"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_cell(r.get(k)) for k in COLUMNS})
    json_path.write_text(json.dumps({"meta": meta or {}, "rows": rows}, indent=1))
    return csv_path, json_path


def _csv_cell(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _pm(mean, std, scale=1.0, digits=2) -> str:
    if mean is None:
        return "-"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def table_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    """Header + one line of text cells per row (shared by the terminal and Markdown tables)."""
    out = [("method", "K", "P", "n", "test acc %", "peak act. MB", "s / epoch", "gap closed")]
    for r in rows:
        gap = "-" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f}%"
        n = f"{r['n']}" + (f" (+{r['diverged']} diverged)" if r["diverged"] else "")
        out.append((r["method"], "-" if r["method"] == "bp" else str(r["K"]),
                    str(r["P"]) if r["method"] == "backlink" else "-", n,
                    _pm(r.get("acc_mean"), r.get("acc_std"), 100),
                    "-" if r.get("peak_act_mb") is None else f"{r['peak_act_mb']:.1f}",
                    _pm(r.get("sec_per_epoch_mean"), r.get("sec_per_epoch_std"), 1, 1), gap))
    return out


def format_summary(rows: list[dict]) -> str:
    cells = table_rows(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    cells = table_rows(rows)
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---:" for _ in cells[0]) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells[1:]]
    return "\n".join(lines)
