"""``backlink sweep``: a grid of runs (methods x K x P x beta x head x seeds), one folder each.

A sweep folder holds ``sweep.json`` (the base config and grid), ``runs/<cell>/``
(each a :func:`~backlink.experiments.train.train` run folder: ``checkpoint.npz``,
``result.json``), and the aggregates of :mod:`.aggregate` (``summary.csv``,
``summary.json``, ``plots/``). Re-running the same command skips finished cells and
resumes an interrupted one from its checkpoint. ``jobs`` > 1 runs cells in that many
worker processes, each with one BLAS/torch thread.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import queue as queue_module
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from backlink.spec import SpecError

from . import data as datasets
from .allocator import keep_freed_memory
from .checkpoints import CHECKPOINT
from .train import RESULT, RunConfig, TrainingDiverged, build_problem, train

__all__ = ["Grid", "cells", "run_sweep", "load_results", "wall_seconds", "GRID_FIELDS", "DIVERGED", "SESSIONS"]

#: RunConfig fields a grid sets per cell; the rest is the sweep's base config.
GRID_FIELDS = ("method", "K", "link_length", "beta", "head", "seed")
#: Per-run fields that are not part of what a run computes.
RUN_ONLY = ("out", "resume", "progress", "overwrite", "checkpoint_every")
DIVERGED = "diverged.json"
SESSIONS = "sessions.json"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Grid:
    methods: tuple[str, ...] = ("bp", "greedy", "backlink")
    Ks: tuple[int, ...] = (4,)
    Ps: tuple[int, ...] = (1,)
    betas: tuple[float, ...] = (1.0,)
    heads: tuple[str, ...] = ("linear",)
    seeds: tuple[int, ...] = (0, 1, 2)


def _cell_name(c: RunConfig) -> str:
    if c.method == "bp":
        return f"bp_seed{c.seed}"
    name = f"{c.method}_K{c.K}_{c.head}"
    if c.method == "backlink":
        name += f"_P{c.link_length}_beta{c.beta:g}"
    return f"{name}_seed{c.seed}"


def cells(base: RunConfig, grid: Grid) -> list[tuple[str, RunConfig]]:
    """(folder name, config) of every distinct run, seed-major (seed 0's cells first).

    BP has one cell per seed (no K, P, head); greedy ignores P and beta.
    """
    out: dict[str, RunConfig] = {}
    for seed in grid.seeds:
        for m in grid.methods:
            for K in ((1,) if m == "bp" else grid.Ks):
                for head in ((base.head,) if m == "bp" else grid.heads):
                    for P in (grid.Ps if m == "backlink" else (base.link_length,)):
                        for beta in (grid.betas if m == "backlink" else (base.beta,)):
                            c = dataclasses.replace(base, method=m, K=K, link_length=P, beta=beta,
                                                    head=head, seed=seed, cuts=None)
                            out.setdefault(_cell_name(c), c)
    return list(out.items())


def _base_record(base: RunConfig) -> dict:
    d = dataclasses.asdict(base)
    return {k: v for k, v in d.items() if k not in GRID_FIELDS + RUN_ONLY}


def _check_sweep_file(path: Path, base: RunConfig, grid: Grid) -> None:
    """A re-run must train what the first run trained; the grid may grow."""
    mine = _base_record(base)
    if path.exists():
        # a field added to RunConfig after the sweep started counts as its default there
        theirs = {**_base_record(RunConfig()), **json.loads(path.read_text())["base"]}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)
                      and not (isinstance(theirs.get(k), list) and tuple(theirs[k]) == mine.get(k)))
        if diff:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now" for k in diff)
            raise SpecError(f"sweep folder {path.parent} was made with other settings ({shown}); "
                            f"re-run with the same options or give another --out")
    path.write_text(json.dumps({"base": mine, "grid": dataclasses.asdict(grid)}, indent=2))


@functools.lru_cache(maxsize=2)
def _dataset(name, root, n_train, n_test, seed):
    return datasets.load(name, root=root, n_train=n_train, n_test=n_test, seed=seed)


def _steps_of(cfg: RunConfig, folder: Path, n_train: int) -> tuple[int, int]:
    """(total steps, steps already done) of one cell."""
    spe = -(-n_train // cfg.batch)
    total = cfg.epochs * spe
    if (folder / RESULT).exists() or (folder / DIVERGED).exists():
        return total, total
    if (folder / CHECKPOINT).exists():
        from .checkpoints import load_checkpoint

        meta = load_checkpoint(folder / CHECKPOINT)[1]
        return total, meta["epoch"] * spe + meta["batch"]
    return total, 0


class _Reporter:
    """Sends step counts to the parent at most every ``every`` seconds."""

    def __init__(self, q, every: float = 2.0):
        self.q, self.every, self.n, self.last = q, every, 0, time.monotonic()

    def __call__(self, losses: dict) -> None:
        self.n += 1
        if time.monotonic() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.n:
            self.q.put(self.n)
        self.n, self.last = 0, time.monotonic()


_QUEUE = None


def _init_worker(q) -> None:
    """Runs in each worker; its one thread comes from THREAD_VARS, set before the spawn."""
    global _QUEUE
    _QUEUE = q
    keep_freed_memory()


def _run_cell(cfg: RunConfig, on_step=None) -> dict:
    """Train one cell (resuming from its checkpoint); a divergence is recorded, not raised."""
    ds = _dataset(cfg.dataset, cfg.data_root, cfg.n_train, cfg.n_test, cfg.seed)
    try:
        return train(cfg, ds, on_step=on_step)
    except TrainingDiverged as e:
        record = {"config": dataclasses.asdict(cfg), "diverged": str(e)}
        (Path(cfg.out) / DIVERGED).write_text(json.dumps(record, indent=2))
        return record


def _run_cell_in_worker(cfg: RunConfig) -> dict:
    if cfg.backend == "torch":  # torch reads OMP_NUM_THREADS too; this makes it explicit
        import torch

        torch.set_num_threads(1)
    reporter = _Reporter(_QUEUE)
    try:
        return _run_cell(cfg, reporter)
    finally:
        reporter.flush()


def run_sweep(base: RunConfig, grid: Grid, out: str, jobs: int = 1, progress: bool = True) -> list[dict]:
    """Run every unfinished cell; returns the results of all cells (finished or diverged)."""
    if jobs < 1:
        raise SpecError(f"field 'jobs' is {jobs}; it must be >= 1")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    _check_sweep_file(root / "sweep.json", base, grid)
    todo, total, done = [], 0, 0
    ds = _dataset(base.dataset, base.data_root, base.n_train, base.n_test, base.seed)
    n_train = len(ds.y_train)
    for name, cfg in cells(base, grid):
        try:  # every cell checked before any trains: a bad K/P pair fails in seconds, not hours
            build_problem(cfg, ds).validate()
        except SpecError as e:
            raise SpecError(f"cell {name}: {e}") from None
        folder = root / "runs" / name
        cfg = dataclasses.replace(cfg, out=str(folder), resume=(folder / CHECKPOINT).is_file(), progress=False)
        t, d = _steps_of(cfg, folder, n_train)
        total, done = total + t, done + d
        if d < t:
            todo.append((d > 0, name, cfg))
    todo.sort(key=lambda item: not item[0])  # the interrupted cell first
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "jobs": jobs,
               "runs_to_do": len(todo), "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, unit="step", smoothing=0.02,
                   desc=f"sweep: {len(todo)} of {len(cells(base, grid))} runs to do")
    path = root / SESSIONS
    earlier = json.loads(path.read_text()) if path.exists() else []
    last_log = [0.0]

    def log(final: bool = False) -> None:  # every minute, so a killed sweep's time still counts
        now = time.perf_counter()
        if final or now - last_log[0] >= 60:
            session["seconds"] = now - t0
            path.write_text(json.dumps(earlier + [session], indent=1))
            last_log[0] = now

    log(final=True)
    try:
        _execute([cfg for _, _, cfg in todo], jobs, bar, log)
        session["completed"] = True
    finally:
        if bar:
            bar.close()
        log(final=True)
    return load_results(root, base, grid)


def wall_seconds(root) -> float:
    """Wall time of every invocation of the sweep in ``root``, summed (0 when none logged)."""
    path = Path(root) / SESSIONS
    return sum(s["seconds"] for s in json.loads(path.read_text())) if path.exists() else 0.0


def _execute(configs: list[RunConfig], jobs: int, bar, tick=lambda: None) -> None:
    """Train ``configs``; ``tick()`` is called about every second (session bookkeeping)."""
    if jobs == 1 or len(configs) <= 1:
        for cfg in configs:
            _run_cell(cfg, (lambda _: bar.update()) if bar else None)
            tick()
        return
    with _one_thread_children():
        _execute_in_workers(configs, jobs, bar, tick)


@contextlib.contextmanager
def _one_thread_children():
    """THREAD_VARS at 1 while the block runs (spawned workers inherit them), then as before."""
    before = {var: os.environ.get(var) for var in THREAD_VARS}
    os.environ.update(dict.fromkeys(THREAD_VARS, "1"))
    try:
        yield
    finally:
        for var, value in before.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _execute_in_workers(configs: list[RunConfig], jobs: int, bar, tick) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    q = manager.Queue()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(q,))
    stop_on_term = _interrupt_on_sigterm()
    try:
        pending = {pool.submit(_run_cell_in_worker, cfg) for cfg in configs}
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            _drain(q, bar)
            tick()
            for f in finished:
                f.result()  # re-raise a worker's error here
        _drain(q, bar)
    except BaseException:
        # Interrupted, or a cell failed: stop the other workers now rather than let them
        # finish (or start) runs; their checkpoints are atomic, a re-run resumes them.
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        manager.shutdown()
        stop_on_term()


def _interrupt_on_sigterm():
    """``kill PID`` of a sweep stops its workers too (as Ctrl-C does); returns the undo."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, old)


def _drain(q, bar) -> None:
    while True:
        try:
            n = q.get_nowait()
        except queue_module.Empty:
            return
        if bar:
            bar.update(n)


def load_results(root: Path, base: RunConfig, grid: Grid) -> list[dict]:
    """The result (or divergence record) of every finished cell of the grid, in cell order."""
    out = []
    for name, _ in cells(base, grid):
        for f in (RESULT, DIVERGED):
            path = Path(root) / "runs" / name / f
            if path.exists():
                out.append({"cell": name, **json.loads(path.read_text())})
                break
    return out
