"""The conformance plugin: inert outside the suite (a project with its own ``--backend`` option
and ``backend`` fixture runs green, ``$BACKLINK_BACKEND`` imports and prints nothing), the
deprecated ``--backend`` still works for the suite, one clear usage error without a backend,
the report header, capability skips, and skips files (applied, unmatched entries warn)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pytest_run(*args: str, cwd=ROOT, env_backend: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BACKLINK_BACKEND"}
    env["COLUMNS"] = "4000"
    if env_backend:
        env["BACKLINK_BACKEND"] = env_backend
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_plugin_is_inert_for_other_test_runs(tmp_path):
    (tmp_path / "test_other.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    proc = pytest_run("-q", str(tmp_path / "test_other.py"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backlink conformance" not in proc.stdout


#: An unrelated project that owns the names the plugin used to take: a ``--backend``
#: option, a ``backend`` fixture; its test also checks that nothing imported torch.
OTHER_PROJECT_CONFTEST = """
import pytest

def pytest_addoption(parser):
    parser.addoption("--backend", default="numpy", help="this project's own backend option")

@pytest.fixture
def backend(request):
    return "ours:" + request.config.getoption("--backend")
"""
OTHER_PROJECT_TEST = """
import sys

def test_own_backend_fixture_and_option(backend):
    assert backend == "ours:jax"

def test_backlink_imported_no_torch():
    assert "torch" not in sys.modules
"""


def test_project_with_its_own_backend_option_and_fixture_runs_green(tmp_path):
    (tmp_path / "conftest.py").write_text(OTHER_PROJECT_CONFTEST)
    (tmp_path / "test_theirs.py").write_text(OTHER_PROJECT_TEST)
    # $BACKLINK_BACKEND exported (as a backend author's shell may have it): still inert
    proc = pytest_run("-q", "-p", "no:cacheprovider", "--backend", "jax", str(tmp_path), cwd=tmp_path,
                      env_backend="torch")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "2 passed" in proc.stdout, out
    assert "backlink conformance" not in out and "deprecated" not in out, out
    assert "conformance_backend" not in out, out


def test_deprecated_backend_option_still_runs_the_suite():
    proc = pytest_run("--pyargs", "backlink_conformance", "-q", "-k", "test_bl6_1_backend_members",
                      "--backend", "reference")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--backend is deprecated" in proc.stdout and "--conformance-backend" in proc.stdout, proc.stdout
    assert "1 passed" in proc.stdout, proc.stdout


def test_environment_variable_chooses_the_backend_for_the_suite():
    proc = pytest_run("--pyargs", "backlink_conformance", "-k", "test_bl6_1_backend_members",
                      env_backend="reference")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backlink conformance: backend 'reference' version" in proc.stdout, proc.stdout
    assert "1 passed" in proc.stdout, proc.stdout


def test_no_backend_is_one_usage_error_showing_both_ways():
    proc = pytest_run("--pyargs", "backlink_conformance", "--co", "-q")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert proc.stderr.count("ERROR:") == 1, proc.stderr
    for text in ("--conformance-backend NAME", "reference", "module:attr", "BACKLINK_BACKEND"):
        assert text in proc.stderr, f"usage error does not mention {text!r}:\n{proc.stderr}"


def test_unknown_backend_name_lists_installed_ones():
    proc = pytest_run("--pyargs", "backlink_conformance", "--co", "-q", "--conformance-backend", "no-such-backend")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "no installed backend" in proc.stderr and "reference" in proc.stderr, proc.stderr


def test_header_names_backend_spec_version_and_capabilities():
    from backlink.spec import SPEC_VERSION

    proc = pytest_run("conformance_tests", "--co", "-k", "test_bl6_1_backend_members", env_backend="reference")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"backend 'reference' version '0.1.0', spec {SPEC_VERSION}" in proc.stdout, proc.stdout
    assert "capabilities dtypes=('float64', 'float32')" in proc.stdout, proc.stdout


def test_missing_capabilities_skip_with_reasons():
    proc = pytest_run("--pyargs", "backlink_conformance", "-q", "-rs", "-k", "float32 or primitive",
                      "--conformance-backend", "tests.meta.variants:Float64Only")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "does not declare dtype 'float32' (capabilities.dtypes = ('float64',))" in proc.stdout, proc.stdout
    proc = pytest_run("--pyargs", "backlink_conformance", "-q", "-rs", "-k", "primitive_vjp and relu",
                      "--conformance-backend", "tests.meta.variants:NoPrimitives")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "does not declare capabilities.primitives" in proc.stdout, proc.stdout


def test_skips_file_applies_and_warns_on_unmatched_entries(tmp_path):
    skips = tmp_path / "skips.txt"
    skips.write_text("# comment\n"
                     "skip test_bl6_protocol.py::test_bl6_1_backend_members  # not today\n"
                     "xfail test_bl6_protocol.py::test_bl6_3_step_record_fields[float32]  # float32 is slow\n"
                     "skip test_nothing.py::test_gone  # stale\n")
    proc = pytest_run("--pyargs", "backlink_conformance", "-q", "-rsxX", "-k", "bl6_1_backend or bl6_3_step",
                      "--conformance-backend", "reference", "--conformance-skips", str(skips))
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "SKIPPED" in out and "not today" in out, out
    assert "XPASS" in out and "float32 is slow" in out, out
    assert "line 4: skip 'test_nothing.py::test_gone' matches no collected test" in out, out


def test_malformed_skips_file_is_a_usage_error(tmp_path):
    skips = tmp_path / "skips.txt"
    skips.write_text("ignore test_x\n")
    proc = pytest_run("--pyargs", "backlink_conformance", "--co", "-q", "--conformance-backend", "reference",
                      "--conformance-skips", str(skips))
    assert proc.returncode == 4 and "expected 'skip|xfail <test id glob> # reason'" in proc.stderr, proc.stderr


def test_device_check_fails_a_cuda_backend_that_computes_on_host():
    proc = pytest_run("--pyargs", "backlink_conformance", "-q", "-k", "runner_computes_on_device",
                      "--conformance-backend", "tests.meta.variants:HostPretendingCuda")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert ("BL-6.2: backend 'mutant-HostPretendingCuda' declares device 'cuda' but its `array_module` is numpy: "
            "the runner computes and keeps state on the host") in proc.stdout, proc.stdout[-3000:]
