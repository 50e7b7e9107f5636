"""The conformance suite rejects every mutant backend (one planted bug each) and passes the
reference, run exactly as a backend author would: a subprocess of
``python -m pytest --pyargs backlink_conformance --backend ... -x -q``.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the subprocesses import tests.meta.mutants from the checkout root
    sys.path.insert(0, str(ROOT))

#: Modules of mutant backends; each has ``MUTANTS`` (class names) and a bug-free ``Baseline``.
#: The torch mutants plant bugs in the torch backend's own code (skipped without torch).
MUTANT_MODULES = ("tests.meta.mutants", "tests.meta.mutants_pipeline", "tests.meta.mutants_vit") + \
    (("tests.meta.mutants_torch",) if importlib.util.find_spec("torch") else ())
CASES = [(module, name) for module in MUTANT_MODULES for name in importlib.import_module(module).MUTANTS]

SUITE = [sys.executable, "-m", "pytest", "--pyargs", "backlink_conformance", "-x", "-q", "-p", "no:randomly"]
FAILED = re.compile(r"^FAILED (\S+)(?: - (.*))?$", re.MULTILINE)


def run_suite(backend: str, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BACKLINK_BACKEND"}
    env["COLUMNS"] = "4000"  # keep the short summary's failure message whole
    return subprocess.run([*SUITE, "--backend", backend, *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def first_failure(output: str) -> tuple[str, str]:
    """(test id, message) of the short summary's FAILED line."""
    m = FAILED.search(output)
    return (m.group(1).split("/")[-1], (m.group(2) or "").strip()) if m else ("-", "")


@pytest.mark.parametrize("module, name", CASES, ids=[name for _, name in CASES])
def test_suite_rejects_mutant(module, name, verdicts):
    bug = getattr(importlib.import_module(module), name).bug
    proc = run_suite(f"{module}:{name}")
    test, message = first_failure(proc.stdout)
    verdicts.append((name, bug, proc.returncode == 1, test, message))
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 1, (f"mutant {name} ({bug}) {'PASSED' if proc.returncode == 0 else 'crashed'} "
                                  f"the conformance suite (exit {proc.returncode}):\n{tail}")
    assert re.search(r"BL-\d", message), (f"mutant {name} was rejected by {test}, but not by an assertion "
                                          f"naming a clause: {message!r}\n{tail}")


def test_reference_passes_the_suite():
    proc = run_suite("reference")
    assert proc.returncode == 0, f"the reference backend fails its own suite:\n{proc.stdout[-4000:]}"


@pytest.mark.parametrize("module", MUTANT_MODULES)
def test_mutant_baseline_passes_the_suite(module):
    """The mutants' machinery without a bug passes: each mutant differs only by its bug."""
    proc = run_suite(f"{module}:Baseline")
    assert proc.returncode == 0, f"the bug-free {module}:Baseline fails the suite:\n{proc.stdout[-4000:]}"


def test_there_are_enough_mutants():
    assert len(CASES) >= 20, f"only {len(CASES)} mutants: {CASES}"
