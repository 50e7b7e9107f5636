"""Facts about the spec text that the docs build and the tests both check (no Sphinx needed).

- every clause anchor ``(BL-x.y)=`` in ``spec/*.md``, and that none is defined twice;
- every ``BL-x.y`` cited by the code, and that each one has an anchor;
- the BL-5 tolerance table in ``spec/conformance.md``, generated from
  ``backlink.spec.TOLERANCES``.

Run ``python docs/_ext/spec_text.py --tolerances`` to print the table, ``--write`` to
rewrite it in place, ``--check`` to run every check and print the problems.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["ROOT", "SPEC_DIR", "anchors", "duplicate_anchors", "citations", "missing_citations",
           "tolerance_table", "tolerance_table_problem", "write_tolerance_table", "problems"]

ROOT = Path(__file__).resolve().parents[2]
SPEC_DIR = ROOT / "spec"

# A clause heading's target, or a numbered item's: "(BL-3.4)=" or "3. (BL-3.4.3)=".
ANCHOR = re.compile(r"^(?:[0-9]+\. +)?\((BL-[0-9]+(?:\.[0-9]+)*)\)=\s*$", re.M)
CITATION = re.compile(r"\bBL-[0-9]+(?:\.[0-9]+)*")
# Folders whose files may cite clauses; generated and vendored trees are skipped.
CITING_DIRS = ("spec", "reference", "backends", "conformance_tests", "tests", "benchmarks", "docs")
SKIP_PARTS = {"_build", "_generated", "_vendor", "__pycache__"}

TABLE_BEGIN = "% tolerance-table:"
TABLE_END = "% end tolerance-table"


def _rel(path: Path, root: Path = ROOT) -> str:
    """``path`` relative to the repository when it is inside it (messages name files so)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _spec_pages(spec_dir: Path = SPEC_DIR) -> list[Path]:
    return sorted(spec_dir.glob("*.md"))


def _anchor_sites(spec_dir: Path = SPEC_DIR) -> list[tuple[str, Path, int]]:
    sites = []
    for page in _spec_pages(spec_dir):
        text = page.read_text(encoding="utf-8")
        for m in ANCHOR.finditer(text):
            sites.append((m.group(1), page, text.count("\n", 0, m.start()) + 1))
    return sites


def anchors(spec_dir: Path = SPEC_DIR) -> dict[str, tuple[Path, int]]:
    """Clause number -> (page, line) of its ``(BL-x.y)=`` anchor (first one if duplicated)."""
    out: dict[str, tuple[Path, int]] = {}
    for clause, page, line in _anchor_sites(spec_dir):
        out.setdefault(clause, (page, line))
    return out


def duplicate_anchors(spec_dir: Path = SPEC_DIR) -> dict[str, list[str]]:
    """Clause numbers anchored more than once -> the places ('page:line')."""
    seen: dict[str, list[str]] = {}
    for clause, page, line in _anchor_sites(spec_dir):
        seen.setdefault(clause, []).append(f"{_rel(page)}:{line}")
    return {c: where for c, where in seen.items() if len(where) > 1}


def _citing_files(root: Path = ROOT):
    for top in CITING_DIRS:
        for path in sorted((root / top).rglob("*")):
            if path.suffix in (".py", ".md") and path.is_file() and not SKIP_PARTS & set(path.parts):
                yield path


def citations(root: Path = ROOT) -> dict[str, list[str]]:
    """Clause number -> places ('file:line') in the code and docs that cite it."""
    out: dict[str, list[str]] = {}
    for path in _citing_files(root):
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                out.setdefault(m.group(0), []).append(f"{path.relative_to(root)}:{n}")
    return out


def missing_citations(root: Path = ROOT) -> dict[str, list[str]]:
    """Cited clause numbers that no spec page anchors -> where they are cited."""
    known = anchors(root / "spec")
    return {c: where for c, where in citations(root).items() if c not in known}


def tolerance_table(tolerances=None) -> list[str]:
    """The BL-5 table as Markdown lines, from ``backlink.spec.TOLERANCES``."""
    if tolerances is None:
        from backlink.spec import TOLERANCES as tolerances
    lines = ["| dtype | quantity | rtol | atol |", "|---|---|---|---|"]
    for dtype, quantities in tolerances.items():
        for what, (rtol, atol) in quantities.items():
            lines.append(f"| {dtype} | {what} | {rtol:g} | {atol:g} |")
    return lines


def _table_span(lines: list[str]) -> tuple[int, int]:
    """Line indices of the table between the markers (first table line, end marker)."""
    begin = next((i for i, s in enumerate(lines) if s.startswith(TABLE_BEGIN)), None)
    end = next((i for i, s in enumerate(lines) if s.startswith(TABLE_END)), None)
    if begin is None or end is None or end < begin:
        raise ValueError(f"markers {TABLE_BEGIN!r} ... {TABLE_END!r} not found in spec/conformance.md")
    first = next(i for i in range(begin, end + 1) if lines[i].startswith("|") or i == end)
    return first, end


def tolerance_table_problem(page: Path = SPEC_DIR / "conformance.md") -> str | None:
    """None if the table in ``page`` equals the generated one, else what differs."""
    lines = page.read_text(encoding="utf-8").splitlines()
    try:
        first, end = _table_span(lines)
    except ValueError as e:
        return str(e)
    found = [s for s in lines[first:end] if s.strip()]
    want = tolerance_table()
    if found != want:
        return (f"the tolerance table in {_rel(page)} differs from backlink.spec.TOLERANCES; "
                f"run `python docs/_ext/spec_text.py --write` to regenerate it.\n"
                f"found:\n  " + "\n  ".join(found) + "\nwanted:\n  " + "\n  ".join(want))
    return None


def write_tolerance_table(page: Path = SPEC_DIR / "conformance.md") -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    first, end = _table_span(lines)
    lines[first:end] = tolerance_table() + [""]
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")


def problems(root: Path = ROOT) -> list[str]:
    """Every problem the checks above find, as messages (empty when all is well)."""
    out = [f"clause {c} is anchored more than once: {', '.join(w)}"
           for c, w in duplicate_anchors(root / "spec").items()]
    out += [f"{c} is cited but no spec page defines it (add a '({c})=' anchor): {', '.join(w[:5])}"
            for c, w in missing_citations(root).items()]
    table = tolerance_table_problem(root / "spec" / "conformance.md")
    return out + ([table] if table else [])


def main(argv: list[str]) -> int:
    if argv == ["--tolerances"]:
        print("\n".join(tolerance_table()))
        return 0
    if argv == ["--write"]:
        write_tolerance_table()
        return 0
    if argv == ["--check"]:
        found = problems()
        print("\n".join(found) or "spec text: no problems")
        return 1 if found else 0
    print("usage: python docs/_ext/spec_text.py --tolerances | --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
