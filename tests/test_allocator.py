"""experiments/allocator.py: after keep_freed_memory(), memory a step frees stays in the process.

Checked by behaviour, in fresh interpreters: a 64 MB array is allocated, touched and freed
in chunks; by default glibc hands those pages back (resident memory drops), after the call
it keeps them (resident memory stays).
"""
import functools
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")

PROGRAM = """
import os, sys
from backlink.experiments.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
elif sys.argv[1] == "cli":  # the backlink command, as started from a shell
    from backlink.experiments.cli import main
    try:
        main(["--version"])
    except SystemExit:
        pass
import numpy as np
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
chunks = [np.ones(1 << 20, np.float32) for _ in range(16)]  # 16 x 4 MB, touched
peak = resident()
del chunks
print((peak - resident()) / 2 ** 20)
"""


@functools.cache  # "default" is asked once per parametrized case
def returned_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])  # the last line: the CLI prints its version first


@pytest.mark.parametrize("mode", ["keep", "cli"])
def test_freed_arrays_stay_resident_only_after_keep_freed_memory(mode):
    """``cli``: the backlink command keeps freed memory in its process (it trains)."""
    if returned_mb("default") < 32:
        pytest.skip("this C library keeps freed memory by default; nothing to show")
    assert returned_mb(mode) < 8
