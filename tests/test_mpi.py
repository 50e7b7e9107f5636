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


def single_process(argv, segments=None):
    """The same run in one process: feed the batches and drain; ``segments`` (batch counts)
    drains after each segment, as a finished run that is resumed with more batches does.
    Returns the events of the last segment (what a resumed run records) and the values."""
    problem, params, buffers, batches = setup(build_parser().parse_args(argv))
    runner = PipelinedRunner(problem, params, buffers)
    record, edges = None, [0, *(segments or [len(batches)])]
    for a, b in zip(edges[:-1], edges[1:]):
        events = []
        for batch in list(batches[a:b]) + [None] * drain_ticks(problem):
            record = runner.step(batch)
            events += record.events
    return events, record.params, record.buffers


def load_npz(path):
    with np.load(path) as z:
        return {k[2:]: z[k] for k in z.files if k.startswith("p:")}


def check_same(out: Path, argv, segments=None):
    from backlink.reference.distributed import read_events

    events, params, _ = single_process(argv, segments)
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


def test_mpi_finished_run_resumed_with_more_steps_continues_from_its_drained_state(tmp_path):
    argv = BASE + ["--K", "2", "--method", "backlink", "--out", str(tmp_path)]
    assert mpirun(2, argv + ["--steps", "4"]).returncode == 0
    proc = mpirun(2, argv + ["--steps", "6", "--resume"])
    assert proc.returncode == 0, proc.stderr
    check_same(tmp_path, argv + ["--steps", "6"], segments=[4, 6])


def test_mpi_resumed_run_with_nothing_left_reports_the_original_figures(tmp_path):
    argv = BASE + ["--K", "2", "--steps", "3", "--out", str(tmp_path)]
    first = mpirun(2, argv)
    assert first.returncode == 0, first.stderr
    again = mpirun(2, argv + ["--resume"])
    assert again.returncode == 0, again.stderr
    assert "nothing left to do" in again.stdout and "all 3 batches" in again.stdout, again.stdout
    last = first.stdout.split("last loss per module ")[1].split(";")[0]
    assert last in again.stdout, (last, again.stdout)
    check_same(tmp_path, argv)  # the folder still holds the first run's results


@pytest.mark.parametrize("every,fault", [("2", "1:5")])
def test_mpi_mid_run_checkpoint_resume_is_bit_identical(tmp_path, every, fault):
    """Checkpoints every N batches hold the stored tails and the messages in flight:
    a run killed after one and resumed ends with the uninterrupted run's exact values."""
    argv = BASE + ["--K", "3", "--method", "backlink", "--P", "1", "--checkpoint-every", every]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    assert mpirun(3, argv + ["--out", str(full)]).returncode == 0
    proc = mpirun(3, argv + ["--out", str(crashed), "--inject-fault", fault])
    assert proc.returncode != 0 and "injected fault" in proc.stderr
    assert not list(crashed.glob("*.tmp"))
    proc = mpirun(3, argv + ["--out", str(crashed), "--resume"])
    assert proc.returncode == 0, proc.stderr
    a, b = load_npz(full / "params.npz"), load_npz(crashed / "params.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "resume is not bit-identical"


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
    assert "Traceback" not in proc.stderr, proc.stderr  # a timeout is one line, nothing after it
    assert proc.stderr.count("failed at tick") == 1, proc.stderr


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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished K = 2 run folder; tests copy it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    argv = BASE + ["--K", "2", "--steps", "2", "--out", str(out)]
    proc = mpirun(2, argv)
    assert proc.returncode == 0, proc.stderr
    return out, argv


def check_launch_of(argv):
    """What the launcher checks before it spawns (in this process: no rank starts)."""
    from backlink.experiments.mpi_runner import check_launch

    return check_launch(build_parser().parse_args(argv))


def with_out(argv, out):
    return argv[:argv.index("--out") + 1] + [str(out)] + argv[argv.index("--out") + 2:]


def test_resume_with_another_K_is_refused_before_spawning(finished_run):
    out, argv = finished_run
    with pytest.raises(ValueError, match=r"field 'K' \(--K\) is 3, .* K = 2 modules .* resume with --K 2"):
        check_launch_of(argv + ["--K", "3", "--resume"])


def test_resume_with_another_configuration_lists_the_differences(finished_run):
    out, argv = finished_run
    with pytest.raises(ValueError) as e:
        check_launch_of(argv + ["--lr", "0.2", "--seed", "3", "--resume"])
    for text in ("lr: checkpoint 0.05, now 0.2", "seed: checkpoint 0, now 3",
                 "may change on resume: checkpoint_every, epochs, steps, timeout"):
        assert text in str(e.value), str(e.value)
    assert check_launch_of(argv + ["--steps", "5", "--resume"]) == 2  # steps may change


def test_a_run_folder_is_not_overwritten_unless_asked(finished_run, tmp_path):
    import shutil

    out, argv = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    with pytest.raises(ValueError, match="already holds a run .* --overwrite"):
        check_launch_of(with_out(argv, copy))
    assert check_launch_of(with_out(argv, copy) + ["--overwrite"]) == 2
    assert not list(copy.glob("checkpoint-rank*")) and not (copy / "result.json").exists()


def test_the_launcher_refuses_a_mistake_in_one_line_without_spawning(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "backlink.experiments.mpi_runner", *BASE, "--K", "9"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("backlink mpi: error: field 'K'"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_mpiexec_comes_from_the_environment_not_the_interpreter_realpath(tmp_path, monkeypatch):
    from backlink.experiments import mpi_runner

    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    monkeypatch.setattr(mpi_runner.sys, "executable", str(venv_bin / "python"))
    path_bin = tmp_path / "path-bin"
    path_bin.mkdir()
    (path_bin / "mpiexec").write_text("#!/bin/sh\n")
    (path_bin / "mpiexec").chmod(0o755)
    monkeypatch.setenv("PATH", str(path_bin))
    assert mpiexec_path() == str(path_bin / "mpiexec")  # PATH, not realpath(python)/mpiexec
    (venv_bin / "mpiexec").write_text("#!/bin/sh\n")
    (venv_bin / "mpiexec").chmod(0o755)
    assert mpiexec_path() == str(venv_bin / "mpiexec")  # the venv's own bin first


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killing_the_launcher_ends_its_ranks(tmp_path, sig):
    import signal

    marker = str(tmp_path / f"kill-{sig}")
    argv = BASE + ["--K", "2", "--steps", "8", "--timeout", "100", "--inject-fault", "1:2:hang", "--out", marker]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "backlink.experiments.mpi_runner", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def ranks():
        out = subprocess.run(["pgrep", "-f", f"mpi_runner rank .*{marker}"], capture_output=True, text=True)
        return out.stdout.split()
    deadline = time.monotonic() + 60
    while len(ranks()) < 3 and time.monotonic() < deadline:  # mpiexec's command line matches too
        time.sleep(0.2)
    assert len(ranks()) == 3, "the ranks did not start"
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while ranks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ranks(), f"ranks {ranks()} survived the launcher's {sig}"
