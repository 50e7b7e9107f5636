"""BL-4.2 across processes: one module per MPI rank (module k on rank k - 1).

Every rank runs the same tick loop as :class:`~backlink.reference.pipeline.PipelinedRunner`
with one :class:`~backlink.reference.pipeline.Stage`, so both produce the same update
events and parameters. Per tick, rank r receives h_{r} of the batch it forwards (sent by
rank r - 1 on the previous tick) and, when linked, the cotangent of its output (sent by
rank r + 1 on the previous tick); it sends h_{r+1} right after its forward and the
cotangent of its input right after its own backward. Messages are non-blocking
buffer-mode ``Isend``/``Irecv`` of preallocated NumPy arrays (no pickling on the hot
path): an int64 header ``[batch id, n, labels...]`` (batch id -1: no batch this tick)
and the activation or cotangent, n rows of shape ``graph.shapes[...]``. Labels travel
with the activations, so only rank 0 reads the data.

Faults: a rank that raises prints the error with its rank and tick and calls
``MPI.Abort``, which ends every rank; a rank that waits longer than ``timeout_s`` for a
neighbour does the same (in one line: a timeout is not a bug), so a dead or stuck rank
never hangs the job.

Checkpoints (one file per rank, written atomically, the previous one kept as
``.prev``) are taken at the end of a run and, with ``checkpoint_every = N``, at every
tick that feeds batch N, 2N, ... Such a tick is not a drain: each rank saves, after
receiving the tick's messages, its parameters, optimizer state, stored tail residuals
and the messages it just received, so ``resume`` continues the very same tick table
and a resumed run is bit-identical to an uninterrupted one. ``resume`` loads the
latest tick that every rank saved (a crash while saving leaves one rank a generation
ahead), and continues feeding at the batch it had reached; a finished run resumed
with more batches continues from its drained state.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from backlink.spec import Batch, Problem, SpecError, UpdateEvent, check_values
from backlink.spec.pipeline import drain_ticks, module_param_ids

from .checkpoint import CheckpointWriteError, pack, save_atomic, unpack
from .pipeline import Stage, check_problem

__all__ = ["run_distributed", "read_events", "Channel", "CommTimeout", "end_tick", "NO_BATCH",
           "checkpoint_paths", "find_checkpoint", "read_meta"]

NO_BATCH = -1
TAG_FORWARD, TAG_LINK = 10, 20  # +0 header, +1 data


class CommTimeout(RuntimeError):
    """A neighbour did not answer within ``timeout_s``."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("the distributed runner needs mpi4py and an MPI library: "
                           "pip install 'backlink[mpi]' (mpi4py + the mpich wheel)") from e
    return MPI


def _wait(requests: list, timeout_s: float, what: str) -> None:
    """Wait for ``requests``, polling, and raise :class:`CommTimeout` after ``timeout_s``.

    Polling with short sleeps (rather than a blocking Wait) bounds every wait and leaves
    the core to the other ranks when they share one.
    """
    MPI = _mpi()
    start = time.monotonic()
    while not MPI.Request.Testall(requests):
        if time.monotonic() - start > timeout_s:
            raise CommTimeout(f"no progress for {timeout_s:.0f} s while waiting for {what}; "
                              f"a neighbouring rank died or hangs")
        time.sleep(1e-4)


