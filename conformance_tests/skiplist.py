"""Per-backend skips/xfails files: ``skip|xfail <test id glob> # reason`` per line.

Test ids are matched as ``<file>::<test>[<params>]`` (for example
``test_bl3_reach.py::test_bl3_6_reach_sets_exact[*]``) and as pytest node ids; ``*``
and ``?`` are the only wildcards (brackets match themselves). Blank lines and ``#`` comments are ignored.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["Entry", "read_skip_file", "apply_skip_file", "short_id"]

KINDS = ("skip", "xfail")


@dataclass(frozen=True)
class Entry:
    kind: str
    pattern: str
    reason: str
    line: int


def read_skip_file(path: Path) -> list[Entry]:
    entries = []
    for n, raw in enumerate(Path(path).read_text().splitlines(), 1):
        text, _, reason = raw.partition("#")
        words = text.split()
        if not words:
            continue
        if len(words) != 2 or words[0] not in KINDS:
            raise pytest.UsageError(f"conformance skips file {path}, line {n}: {raw.strip()!r}; "
                                    f"expected 'skip|xfail <test id glob> # reason'")
        entries.append(Entry(words[0], words[1], reason.strip() or "listed in the skips file", n))
    return entries


def short_id(item) -> str:
    return f"{Path(str(item.path)).name}::{item.name}"


def _matches(entry: Entry, item) -> bool:
    pattern = entry.pattern.replace("[", "[[]")  # only * and ? are wildcards: ids contain [params]
    return any(fnmatch.fnmatchcase(i, pattern) for i in (short_id(item), item.nodeid))


def apply_skip_file(entries: list[Entry], items) -> list[Entry]:
    """Mark matching items; return the entries that matched nothing."""
    unmatched = []
    for entry in entries:
        hit = [item for item in items if _matches(entry, item)]
        mark = (pytest.mark.skip(reason=entry.reason) if entry.kind == "skip"
                else pytest.mark.xfail(reason=entry.reason, strict=False))
        for item in hit:
            item.add_marker(mark)
        if not hit:
            unmatched.append(entry)
    return unmatched
