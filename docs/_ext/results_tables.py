"""Tables of committed sweep results, generated (never typed): docs/results/<name>/summary.json.

For every results folder it writes ``_generated/results/<name>.md``: the command that
produced it and its mean +- std table (``backlink.experiments.aggregate.markdown_table``);
and ``_generated/results/link_by_model.md``: one line per folder comparing BP, greedy and
BackLink at the folder's K (what the link buys for each model). Pages ``{include}`` them.
Run ``python docs/_ext/results_tables.py`` to print them without Sphinx.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["RESULTS", "results_page", "link_by_model", "write_all", "setup"]

DOCS = Path(__file__).resolve().parents[1]
RESULTS = DOCS / "results"


def _load(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def results_page(folder: Path) -> str:
    from backlink.experiments.aggregate import markdown_table

    data = _load(folder)
    meta = data["meta"]
    return (f"```console\n$ {meta['command']}\n```\n\n{markdown_table(data['rows'])}\n\n"
            f"Test accuracy: mean ± std (sample std) over seeds {meta['grid']['seeds']}; "
            f"gap closed = (BackLink - greedy) / (BP - greedy) from the means.\n")


def _pct(row, key="acc_mean", std="acc_std") -> str:
    return "-" if row is None or row.get(key) is None else f"{100 * row[key]:.2f} ± {100 * row[std]:.2f}"


def link_by_model(folders) -> str:
    lines = ["| model | data | epochs | K | P | BP | greedy | BackLink | BackLink - greedy | gap closed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for folder in folders:
        data = _load(folder)
        base, rows = data["meta"]["base"], data["rows"]
        bp = next((r for r in rows if r["method"] == "bp"), None)
        for bl in (r for r in rows if r["method"] == "backlink"):
            greedy = next((r for r in rows if r["method"] == "greedy" and r["K"] == bl["K"]), None)
            diff = "-" if greedy is None else f"{100 * (bl['acc_mean'] - greedy['acc_mean']):+.2f}"
            gap = "-" if bl.get("gap_closed") is None else f"{100 * bl['gap_closed']:.0f}%"
            data_name = f"{base['dataset']} {base.get('n_train') or 'all'}/{base.get('n_test') or 'all'}"
            lines.append(f"| {base['model']} ({base.get('optimizer', 'sgd')}) | {data_name} | {base['epochs']} | "
                         f"{bl['K']} | {bl['P']} | {_pct(bp)} | {_pct(greedy)} | {_pct(bl)} | {diff} | {gap} |")
    return "\n".join(lines) + "\n"


def write_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    folders = sorted(p for p in RESULTS.iterdir() if (p / "summary.json").is_file()) if RESULTS.is_dir() else []
    written = []
    for folder in folders:
        path = out / f"{folder.name}.md"
        path.write_text(results_page(folder), encoding="utf-8")
        written.append(path)
    path = out / "link_by_model.md"
    path.write_text(link_by_model(folders), encoding="utf-8")
    return written + [path]


def _generate(app) -> None:
    write_all(DOCS / "_generated" / "results")


def setup(app):
    app.connect("builder-inited", _generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    for p in write_all(DOCS / "_generated" / "results"):
        print(f"--- {p.relative_to(DOCS)}\n{p.read_text(encoding='utf-8')}")