class Channel:
    """One direction between two neighbouring ranks, with preallocated buffers.

    ``shape``: per-sample shape of the array carried; ``labels``: whether the header
    carries the batch's labels too.
    """

    def __init__(self, comm, peer: int, tag: int, n_max: int, shape, dtype, labels: bool, timeout_s: float):
        self.comm, self.peer, self.tag, self.timeout_s = comm, peer, tag, timeout_s
        self.header = np.zeros(2 + (n_max if labels else 0), np.int64)
        self.data = np.zeros((n_max, *shape), dtype)
        self.requests: list = []

    def send(self, batch: int, array=None, y=None) -> None:
        """Isend one message (``batch`` = NO_BATCH and no array: nothing this tick)."""
        _wait(self.requests, self.timeout_s, f"rank {self.peer} to take the previous message")
        n = 0 if array is None else len(array)
        self.header[:2] = (batch, n)
        if y is not None:
            self.header[2:2 + n] = y
        if n:
            np.copyto(self.data[:n], array)
        self.requests = [self.comm.Isend(self.header, dest=self.peer, tag=self.tag),
                         self.comm.Isend(self.data[:n], dest=self.peer, tag=self.tag + 1)]

    def post(self) -> None:
        """Irecv the next message into the buffers (the data may be shorter than them)."""
        self.requests = [self.comm.Irecv(self.header, source=self.peer, tag=self.tag),
                         self.comm.Irecv(self.data, source=self.peer, tag=self.tag + 1)]

    def receive(self, repost: bool):
        """Wait for the posted message; return (batch, array, labels) or None; copies out."""
        _wait(self.requests, self.timeout_s, f"a message from rank {self.peer} (tag {self.tag})")
        batch, n = int(self.header[0]), int(self.header[1])
        msg = None if batch == NO_BATCH else (batch, self.data[:n].copy(), self.header[2:2 + n].copy())
        if repost:
            self.post()
        else:
            self.requests = []
        return msg

    def flush(self) -> None:
        _wait(self.requests, self.timeout_s, f"rank {self.peer} to take the last message")


def checkpoint_paths(out, rank: int) -> tuple[Path, Path]:
    """(latest, previous) checkpoint file of ``rank`` in the run folder ``out``."""
    return Path(out) / f"checkpoint-rank{rank}.npz", Path(out) / f"checkpoint-rank{rank}.prev.npz"


def read_meta(path) -> dict:
    with np.load(path) as z:
        return json.loads(str(z["meta"]))


def find_checkpoint(out, K: int) -> tuple[int, dict[int, Path]]:
    """The latest tick for which all ``K`` ranks hold a checkpoint in ``out``: (tick, rank -> file).

    Raises FileNotFoundError (none at all) or SpecError (written by a run with another K,
    or no tick common to every rank), naming the field to change.
    """
    out = Path(out)
    found = {r: {read_meta(p)["tick"]: p for p in checkpoint_paths(out, r) if p.exists()} for r in range(K)}
    if not any(found.values()):
        raise FileNotFoundError(f"field 'resume' (--resume): {out} holds no checkpoint-rank*.npz; "
                                f"run once without --resume first")
    metas = [read_meta(p) for ticks in found.values() for p in ticks.values()]
    others = sorted({m["K"] for m in metas if m.get("K", K) != K})
    extra = sorted(out.glob("checkpoint-rank*.npz"))
    ranks = {int(p.name[len("checkpoint-rank"):].split(".")[0]) for p in extra}
    if others or max(ranks) >= K or not all(found.values()):
        written = others[0] if others else max(ranks) + 1
        raise SpecError(f"field 'K' (--K) is {K}, but the checkpoints in {out} were written by a run "
                        f"with K = {written} modules (one file per rank); resume with --K {written}, "
                        f"or start a new run folder")
    common = set.intersection(*(set(t) for t in found.values()))
    if not common:
        raise SpecError(f"field 'resume' (--resume): the rank checkpoints in {out} are from different "
                        f"ticks { {r: sorted(t) for r, t in found.items()} }; no tick is common to every rank")
    tick = max(common)
    return tick, {r: found[r][tick] for r in range(K)}


