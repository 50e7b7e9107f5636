"""Every benchmark script starts: its imports (often from a sibling benchmark) resolve and
``--help`` exits 0. Timings are never asserted in tests (benchmarks print ratios)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
NEEDS = {"bench_cupy_vs_torch.py": "cupy", "bench_mpi_throughput.py": "mpi4py"}


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_benchmark_script_starts(script):
    needed = ["torch", NEEDS.get(script.name)]
    for module in filter(None, needed):
        pytest.importorskip(module, reason=f"{script.name} needs {module}")
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                          cwd=script.parent)
    assert proc.returncode == 0, f"{script.name} --help failed:\n{proc.stderr[-2000:]}"
