"""Meta tests: run the conformance suite as a subprocess against mutants and the reference.

Collects each mutant's verdict and prints the kill table with ``mutants rejected: N/M``
at the end of the session.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.meta.mutants` must import here as in the subprocesses
    sys.path.insert(0, str(ROOT))

VERDICTS = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def verdicts(request):
    """(mutant, bug, rejected, caught by, message, by a quick test) rows, filled by test_mutants.py."""
    return request.config.stash.setdefault(VERDICTS, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = config.stash.get(VERDICTS, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("conformance suite vs mutants")
    width = max(len(r[0]) for r in rows)
    for name, bug, rejected, test, message, quick in rows:
        by = "quick" if quick else "sweep"
        tr.write_line(f"{name:<{width}}  {'REJECTED' if rejected else 'SURVIVED'}  {by}  {test}")
        tr.write_line(f"{'':<{width}}  bug: {bug}; {message[:140]}")
    tr.write_line(f"mutants rejected: {sum(r[2] for r in rows)}/{len(rows)}, "
                  f"{sum(r[2] and r[5] for r in rows)} of them by a quick fixed-case test")