def _restore(stage: Stage, path: Path) -> dict:
    """Load ``stage``'s state from ``path``; return the meta (tick, fed, finished) and the
    in-flight state: ``inbound`` (the messages this rank had received at that tick)."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        if meta["module"] != stage.k:
            raise SpecError(f"checkpoint {path} holds module {meta['module']}, this rank runs module {stage.k}")
        for prefix, d in (("p:", stage.params), ("b:", stage.buffers), ("s:", stage.state)):
            for key in d:
                d[key] = z[prefix + key]
        inflight = unpack(z, "r:")
    stage.updates = meta["updates"]
    stage.stash = inflight["stash"]
    meta["inbound"] = inflight["inbound"]
    return meta


def _save_checkpoint(stage: Stage, out: Path, meta: dict, inbound=None) -> None:
    """Write this rank's checkpoint; the one it replaces becomes ``.prev`` (see find_checkpoint)."""
    path, prev = checkpoint_paths(out, stage.k - 1)
    arrays = {"meta": np.array(json.dumps({"module": stage.k, "K": stage.K, "updates": stage.updates, **meta}))}
    for prefix, d in (("p:", stage.params), ("b:", stage.buffers), ("s:", stage.state)):
        arrays.update({prefix + k: np.asarray(v) for k, v in d.items()})
    arrays.update(pack({"stash": stage.stash, "inbound": inbound}, "r:"))
    if path.exists():
        os.replace(path, prev)
    save_atomic(path, arrays)


def end_tick(stage, t: int, own, link, link_out, events: list) -> None:
    """The end of a rank's tick, for every transport (MPI here, gloo in the torch backend):
    send this tick's cotangent of h_{k-1} back (or NO_BATCH; ``link_out`` None when nothing
    is sent), then one update with the own term and the link term that arrived (BL-4.2.4)."""
    if link_out:
        link_out.send(*((own.batch, own.cotangent) if own else (NO_BATCH,)))
    link_term = (link[0], stage.link_term(link[0], link[1])) if link else None
    event = stage.update(t, own, link_term)
    if event:
        events.append(event)


def _tick_loop(comm, stage: Stage, data, n_batches: int, n_max: int, start: dict, timeout_s: float,
               fail_at, where: dict, out: Path | None, every: int | None, run_info: dict | None) -> dict:
    """Feed batches ``start['fed']`` .. n_batches - 1 and drain, from tick ``start['tick']``
    (with the messages ``start['inbound']`` received at that tick, when resuming mid-run);
    checkpoint at every tick that feeds a multiple of ``every``. Return events, losses, timings."""
    problem, rank, K = stage.problem, comm.rank, stage.K
    shapes, dtype = problem.graph.shapes, np.dtype(problem.dtype)
    t0, fed0, inbound = start["tick"], start["fed"], start.get("inbound")
    T = n_batches - fed0 + drain_ticks(problem)
    own_out = stage.units[-1].output
    fwd_in = Channel(comm, rank - 1, TAG_FORWARD, n_max, shapes[stage.input], dtype, True, timeout_s) if rank else None
    fwd_out = Channel(comm, rank + 1, TAG_FORWARD, n_max, shapes[own_out], dtype, True, timeout_s) if rank < K - 1 else None
    link_in = Channel(comm, rank + 1, TAG_LINK, n_max, shapes[own_out], dtype, False, timeout_s) if stage.link_ids else None
    link_out = Channel(comm, rank - 1, TAG_LINK, n_max, shapes[stage.input], dtype, False, timeout_s) if stage.sends_link else None
    for ch in (fwd_in, link_in):
        if ch and T > 1:
            ch.post()
    events, losses, wait_s = [], {}, 0.0
    start = time.perf_counter()
    for i in range(T):
        t = where["tick"] = t0 + i
        if fail_at is not None and tuple(fail_at[:2]) == (rank, i):
            _inject(fail_at)
        more = i + 1 < T  # messages sent at tick t are received at tick t + 1
        w = time.perf_counter()
        if rank == 0:
            b = data[fed0 + i] if fed0 + i < n_batches else None
            msg = None if b is None else (int(b.id), np.asarray(b.x, dtype), np.asarray(b.y))
        elif i:
            msg = fwd_in.receive(repost=more)
        else:
            msg = inbound["msg"] if inbound else None
        if i:
            link = link_in.receive(repost=more) if link_in else None
        else:
            link = inbound["link"] if inbound else None
        wait_s += time.perf_counter() - w
        if out and every and i and fed0 + i < n_batches and (fed0 + i) % every == 0:
            _save_checkpoint(stage, out, {"tick": t, "fed": fed0 + i, "finished": False, "config": run_info},
                             {"msg": None if rank == 0 else msg, "link": link})
        own = None
        if msg:
            saved, head_saved, values = stage.forward(msg[0], msg[1], msg[2])
            if fwd_out and more:
                fwd_out.send(msg[0], values[own_out], msg[2])
            own = stage.backward_own(msg[0], saved, head_saved, values, msg[2])
            losses[t] = own.loss
        elif fwd_out and more:
            fwd_out.send(NO_BATCH)
        end_tick(stage, t, own, link, link_out if more else None, events)
    for ch in (fwd_out, link_out):
        if ch:
            ch.flush()
    return {"events": events, "losses": losses, "seconds": time.perf_counter() - start,
            "wait_seconds": wait_s, "ticks": T}


