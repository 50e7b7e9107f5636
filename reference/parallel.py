"""Opt-in worker threads for the reference's convolutions, batch norm and ReLU (NumPy only).

A blocked convolution (:mod:`.conv`) runs many small GEMMs, one per group of
images, with few output columns. Multi-threaded OpenBLAS splits each of those GEMMs
across cores and, on such skinny products, spends more time synchronising than
computing: measured on 2 cores, a step with 2 BLAS threads was no faster than with 1.
So the reference parallelises one level up, over the groups of images: inside
``with threads(n):`` each convolution hands contiguous runs of its groups to ``n``
threads (the caller and ``n - 1`` workers), and BLAS is held at one thread, so each
thread runs single-threaded GEMMs on its own images. Batch norm and ReLU share their
row blocks the same way. NumPy releases the GIL inside GEMMs, array copies and
elementwise loops, which is where these primitives spend their time.

Results do not depend on the thread count: groups and blocks are cut the same way for
every ``n``, each one's output is computed alone, and per-group (per-block) sums are
added in order whatever thread made them, so ``threads(n)`` gives the same bits for
every ``n``.
Holding BLAS at one thread needs ``threadpoolctl`` (the ``threads`` extra); without
``threads(...)`` nothing here is used and BLAS keeps its own setting.
"""
from __future__ import annotations

import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

__all__ = ["threads", "check_threads", "active_threads", "map_runs"]

_active = 1  # threads used by map_runs; set only by ``threads``


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backlink-conv")


@functools.cache
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError as e:
        raise ImportError("the reference's worker threads (threads > 1) hold BLAS at one thread "
                          "per worker through threadpoolctl: pip install 'backlink[threads]', "
                          "or use threads=1") from e
    return ThreadpoolController()


def active_threads() -> int:
    """The thread count convolutions use now (1 outside ``threads``)."""
    return _active


def check_threads(n) -> None:
    """Raise a clear error unless ``n`` is a usable thread count (>1 needs threadpoolctl)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"field 'threads' = {n!r}; it must be an integer >= 1")
    if n > 1:
        _blas_controller()


@contextlib.contextmanager
def threads(n: int):
    """Run convolutions on ``n`` threads, each with single-threaded BLAS, inside the block.

    ``n = 1`` changes nothing (BLAS keeps its own thread setting). Not re-entrant across
    threads: one training loop sets it around its steps.
    """
    global _active
    check_threads(n)
    if n == 1:
        yield
        return
    with _blas_controller().limit(limits=1, user_api="blas"):
        before, _active = _active, n
        try:
            yield
        finally:
            _active = before


def map_runs(fn: Callable[[Sequence], object], items: Sequence) -> list:
    """``[fn(run) for run in runs]`` where the runs split ``items`` into contiguous pieces,
    one per active thread; the calling thread does the first run. Results in run order."""
    n = min(_active, len(items))
    if n <= 1:
        return [fn(items)]
    bounds = [len(items) * i // n for i in range(n + 1)]
    runs = [items[bounds[i]:bounds[i + 1]] for i in range(n)]
    futures = [_pool(n - 1).submit(fn, run) for run in runs[1:]]
    try:
        first = fn(runs[0])
    finally:  # never leave workers writing into arrays the caller may free
        rest = [f.result() for f in futures]
    return [first] + rest
