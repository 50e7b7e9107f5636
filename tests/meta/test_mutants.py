"""The conformance suite rejects every mutant backend (one planted bug each) and passes the
reference, run exactly as a backend author would: a subprocess of
``python -m pytest --pyargs backlink_conformance --conformance-backend ... -x -q``.

Mutant modules are the files ``tests/meta/mutants*.py``, each with ``MUTANTS`` (class
names) and a bug-free ``Baseline``; a module that needs an optional dependency (torch)
is left out where it is not installed. A module with ``QUICK = True`` holds boundary
mutants that a quick fixed-case test (marker ``conformance_smoke``) must catch.
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the subprocesses import tests.meta.mutants from the checkout root
    sys.path.insert(0, str(ROOT))

OPTIONAL = {"torch", "cupy"}


def mutant_modules() -> list[str]:
    """``tests.meta.mutants*`` modules that import here (a missing torch leaves its out)."""
    found = []
    for path in sorted(Path(__file__).parent.glob("mutants*.py")):
        name = f"tests.meta.{path.stem}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name not in OPTIONAL:
                raise
            continue
        found.append(name)
    return found


MUTANT_MODULES = mutant_modules()
CASES = [(module, name) for module in MUTANT_MODULES for name in importlib.import_module(module).MUTANTS]

SUITE = [sys.executable, "-m", "pytest", "--pyargs", "backlink_conformance", "-x", "-q", "-p", "no:randomly"]
FAILED = re.compile(r"^FAILED (\S+)(?: - (.*))?$", re.MULTILINE)


def run_suite(backend: str, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BACKLINK_BACKEND"}
    env["COLUMNS"] = "4000"  # keep the short summary's failure message whole
    return subprocess.run([*SUITE, "--conformance-backend", backend, *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def short_id(nodeid: str) -> str:
    return nodeid.split("/")[-1]


def first_failure(output: str) -> tuple[str, str]:
    """(test id, message) of the short summary's FAILED line."""
    m = FAILED.search(output)
    return (short_id(m.group(1)), (m.group(2) or "").strip()) if m else ("-", "")


@pytest.fixture(scope="session")
def quick_tests() -> set[str]:
    """Ids of the suite's quick fixed-case tests (marker conformance_smoke)."""
    proc = run_suite("reference", "--co", "-m", "conformance_smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {short_id(line) for line in proc.stdout.splitlines() if "::" in line}


@pytest.mark.parametrize("module, name", CASES, ids=[name for _, name in CASES])
def test_suite_rejects_mutant(module, name, verdicts, quick_tests):
    mod = importlib.import_module(module)
    bug = getattr(mod, name).bug
    proc = run_suite(f"{module}:{name}")
    test, message = first_failure(proc.stdout)
    quick = test in quick_tests
    verdicts.append((name, bug, proc.returncode == 1, test, message, quick))
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 1, (f"mutant {name} ({bug}) {'PASSED' if proc.returncode == 0 else 'crashed'} "
                                  f"the conformance suite (exit {proc.returncode}):\n{tail}")
    assert re.search(r"BL-\d", message), (f"mutant {name} was rejected by {test}, but not by an assertion "
                                          f"naming a clause: {message!r}\n{tail}")
    if getattr(mod, "QUICK", False):
        assert quick, f"boundary mutant {name} ({bug}) was caught only by {test}, not by a quick fixed-case test"


def test_reference_passes_the_suite():
    proc = run_suite("reference")
    test, message = first_failure(proc.stdout)
    assert proc.returncode == 0, (f"the reference backend fails its own suite (exit {proc.returncode}) at {test}: "
                                  f"{message[:2000]}\n{proc.stderr[-2000:]}")


#: One module per distinct Baseline class (a module may reuse another's machinery).
BASELINES = list({id(importlib.import_module(m).Baseline): m for m in reversed(MUTANT_MODULES)}.values())[::-1]


@pytest.mark.parametrize("module", BASELINES)
def test_mutant_baseline_passes_the_suite(module):
    """The mutants' machinery without a bug passes: each mutant differs only by its bug."""
    proc = run_suite(f"{module}:Baseline")
    test, message = first_failure(proc.stdout)
    assert proc.returncode == 0, (f"the bug-free {module}:Baseline fails the suite (exit {proc.returncode}) at "
                                  f"{test}: {message[:2000]}\n{proc.stderr[-2000:]}")


def test_there_are_enough_mutants():
    assert len(CASES) >= 30, f"only {len(CASES)} mutants: {CASES}"
    assert "tests.meta.mutants_boundaries" in MUTANT_MODULES