def _inject(fail_at) -> None:
    """Test hook: raise at (rank, tick), or hang there when a third item says 'hang'."""
    if len(fail_at) > 2 and fail_at[2] == "hang":
        time.sleep(3600)
    raise RuntimeError(f"injected fault (fail_at={tuple(fail_at)})")


def _abort(comm, rank: int, err: BaseException, tick) -> None:
    """Report the failure in one write, give mpiexec a moment to forward it, end every rank.

    A timeout or a user mistake (SpecError, a missing file, a failed checkpoint write) is
    one line; anything else is a bug, shown with its traceback. This process never
    returns from here: ``MPI_Abort`` may return to the caller under some MPI libraries.
    """
    at = "" if tick is None else f" at tick {tick}"
    headline = (f"backlink distributed: rank {rank} (module {rank + 1}) failed{at}: "
                f"{type(err).__name__}: {err}; aborting every rank")
    expected = isinstance(err, (CommTimeout, SpecError, FileNotFoundError, CheckpointWriteError, KeyboardInterrupt))
    sys.stderr.write(f"{headline}\n" if expected else f"{traceback.format_exc()}{headline}\n")
    sys.stderr.flush()
    time.sleep(0.5)
    try:
        comm.Abort(1)
    finally:
        os._exit(1)


def run_distributed(problem: Problem, data: Sequence[Batch] | None, params: Mapping | None = None,
                    buffers: Mapping | None = None, *, seed: int = 0, out: str | None = None,
                    resume: bool = False, timeout_s: float = 120.0, checkpoint_every: int | None = None,
                    run_info: dict | None = None, fail_at=None, comm=None) -> dict | None:
    """Train ``problem`` (schedule 'pipelined') on ``data`` with one module per MPI rank.

    Call it on every rank of ``mpiexec -n K``. ``data`` (a sequence of :class:`Batch`)
    is read on rank 0 only; other ranks may pass None. ``params``/``buffers``: initial
    values (every rank keeps only its module's); if None, ``init_params(seed)`` on each
    rank. ``out``: folder for ``checkpoint-rank{r}.npz``, ``params.npz`` and
    ``result.json``; ``checkpoint_every``: also checkpoint at every tick that feeds batch
    N, 2N, ... (``run_info``, a JSON-able dict, is stored with it for the resume checks).
    ``resume``: continue from the latest checkpoint in ``out`` (see :func:`find_checkpoint`).
    ``fail_at = (rank, tick)`` injects a fault, ``(rank, tick, 'hang')`` a hang (for tests).
    Returns the gathered result on rank 0 (events, losses, params, timings; ``nothing_left``
    when a resumed run had already fed every batch), None elsewhere.
    """
    MPI = _mpi()
    comm = comm or MPI.COMM_WORLD
    where = {"tick": None}
    try:
        return _run(comm, problem, data, params, buffers, seed, out, resume, timeout_s, fail_at, where,
                    checkpoint_every, run_info)
    except BaseException as err:  # noqa: BLE001 - every failure must end every rank
        _abort(comm, comm.rank, err, where["tick"])


