"""Runners, classifier and fixtures of the bad-input catalog (tests/test_catalog.py).

A runner performs one mistake and returns an :class:`Outcome`; :func:`classify` sorts
it into clear / unclear / traceback / silently wrong.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import pickle
import re
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

HAS_MPI = importlib.util.find_spec("mpi4py") is not None


@dataclass
class Outcome:
    """What running a mistake gave: ``error`` is an exception type, an exit code, or None."""

    error: object
    text: str
    raw_traceback: bool = False


@dataclass(frozen=True)
class Mistake:
    id: str
    surface: str                  # cli, mpi, api, torch, plugin
    run: Callable[[Path], Outcome]
    expect: object                # exception/warning type, or exit code
    names: str                    # regex the message must match (the field / option)
    clause: str | None = None     # the spec clause that says it must be refused


# ------------------------------------------------------------------ runners

TINY = ["--model", "mlp", "--dataset", "digits", "--n-train", "64", "--n-test", "32", "--epochs", "1",
        "--batch", "32", "--quiet"]


def _strip_tiny(argv: list[str]) -> list[str]:
    """TINY with the options a case sets itself removed (argparse keeps the last one anyway)."""
    given = {a for a in argv if a.startswith("--")}
    out, i = [], 0
    while i < len(TINY):
        if TINY[i] in given:
            i += 1 if TINY[i] == "--quiet" else 2
            continue
        out.append(TINY[i])
        i += 1
    return out


def cli(*argv: str, tiny: bool = True, sub: str = "train"):
    """``backlink SUB ARGV`` in this process; '{tmp}' in an argument is the case's folder."""
    def run(tmp: Path) -> Outcome:
        from backlink.experiments.cli import main

        args = [a.replace("{tmp}", str(tmp)) for a in argv]
        full = [sub, *(_strip_tiny(args) if tiny else []), *args] if sub else args
        err, out = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings(), \
                    _no_spawning():
                warnings.simplefilter("ignore")
                code = main(full)
        except SystemExit as e:
            code = e.code
        except BaseException:  # noqa: BLE001 - a raw traceback is what we classify
            return Outcome("traceback", traceback.format_exc(), raw_traceback=True)
        return Outcome(code or None, err.getvalue() + out.getvalue())
    return run


@contextlib.contextmanager
def _no_spawning():
    """``backlink mpi`` must refuse a mistake before it spawns ranks: spawning fails loudly here."""
    if not HAS_MPI:
        yield
        return
    from backlink.experiments import mpi_runner

    def spawn(*a, **k):
        raise RuntimeError("spawned mpiexec: the mistake was not caught before the ranks started")
    real, mpi_runner.subprocess.Popen = mpi_runner.subprocess.Popen, spawn
    try:
        yield
    finally:
        mpi_runner.subprocess.Popen = real


def call(fn: Callable[[Path], object]):
    """A Python API call; warnings are turned into errors so that they are seen."""
    def run(tmp: Path) -> Outcome:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                fn(tmp)
        except BaseException as e:  # noqa: BLE001
            return Outcome(type(e), f"{type(e).__name__}: {e}")
        return Outcome(None, "")
    return run


def classify(m: Mistake, o: Outcome) -> str:
    if o.error is None:
        return "silently wrong"
    if o.error == "hang" or o.raw_traceback:
        return "traceback"
    ok_kind = (o.error == m.expect) if isinstance(m.expect, int) else (
        isinstance(o.error, type) and issubclass(o.error, m.expect))
    named = re.search(m.names, o.text) is not None
    if ok_kind:
        return "clear" if named else "unclear"
    deliberate = isinstance(o.error, int) or (isinstance(o.error, type) and issubclass(
        o.error, (ValueError, FileNotFoundError, FloatingPointError, NotImplementedError, Warning)))
    return "unclear" if (deliberate or named) else "traceback"


# ------------------------------------------------------------------ fixtures of the API cases

def _mlp_problem(schedule="synchronous", **method):
    from backlink.reference.models import build_model, make_partition
    from backlink.spec import Method, Problem

    g = build_model("mlp", input_shape=(6,), hidden=(8, 8, 8), num_classes=3)
    return Problem(g, make_partition(g, (2,)), Method("backlink", **method), schedule=schedule)


def _runner(schedule="synchronous", params=None):
    from backlink.reference.backend import ReferenceBackend
    from backlink.reference.models import init_params

    problem = _mlp_problem(schedule)
    p, b = init_params(problem.graph, problem.partition, 0, "float64")
    return ReferenceBackend().prepare(problem, params(p) if params else p, b)


def _step(y, n=4, schedule="synchronous"):
    from backlink.spec import Batch

    def fn(tmp):
        _runner(schedule).step(Batch(np.ones((n, 6)), np.asarray(y), 0))
    return fn


