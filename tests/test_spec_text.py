"""BL-1: the spec text stays consistent with the code that cites it and with backlink.spec.

The same checks run inside the docs build (docs/_ext/spec_checks.py); here they run
without Sphinx, so a plain `pytest` catches a dangling clause citation too.
"""
from __future__ import annotations

import doctest
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import spec_text  # noqa: E402

SPEC_PAGES = sorted((ROOT / "spec").glob("*.md"))


def test_every_cited_clause_is_defined():
    missing = spec_text.missing_citations()
    assert not missing, "clauses cited but not anchored in spec/*.md: " + "; ".join(
        f"{c} at {', '.join(w[:3])}" for c, w in sorted(missing.items()))


def test_no_clause_is_anchored_twice():
    assert spec_text.duplicate_anchors() == {}


def test_core_clauses_exist():
    """The clause numbers the code was written against (BL-1.6: numbers are stable)."""
    want = {"BL-2.1", "BL-2.2", "BL-2.3", "BL-2.4", "BL-2.5", "BL-2.6", "BL-2.9", "BL-3.1", "BL-3.2",
            "BL-3.3", "BL-3.4", "BL-3.5", "BL-3.6", "BL-3.7", "BL-4.1", "BL-4.2", "BL-4.3", "BL-4.4",
            "BL-4.6", "BL-5", "BL-6", "BL-6.3", "BL-7", "BL-8"}
    assert want - set(spec_text.anchors()) == set()


def test_tolerance_table_matches_the_code():
    assert spec_text.tolerance_table_problem() is None


def test_a_changed_tolerance_is_caught(tmp_path):
    page = tmp_path / "conformance.md"
    text = (ROOT / "spec" / "conformance.md").read_text()
    page.write_text(text.replace("| float32 | grad | 0.002 | 2e-05 |", "| float32 | grad | 0.003 | 2e-05 |"))
    problem = spec_text.tolerance_table_problem(page)
    assert problem is not None and "| float32 | grad | 0.003 | 2e-05 |" in problem
    spec_text.write_tolerance_table(page)
    assert spec_text.tolerance_table_problem(page) is None


def test_a_dangling_citation_is_caught(tmp_path):
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "a.md").write_text("(BL-1)=\n# BL-1 A\n\n1. (BL-1.1)=\n   item\n")
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "x.py").write_text('"""BL-1.1 and BL-1.2, see BL-1."""\n')
    assert spec_text.missing_citations(tmp_path) == {"BL-1.2": ["reference/x.py:1"]}


@pytest.mark.parametrize("page", SPEC_PAGES, ids=lambda p: p.name)
def test_spec_page_is_in_the_docs(page):
    wrapper = ROOT / "docs" / "spec" / page.name
    assert wrapper.is_file() and f"../../spec/{page.name}" in wrapper.read_text(), (
        f"{wrapper.relative_to(ROOT)} must include spec/{page.name}")


@pytest.mark.parametrize("page", SPEC_PAGES, ids=lambda p: p.name)
def test_spec_page_examples(page):
    """The ``{doctest}`` examples of the spec pages (the docs build runs them too)."""
    result = doctest.testfile(str(page), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in spec/{page.name} failed"


def test_undocumented_spec_items_are_reported():
    pytest.importorskip("sphinx")
    import spec_checks

    import backlink.spec as spec

    everything = {f"backlink.spec.{n}" for n in spec.__all__}
    everything |= {f"backlink.spec.Backend.{m}" for m in spec_checks.protocol_members(spec.Backend)}
    everything |= {f"backlink.spec.Runner.{m}" for m in spec_checks.protocol_members(spec.Runner)}
    assert spec_checks.undocumented(everything) == []
    assert "backlink.spec.Backend.prepare" in spec_checks.undocumented(everything - {"backlink.spec.Backend.prepare"})
    assert spec_checks.protocol_members(spec.Runner) == ["step"]
    assert {"name", "version", "capabilities", "prepare"} <= set(spec_checks.protocol_members(spec.Backend))
    assert len(spec_checks.undocumented(set())) == len(everything)
