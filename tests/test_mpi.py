"""BL-4.2.11: the MPI runner (one module per rank) against the single-process PipelinedRunner.

Each test spawns ``mpiexec -n K python -m backlink.experiments.mpi_runner rank`` on a tiny MLP
and compares the update events exactly and the parameters within the float64 ``steps``
tolerance; the fault tests check that a failing or hanging rank ends the whole job.
"""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backlink.experiments.mpi_runner import build_parser, mpiexec_path, setup
from backlink.reference.pipeline import PipelinedRunner
from backlink.spec import tolerance
from backlink.spec.pipeline import drain_ticks

pytestmark = pytest.mark.mpi

MPIEXEC = mpiexec_path()
if importlib.util.find_spec("mpi4py") is None or MPIEXEC is None:
    pytest.skip("needs mpi4py and mpiexec: pip install 'backlink[mpi]'", allow_module_level=True)

BASE = ["--model", "mlp", "--dataset", "digits", "--n-train", "200", "--batch", "32",
        "--dtype", "float64", "--lr", "0.05"]


def mpirun(n, argv, timeout=120):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "backlink.experiments.mpi_runner", "rank", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def single_process(argv, repeats=1):
    """The same run in one process: feed the batches and drain, ``repeats`` times."""
    problem, params, buffers, batches = setup(build_parser().parse_args(argv))
    runner = PipelinedRunner(problem, params, buffers)
    record = None
    for _ in range(repeats):  # a resumed run records only its own events: keep the last repeat's
        events = []
        for b in list(batches) + [None] * drain_ticks(problem):
            record = runner.step(b)
            events += record.events
    return events, record.params, record.buffers


def load_npz(path):
    with np.load(path) as z:
        return {k[2:]: z[k] for k in z.files if k.startswith("p:")}


def check_same(out: Path, argv, repeats=1):
    from backlink.reference.distributed import read_events

    events, params, _ = single_process(argv, repeats)
    assert read_events(out / "result.json") == events, "BL-4.2.4: MPI events differ from the tick table run"
    got = load_npz(out / "params.npz")
    rtol, atol = tolerance("float64", "steps")
    assert set(got) == set(params)
    for k, v in params.items():
        np.testing.assert_allclose(got[k], v, rtol=rtol, atol=atol, err_msg=f"param {k}")
    assert not list(out.glob("*.tmp")), "checkpoints must be written atomically (tmp + os.replace)"


@pytest.mark.parametrize("n,method", [(2, "greedy"), (2, "backlink"), (3, "backlink")])
def test_mpi_matches_single_process(tmp_path, n, method):
    argv = BASE + ["--K", str(n), "--method", method, "--steps", "6", "--out", str(tmp_path)]
    proc = mpirun(n, argv)
    assert proc.returncode == 0, proc.stderr
    assert "update events" in proc.stdout
    check_same(tmp_path, argv)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-rank*.npz")) == \
        [f"checkpoint-rank{r}.npz" for r in range(n)]


def test_mpi_resume_continues_the_same_run(tmp_path):
    argv = BASE + ["--K", "2", "--method", "backlink", "--steps", "4", "--out", str(tmp_path)]
    assert mpirun(2, argv).returncode == 0
    proc = mpirun(2, argv + ["--resume"])
    assert proc.returncode == 0, proc.stderr
    check_same(tmp_path, argv, repeats=2)


@pytest.mark.parametrize("n,fault", [(2, "1:3"), (3, "1:2"), (3, "0:0")])
def test_failing_rank_stops_every_rank(tmp_path, n, fault):
    argv = BASE + ["--K", str(n), "--steps", "8", "--inject-fault", fault]
    start = time.monotonic()
    proc = mpirun(n, argv, timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - start < 30
    rank = fault.split(":")[0]
    assert f"rank {rank} (module {int(rank) + 1}) failed at tick {fault.split(':')[1]}" in proc.stderr
    assert "injected fault" in proc.stderr


def test_hanging_rank_times_out(tmp_path):
    argv = BASE + ["--K", "2", "--steps", "8", "--timeout", "3", "--inject-fault", "1:2:hang"]
    start = time.monotonic()
    proc = mpirun(2, argv, timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - start < 30
    assert "rank 0 (module 1) failed at tick" in proc.stderr
    assert "CommTimeout: no progress for 3 s" in proc.stderr


def test_wrong_number_of_ranks_is_named():
    proc = mpirun(3, BASE + ["--K", "2", "--steps", "2"], timeout=60)
    assert proc.returncode != 0
    assert "mpiexec -n 2" in proc.stderr


def test_launcher_runs_mpiexec(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = BASE + ["--K", "2", "--method", "greedy", "--steps", "3", "--out", str(tmp_path)]
    proc = subprocess.run([sys.executable, "-m", "backlink.experiments.mpi_runner", *argv],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "on 2 ranks" in proc.stdout
    check_same(tmp_path, argv)