def _validate(**method):
    def fn(tmp):
        _mlp_problem(**method)
    return fn


def _bad_param(tmp):
    def shrink(p):
        p = dict(p)
        p["layer2.fc.w"] = p["layer2.fc.w"][:, :5]
        return p
    _runner(params=shrink)


def _train(**kw):
    def fn(tmp):
        from backlink.experiments.train import RunConfig, train

        base = dict(model="mlp", dataset="digits", n_train=64, n_test=32, epochs=1, batch=32, progress=False)
        train(RunConfig(**{**base, **kw}))
    return fn


def _load(name, **kw):
    def fn(tmp):
        from backlink.experiments.data import load

        load(name, **kw)
    return fn


def _cifar_files(tmp, labels):
    d = tmp / "cifar-10-batches-py"
    d.mkdir()
    data = np.zeros((3, 3072), np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(labels)}, f)
    return tmp


def _cifar_bad_labels(tmp):
    from backlink.experiments.data import load

    load("cifar10", root=_cifar_files(tmp, [0, 10, 3]))


def _fmnist_bad_labels(tmp):
    from backlink.experiments.data import load

    d = tmp / "fm"
    d.mkdir()
    for stem, arr in (("train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8)),
                      ("train-labels-idx1-ubyte", np.array([0, 1, 12], np.uint8)),
                      ("t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8)),
                      ("t10k-labels-idx1-ubyte", np.array([0, 1], np.uint8))):
        header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
        (d / stem).write_bytes(header + arr.tobytes())
    load("fashion-mnist", root=d)


def _schedule_bad():
    from backlink.reference.backend import ReferenceBackend
    from backlink.reference.models import init_params
    from backlink.spec import LRSchedule, Optimizer, Problem

    def fn(tmp):
        p0 = _mlp_problem()
        problem = Problem(p0.graph, p0.partition, p0.method, Optimizer(0.1, schedule=LRSchedule("linear")))
        ReferenceBackend().prepare(problem, *init_params(problem.graph, problem.partition))
    return fn


# ------------------------------------------------------------------ torch adapter

def _net(n=5, shared=None, tuple_unit=False, inplace=False):
    import torch
    from torch import nn

    torch.manual_seed(0)
    units = [nn.Linear(6, 8)] + [nn.Sequential(nn.ReLU(inplace=inplace), nn.Linear(8, 8)) for _ in range(n - 2)]
    units.append(nn.Sequential(nn.ReLU(), nn.Linear(8, 3)))
    if shared == "units":
        units[2][1].weight = units[1][1].weight
    if tuple_unit:
        class Pair(nn.Module):
            def forward(self, h):
                return h, h
        units.insert(2, Pair())
    return units


def _torch(make_units=None, step=None, build=True, **kw):
    def fn(tmp):
        import torch

        from backlink.backends.torch_backend.api import BackLink

        x = torch.randn(4, 6)
        net = BackLink(make_units() if make_units else _net(), example_input=x if build else None, **kw)
        if step is not None:
            net.backward_step(x, step(torch))
    return fn


def _shared_head_factory(units):
    from torch import nn

    def factory(k, h):
        head = nn.Linear(8, 3)
        head.weight = units[-1][1].weight  # the classifier's own weight: shared with the trunk
        return head
    return factory


def _torch_shared_head(tmp):
    import torch

    from backlink.backends.torch_backend.api import BackLink

    units = _net()
    BackLink(units, K=2, head_factory=_shared_head_factory(units), example_input=torch.randn(4, 6))


# ------------------------------------------------------------------ conformance plugin

def _load_backend(spec):
    def fn(tmp):
        from backlink_conformance.loader import load_backend

        load_backend(spec.replace("{tmp}", str(tmp)))
    return fn


def _skip_file(text):
    def fn(tmp):
        from backlink_conformance.skiplist import read_skip_file

        (tmp / "skips.txt").write_text(text)
        read_skip_file(tmp / "skips.txt")
    return fn


class NoPrepare:  # a backend class missing the protocol's members
    name = "broken"


class FailingInit:
    def __init__(self):
        raise RuntimeError("cannot open device")


def suite(*args: str, env: dict | None = None):
    """pytest on the conformance suite in a fresh process (collection only)."""
    def run(tmp: Path) -> Outcome:
        e = {k: v for k, v in os.environ.items() if k != "BACKLINK_BACKEND"}
        e.update(env or {})
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "--pyargs",
                               "backlink_conformance", "--co", "-q", *args], cwd=tmp, env=e,
                              capture_output=True, text=True, timeout=300)
        text = proc.stderr + proc.stdout
        return Outcome(proc.returncode or None, text, "Traceback (most recent call last)" in text)
    return run
