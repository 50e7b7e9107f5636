"""What the link does per model, generated from the committed sweep summaries.

``python -m backlink.experiments.report`` writes ``docs/results/NAME.json`` and the table
of each sweep into its page. This extension adds one table across them,
``_generated/results/link_by_model.md``: for every BackLink row of every summary, the
model, data, budget, K, P and the mean +- std test accuracy of BP, greedy (same K) and
BackLink, their difference and the gap closed. ``docs/vit.md`` includes it. Run
``python docs/_ext/results_tables.py`` to print it without Sphinx.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["RESULTS", "link_by_model", "write", "setup"]

DOCS = Path(__file__).resolve().parents[1]
RESULTS = DOCS / "results"
OUT = DOCS / "_generated" / "results" / "link_by_model.md"


def _pct(row) -> str:
    return "-" if row is None or row.get("acc_mean") is None else \
        f"{100 * row['acc_mean']:.2f} ± {100 * row['acc_std']:.2f}"


def link_by_model(paths) -> str:
    lines = ["| results | model | data (train/test) | epochs | optimizer | K | P | BP | greedy | BackLink "
             "| BackLink - greedy | gap closed |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for path in paths:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        base, rows = summary["meta"].get("base", {}), summary["rows"]
        bp = next((r for r in rows if r["method"] == "bp" and r.get("n")), None)
        data = f"{base.get('dataset')} {base.get('n_train') or 'all'}/{base.get('n_test') or 'all'}"
        for bl in (r for r in rows if r["method"] == "backlink" and r.get("n")):
            greedy = next((r for r in rows if r["method"] == "greedy" and r["K"] == bl["K"] and r.get("n")), None)
            diff = "-" if greedy is None else f"{100 * (bl['acc_mean'] - greedy['acc_mean']):+.2f}"
            gap = "-" if bl.get("gap_closed") is None else f"{100 * bl['gap_closed']:.0f}%"
            lines.append(f"| {Path(path).stem} | {base.get('model')} | {data} | {base.get('epochs')} | "
                         f"{base.get('optimizer', 'sgd')} | {bl['K']} | {bl['P']} | {_pct(bp)} | {_pct(greedy)} | "
                         f"{_pct(bl)} | {diff} | {gap} |")
    return "\n".join(lines) + "\n"


def write() -> Path:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(link_by_model(sorted(RESULTS.glob("*.json"))), encoding="utf-8")
    return OUT


def setup(app):
    app.connect("builder-inited", lambda app: write())
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    print(write().read_text(encoding="utf-8"))