def _run(comm, problem, data, params, buffers, seed, out, resume, timeout_s, fail_at, where, every, run_info):
    rank, K = comm.rank, len(module_param_ids(problem))
    if comm.size != K:
        raise SpecError(f"the job has {comm.size} MPI ranks but the partition has K = {K} modules; "
                        f"run with mpiexec -n {K} (one module per rank)")
    if params is None:
        from .models import init_params

        params, buffers = init_params(problem.graph, problem.partition, seed, problem.dtype)
    check_problem(problem, params)
    check_values(problem, params, buffers)
    stage = Stage(problem, rank + 1, params, buffers)
    del params, buffers  # this rank keeps only its module's values
    outdir = Path(out) if out else None
    if resume and not outdir:
        raise SpecError("field 'resume' needs field 'out': the folder that holds the checkpoints")
    start = {"tick": 0, "fed": 0, "inbound": None}
    if resume:
        _, files = find_checkpoint(outdir, K)
        start = _restore(stage, files[rank])
    meta = (len(data), max((len(b.y) for b in data), default=1)) if rank == 0 else None
    n_batches, n_max = comm.bcast(meta, root=0)
    if start["fed"] >= n_batches and start.get("finished", True):
        return {"nothing_left": True, "tick": start["tick"], "batches": start["fed"]} if rank == 0 else None
    if start["fed"] > n_batches:
        raise SpecError(f"the checkpoint in {outdir} is at batch {start['fed']} of an unfinished run, but this "
                        f"run has only {n_batches} batches; resume with the original --epochs/--steps or more")
    if outdir:
        outdir.mkdir(parents=True, exist_ok=True)
    comm.Barrier()
    mine = _tick_loop(comm, stage, data, n_batches, n_max, start, timeout_s, fail_at, where, outdir, every,
                      run_info)
    where["tick"] = None
    if outdir:
        _save_checkpoint(stage, outdir, {"tick": start["tick"] + mine["ticks"], "fed": n_batches,
                                         "finished": True, "config": run_info})
    gathered = comm.gather({"k": stage.k, "params": stage.params, "buffers": stage.buffers, **mine}, root=0)
    if rank:
        return None
    return _assemble(gathered, n_batches, sum(len(b.y) for b in data[start["fed"]:]), outdir)


def _assemble(parts: list[dict], n_batches: int, n_samples: int, outdir: Path | None) -> dict:
    events = sorted((e for p in parts for e in p["events"]), key=lambda e: (e.time, e.module))
    result = {
        "events": events,
        "losses": {p["k"]: p["losses"] for p in parts},
        "params": {k: v for p in parts for k, v in p["params"].items()},
        "buffers": {k: v for p in parts for k, v in p["buffers"].items()},
        "seconds": max(p["seconds"] for p in parts),
        "wait_seconds": [p["wait_seconds"] for p in parts],
        "batches": n_batches,
        "samples": n_samples,
    }
    if outdir:
        save_atomic(outdir / "params.npz", {**{"p:" + k: v for k, v in result["params"].items()},
                                            **{"b:" + k: v for k, v in result["buffers"].items()}})
        summary = {k: v for k, v in result.items() if k not in ("params", "buffers", "events")}
        summary["events"] = [[e.time, e.module, list(e.params), list(e.losses), list(e.batches)] for e in events]
        tmp = outdir / "result.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, outdir / "result.json")
    return result


def read_events(path) -> list[UpdateEvent]:
    """The update events a run wrote to ``result.json``."""
    rows = json.loads(Path(path).read_text())["events"]
    return [UpdateEvent(t, m, tuple(p), tuple(l), tuple(b)) for t, m, p, l, b in rows]

