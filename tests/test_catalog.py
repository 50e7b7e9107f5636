"""The bad-input catalog: every mistake a user can make on the four surfaces (the CLI, the
Python API, the torch adapter, the conformance plugin) is refused with a clear error.

Each case is a mistake as a new user would make it. It must end with the expected exit
code (CLI: 2) or exception type (API), and the message must name the field (or option)
to fix. ``clause`` cites the spec where the spec says what must be refused (BL-2.9.1:
every forbidden input is a SpecError naming the field).

``python tests/test_catalog.py`` classifies every case as clear / unclear / traceback /
silently wrong and prints the table (how the catalog was measured before and after).
"""
from __future__ import annotations

import contextlib
import functools
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
import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
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


# ------------------------------------------------------------------ the catalog

S = "BL-2.9.1"  # forbidden input: SpecError naming the field
E = 2           # the CLI's exit code for a user mistake


def _cases() -> list[Mistake]:
    from backlink.spec import SpecError

    M = Mistake
    c = [
        # --- CLI train: numbers out of range
        M("cli-epochs-0", "cli", cli("--epochs", "0"), E, r"--epochs|'epochs'"),
        M("cli-epochs-negative", "cli", cli("--epochs", "-2"), E, r"--epochs|'epochs'"),
        M("cli-batch-0", "cli", cli("--batch", "0"), E, r"--batch|'batch'"),
        M("cli-batch-negative", "cli", cli("--batch", "-8"), E, r"--batch|'batch'"),
        M("cli-cuts-empty", "cli", cli("--cuts", ""), E, r"--cuts|'cuts'"),
        M("cli-cuts-not-ints", "cli", cli("--cuts", "a,b"), E, r"--cuts"),
        M("cli-cuts-zero", "cli", cli("--cuts", "0,2"), E, r"cuts\[0\]", "BL-3.1.1"),
        M("cli-cuts-unsorted", "cli", cli("--cuts", "3,2"), E, r"'cuts'", "BL-3.1.1"),
        M("cli-cuts-past-end", "cli", cli("--cuts", "99"), E, r"cuts\[0\]", "BL-3.1.1"),
        M("cli-K-0", "cli", cli("--K", "0"), E, r"'K'|--K"),
        M("cli-K-negative", "cli", cli("--K", "-3"), E, r"'K'|--K"),
        M("cli-K-too-many", "cli", cli("--K", "50"), E, r"'K'|--K"),
        M("cli-P-negative", "cli", cli("--P", "-1"), E, r"link_length|--P", "BL-3.4.2"),
        M("cli-P-too-long", "cli", cli("--P", "5", "--K", "2"), E, r"link_length", "BL-3.4.2"),
        M("cli-beta-negative", "cli", cli("--beta", "-1"), E, r"beta", "BL-3.3"),
        M("cli-beta-nan", "cli", cli("--beta", "nan"), E, r"beta", "BL-3.3"),
        M("cli-beta-inf", "cli", cli("--beta", "inf"), E, r"beta", "BL-3.3"),
        M("cli-lr-negative", "cli", cli("--lr", "-0.1"), E, r"lr", S),
        M("cli-lr-nan", "cli", cli("--lr", "nan"), E, r"lr", S),
        M("cli-momentum-negative", "cli", cli("--momentum", "-0.5"), E, r"momentum", S),
        M("cli-weight-decay-negative", "cli", cli("--weight-decay", "-1"), E, r"weight_decay|--weight-decay", S),
        M("cli-warmup-negative", "cli", cli("--warmup-epochs", "-1"), E, r"warmup"),
        M("cli-warmup-longer-than-run", "cli", cli("--warmup-epochs", "5"), E, r"warmup"),
        M("cli-seed-negative", "cli", cli("--seed", "-1"), E, r"seed"),
        M("cli-n-train-0", "cli", cli("--n-train", "0"), E, r"n_train|--n-train"),
        M("cli-n-train-too-many", "cli", cli("--n-train", "100000"), E, r"n_train|--n-train"),
        M("cli-n-test-0", "cli", cli("--n-test", "0"), E, r"n_test|--n-test"),
        # --- CLI train: names
        M("cli-model-unknown", "cli", cli("--model", "resnet7"), E, r"'model'|--model"),
        M("cli-model-typo", "cli", cli("--model", "MLP"), E, r"'model'|--model"),
        M("cli-dataset-unknown", "cli", cli("--dataset", "imagenet"), E, r"dataset|'name'"),
        M("cli-dataset-missing-files", "cli", cli("--dataset", "cifar10", "--data-root", "{tmp}"), E, r"cifar10.*not found"),
        M("cli-fmnist-bad-root", "cli", cli("--dataset", "fashion-mnist", "--data-root", "{tmp}/nope"), E, r"fashion-mnist.*not found"),
        M("cli-method-unknown", "cli", cli("--method", "dgl"), E, r"--method"),
        M("cli-dtype-unknown", "cli", cli("--dtype", "float16"), E, r"--dtype"),
        M("cli-head-unknown", "cli", cli("--head", "mlp"), E, r"--head"),
        M("cli-backend-unknown", "cli", cli("--backend", "tensorflow"), E, r"--backend|backend"),
        M("cli-epochs-not-int", "cli", cli("--epochs", "1.5"), E, r"--epochs"),
        M("cli-cut-inside-block", "cli", cli("--model", "resnet8", "--granularity", "layer", "--cuts", "2",
                                             "--dataset", "synthetic", "--n-train", "8", "--n-test", "8"),
          E, r"cuts\[0\]", "BL-3.1.2"),
        M("cli-no-subcommand", "cli", cli(tiny=False, sub=None), E, r"command|train"),
        # --- CLI: run folders and checkpoints
        M("cli-resume-without-out", "cli", cli("--resume"), E, r"--resume.*--out|--out.*--resume"),
        M("cli-resume-empty-folder", "cli", cli("--resume", "--out", "{tmp}/run"), E, r"--resume|checkpoint"),
        M("cli-out-is-a-file", "cli", lambda tmp: ((tmp / "f").write_text("x"), cli("--out", "{tmp}/f")(tmp))[1],
          E, r"--out|'out'"),
        M("cli-plot-unwritable", "cli", cli("--plot", "/proc/nope/curves.png", "--methods", "bp", sub="compare"),
          E, r"--plot"),
        M("cli-plot-no-format", "cli", cli("--plot", "{tmp}/curves", "--methods", "bp", sub="compare"), E, r"--plot"),
        M("cli-out-unwritable", "cli", cli("--out", "/proc/backlink-run"), E, r"--out"),
        M("cli-out-holds-a-run", "cli", lambda tmp: (cli("--out", "{tmp}/run")(tmp), cli("--out", "{tmp}/run")(tmp))[1],
          E, r"--out.*--overwrite"),
        M("cli-resume-other-config", "cli", lambda tmp: (cli("--out", "{tmp}/run")(tmp),
                                                         cli("--out", "{tmp}/run", "--resume", "--lr", "0.5")(tmp))[1],
          E, r"(?s)--resume.*lr: checkpoint 0.1, now 0.5"),
        M("cli-checkpoint-every-0", "cli", cli("--checkpoint-every", "0"), E, r"--checkpoint-every"),
        M("cli-checkpoint-every-unit", "cli", cli("--checkpoint-every", "5h"), E, r"--checkpoint-every"),
        # --- CLI costs
        M("cli-costs-K-0", "cli", cli("--models", "mlp", "--K", "0", tiny=False, sub="costs"), E, r"K"),
        M("cli-costs-model-unknown", "cli", cli("--models", "foo", tiny=False, sub="costs"), E, r"model"),
        M("cli-costs-P-negative", "cli", cli("--models", "mlp", "--K", "2", "--P", "-1", tiny=False, sub="costs"),
          E, r"link_length|--P|'P'"),
        M("cli-costs-batch-0", "cli", cli("--models", "mlp", "--batch", "0", tiny=False, sub="costs"), E, r"batch"),
        # --- Python API: spec objects (BL-2.9.1: SpecError naming the field)
        M("api-beta-negative", "api", call(_validate(beta=-1.0)), SpecError, r"'beta'", "BL-3.3"),
        M("api-beta-nan", "api", call(_validate(beta=float("nan"))), SpecError, r"'beta'", "BL-3.3"),
        M("api-beta-inf", "api", call(_validate(beta=float("inf"))), SpecError, r"'beta'", "BL-3.3"),
        M("api-beta-string", "api", call(_validate(beta="1")), SpecError, r"'beta'", "BL-3.3"),
        M("api-loss-weights-negative", "api", call(_validate(loss_weights=(1.0, -1.0))), SpecError, r"'loss_weights", "BL-3.2.3"),
        M("api-loss-weights-nan", "api", call(_validate(loss_weights=(1.0, float("nan")))), SpecError, r"'loss_weights", "BL-3.2.3"),
        M("api-loss-weights-length", "api", call(_validate(loss_weights=(1.0,))), SpecError, r"'loss_weights'", "BL-3.2.3"),
        M("api-loss-weights-scalar", "api", call(_validate(loss_weights=1.0)), SpecError, r"'loss_weights'", "BL-3.2.3"),
        M("api-link-length-negative", "api", call(_validate(link_length=-1)), SpecError, r"'link_length'", "BL-3.4.2"),
        M("api-link-length-float", "api", call(_validate(link_length=1.5)), SpecError, r"'link_length'", "BL-3.4.2"),
        M("api-link-length-too-long", "api", call(_validate(link_length=3)), SpecError, r"'link_length'.*allow_cross_module", "BL-3.4.2"),
        M("api-method-unknown", "api", call(lambda t: __import__("backlink.spec", fromlist=["validate"]).validate(
            _mlp_problem().graph, _mlp_problem().partition, __import__("backlink.spec", fromlist=["Method"]).Method("dgl"))),
          SpecError, r"'method.kind'", "BL-3.3"),
        M("api-cuts-float", "api", call(lambda t: __import__("backlink.reference.models", fromlist=["x"]).make_partition(
            _mlp_problem().graph, (2.0,))), SpecError, r"cuts\[0\]", "BL-3.1.1"),
        M("api-schedule-unknown", "api", call(lambda t: __import__("dataclasses").replace(_mlp_problem(), schedule="async")),
          SpecError, r"'schedule'", "BL-6.1.1"),
        M("api-dtype-unknown", "api", call(lambda t: __import__("dataclasses").replace(_mlp_problem(), dtype="float16")),
          SpecError, r"'dtype'", "BL-6.1.1"),
        M("api-lr-schedule-unknown", "api", call(_schedule_bad()), SpecError, r"schedule.kind", "BL-4.4"),
        M("api-model-unknown", "api", call(lambda t: __import__("backlink.reference.models", fromlist=["x"]).build_model("resnet7")),
          SpecError, r"'model'"),
        M("api-model-bad-kw", "api", call(lambda t: __import__("backlink.reference.models", fromlist=["x"]).build_model(
            "mlp", granularity="layer")), SpecError, r"granularity"),
        # --- Python API: parameters and batches (BL-2.9.2, BL-6.4)
        M("api-param-wrong-shape", "api", call(_bad_param), SpecError, r"layer2\.fc\.w", "BL-6.1.2"),
        M("api-param-missing", "api", call(lambda t: _runner(params=lambda p: {k: v for k, v in p.items() if k != "layer1.fc.b"})),
          SpecError, r"'params'.*layer1\.fc\.b", "BL-6.1.2"),
        M("api-x-wrong-shape", "api", call(lambda t: _runner().step(__import__("backlink.spec", fromlist=["Batch"]).Batch(
            np.ones((4, 5)), np.zeros(4, int), 0))), SpecError, r"'x'", "BL-2.9.2"),
        M("api-x-nan", "api", call(lambda t: _runner().step(__import__("backlink.spec", fromlist=["Batch"]).Batch(
            np.full((4, 6), np.nan), np.zeros(4, int), 0))), FloatingPointError, r"'x'", "BL-2.9.3"),
        M("api-y-float", "api", call(_step([0.0, 1.0, 2.0, 1.0])), SpecError, r"'y'", "BL-6.4"),
        M("api-y-too-large", "api", call(_step([0, 1, 3, 1])), SpecError, r"'y'", "BL-6.4"),
        M("api-y-negative", "api", call(_step([0, 1, -1, 1])), SpecError, r"'y'", "BL-6.4"),
        M("api-y-too-few", "api", call(_step([0, 1, 2])), SpecError, r"'y'", "BL-6.4"),
        M("api-y-one-hot", "api", call(_step(np.eye(3)[[0, 1, 2, 1]])), SpecError, r"'y'", "BL-6.4"),
        M("api-y-bool", "api", call(_step([True, False, True, False])), SpecError, r"'y'", "BL-6.4"),
        M("api-pipelined-y-too-large", "api", call(_step([0, 5, 1, 1], schedule="pipelined")), SpecError, r"'y'", "BL-6.4"),
        M("api-pipelined-y-negative", "api", call(_step([0, -2, 1, 1], schedule="pipelined")), SpecError, r"'y'", "BL-6.4"),
        # --- Python API: data and training
        M("api-load-unknown", "api", call(_load("imagenet")), ValueError, r"'name'"),
        M("api-load-n-train-0", "api", call(_load("digits", n_train=0)), ValueError, r"'n_train'"),
        M("api-load-n-train-float", "api", call(_load("digits", n_train=2.5)), ValueError, r"'n_train'"),
        M("api-load-cifar-bad-labels", "api", call(_cifar_bad_labels), ValueError, r"label"),
        M("api-load-fmnist-bad-labels", "api", call(_fmnist_bad_labels), ValueError, r"label"),
        M("api-train-epochs-0", "api", call(_train(epochs=0)), ValueError, r"'epochs'"),
        M("api-train-batch-0", "api", call(_train(batch=0)), ValueError, r"'batch'"),
        M("api-train-cuts-empty", "api", call(_train(cuts=())), ValueError, r"'cuts'"),
        M("api-train-K-0", "api", call(_train(K=0)), ValueError, r"'K'"),
        M("api-train-beta-negative", "api", call(_train(beta=-0.5)), ValueError, r"'beta'", "BL-3.3"),
        M("api-train-resume-no-out", "api", call(_train(resume=True)), ValueError, r"'resume'.*'out'|'out'.*'resume'"),
        M("api-train-schedule-unknown", "api", call(_train(schedule="linear")), ValueError, r"schedule"),
    ]
    if HAS_TORCH:
        c += [
            M("torch-K-0", "torch", call(_torch(K=0)), ValueError, r"'K'"),
            M("torch-K-too-many", "torch", call(_torch(K=9)), ValueError, r"'K'"),
            M("torch-cuts-unsorted", "torch", call(_torch(cuts=(3, 1))), ValueError, r"'cuts'"),
            M("torch-cuts-and-K", "torch", call(_torch(cuts=(2,), K=3)), ValueError, r"'cuts' and 'K'"),
            M("torch-no-cuts", "torch", call(_torch(method="greedy")), ValueError, r"'cuts'|'K'"),
            M("torch-method-unknown", "torch", call(_torch(K=2, method="dgl")), ValueError, r"'method'"),
            M("torch-link-negative", "torch", call(_torch(K=2, link_length=-1)), ValueError, r"'link_length'"),
            M("torch-link-too-long", "torch", call(_torch(K=2, link_length=4)), ValueError,
              r"'link_length'.*allow_cross_module", "BL-3.4.2"),
            M("torch-beta-negative", "torch", call(_torch(K=2, beta=-1.0)), ValueError, r"'beta'", "BL-3.3"),
            M("torch-beta-nan", "torch", call(_torch(K=2, beta=float("nan"))), ValueError, r"'beta'", "BL-3.3"),
            M("torch-loss-weights-negative", "torch", call(_torch(K=2, loss_weights=(1, -2))), ValueError,
              r"'loss_weights\[1\]'", "BL-3.2.3"),
            M("torch-loss-weights-length", "torch", call(_torch(K=2, loss_weights=(1, 1, 1))), ValueError, r"'loss_weights'"),
            M("torch-loss-weights-under-bp", "torch", call(_torch(method="bp", loss_weights=(1.0, 2.0))),
              UserWarning, r"'loss_weights'", "BL-3.3"),
            M("torch-link-under-greedy", "torch", call(_torch(K=2, method="greedy", link_length=2)),
              UserWarning, r"'link_length'", "BL-3.3"),
            M("torch-beta-under-greedy", "torch", call(_torch(K=2, method="greedy", beta=0.5)),
              UserWarning, r"'beta'", "BL-3.3"),
            M("torch-units-not-modules", "torch", call(_torch(make_units=lambda: [lambda x: x], K=1, method="bp")),
              ValueError, r"'units\[0\]'"),
            M("torch-units-empty", "torch", call(_torch(make_units=lambda: [], method="bp")), ValueError, r"'units'"),
            M("torch-shared-units", "torch", call(_torch(make_units=lambda: _net(shared="units"), K=2)), ValueError,
              r"units\[2\].*units\[1\]", "BL-2.1.5"),
            M("torch-shared-head", "torch", call(_torch_shared_head), ValueError, r"head 1.*units\[4\]", "BL-2.1.5"),
            M("torch-unit-returns-tuple", "torch", call(_torch(make_units=lambda: _net(tuple_unit=True), K=2)),
              ValueError, r"units\[2\]"),
            M("torch-unit-returns-tuple-in-step", "torch",
              call(_torch(make_units=lambda: _net(tuple_unit=True), K=2, build=False, step=lambda t: t.zeros(4, dtype=t.long))),
              ValueError, r"units\[2\]"),
            M("torch-head-factory-string", "torch", call(_torch(K=2, head_factory="conv")), ValueError, r"'head_factory'"),
            M("torch-head-factory-not-module", "torch", call(_torch(K=2, head_factory=lambda k, h: (lambda z: z))),
              ValueError, r"'head_factory'"),
            M("torch-head-wrong-output", "torch", call(_torch(K=2, head_factory=lambda k, h: __import__("torch").nn.Linear(8, 5))),
              ValueError, r"'head_factory'"),
            M("torch-last-unit-not-logits", "torch", call(_torch(make_units=lambda: _net()[:-1] + [
                __import__("torch").nn.Unflatten(1, (2, 4))], K=2)), ValueError, r"'units'"),
            M("torch-parameters-before-build", "torch", call(lambda t: _torch(K=2, build=False)(t) or
                                                            __import__("backlink.backends.torch_backend.api", fromlist=["x"])
                                                            .BackLink(_net(), K=2).parameters()),
              RuntimeError, r"example_input|build"),
            M("torch-y-float", "torch", call(_torch(K=2, step=lambda t: t.zeros(4))), ValueError, r"'y'"),
            M("torch-y-too-large", "torch", call(_torch(K=2, step=lambda t: t.tensor([0, 1, 3, 2]))), ValueError, r"'y'"),
            M("torch-y-negative", "torch", call(_torch(K=2, step=lambda t: t.tensor([0, -1, 1, 2]))), ValueError, r"'y'"),
            M("torch-y-too-few", "torch", call(_torch(K=2, step=lambda t: t.tensor([0, 1]))), ValueError, r"'y'"),
            M("torch-y-one-hot", "torch", call(_torch(K=2, step=lambda t: t.eye(3)[[0, 1, 2, 1]])), ValueError, r"'y'"),
        ]
    c += [
        # --- conformance plugin (the loader and skips file it uses, and the command itself)
        M("plugin-unknown-name", "plugin", call(_load_backend("no-such-backend")), pytest.UsageError, r"--backend 'no-such"),
        M("plugin-module-missing", "plugin", call(_load_backend("no_such_module:Backend")), pytest.UsageError,
          r"cannot import module 'no_such_module'"),
        M("plugin-attr-missing", "plugin", call(_load_backend("backlink.reference.backend:Nope")), pytest.UsageError,
          r"no attribute 'Nope'"),
        M("plugin-not-a-backend", "plugin", call(_load_backend("test_catalog:NoPrepare")), pytest.UsageError,
          r"lacks the backend members", "BL-6.1"),
        M("plugin-init-fails", "plugin", call(_load_backend("test_catalog:FailingInit")), pytest.UsageError,
          r"FailingInit\(\) failed"),
        M("plugin-skip-bad-kind", "plugin", call(_skip_file("skpi test_bl2*\n")), pytest.UsageError, r"line 1"),
        M("plugin-skip-no-pattern", "plugin", call(_skip_file("skip\n")), pytest.UsageError, r"line 1"),
        M("plugin-skip-two-patterns", "plugin", call(_skip_file("xfail a b # why\n")), pytest.UsageError, r"line 1"),
        M("plugin-no-backend", "plugin", suite(), 4, r"--conformance-backend NAME"),
        M("plugin-env-unknown", "plugin", suite(env={"BACKLINK_BACKEND": "nope"}), 4, r"'nope'"),
        M("plugin-skips-missing-file", "plugin", suite("--conformance-skips", "nope.txt", env={"BACKLINK_BACKEND": "reference"}),
          4, r"--conformance-skips"),
        M("plugin-examples-0", "plugin", suite("--conformance-examples", "0", env={"BACKLINK_BACKEND": "reference"}),
          4, r"--conformance-examples"),
        M("plugin-seed-negative", "plugin", suite("--conformance-seed", "-1", env={"BACKLINK_BACKEND": "reference"}),
          4, r"--conformance-seed"),
        M("plugin-option-unknown-backend", "plugin", suite("--conformance-backend", "nope"), 4, r"'nope'"),
    ]
    if HAS_MPI:
        mpi = ["--model", "mlp", "--dataset", "digits", "--n-train", "64", "--steps", "2"]
        shell = functools.partial(cli, tiny=False, sub="mpi")  # in this process; spawning would fail
        c += [
            M("mpi-K-0", "mpi", shell(*mpi, "--K", "0"), E, r"--K|'K'"),
            M("mpi-K-too-many", "mpi", shell(*mpi, "--K", "7"), E, r"--K|'K'"),
            M("mpi-batch-0", "mpi", shell(*mpi, "--batch", "0"), E, r"--batch|'batch'"),
            M("mpi-timeout-0", "mpi", shell(*mpi, "--timeout", "0"), E, r"--timeout|'timeout'"),
            M("mpi-steps-0", "mpi", shell(*mpi[:-1], "0"), E, r"--steps|'steps'"),
            M("mpi-epochs-0", "mpi", shell(*mpi, "--epochs", "0"), E, r"--epochs|'epochs'"),
            M("mpi-P-too-long", "mpi", shell(*mpi, "--P", "3"), E, r"link_length", "BL-3.4.2"),
            M("mpi-beta-negative", "mpi", shell(*mpi, "--beta", "-1"), E, r"beta", "BL-3.3"),
            M("mpi-model-unknown", "mpi", shell(*mpi, "--model", "foo"), E, r"'model'|--model"),
            M("mpi-dataset-unknown", "mpi", shell(*mpi, "--dataset", "foo"), E, r"dataset|'name'"),
            M("mpi-cuts-empty", "mpi", shell(*mpi, "--cuts", ""), E, r"--cuts|'cuts'"),
            M("mpi-timeout-negative", "mpi", shell(*mpi, "--timeout", "-5"), E, r"--timeout|'timeout'"),
            M("mpi-out-is-a-file", "mpi", lambda tmp: ((tmp / "f").write_text("x"), shell(*mpi, "--out", "{tmp}/f")(tmp))[1],
              E, r"--out|'out'"),
            M("mpi-resume-no-checkpoint", "mpi", shell(*mpi, "--out", "{tmp}/run", "--resume"), E, r"--resume|checkpoint"),
            M("mpi-checkpoint-every-0", "mpi", shell(*mpi, "--checkpoint-every", "0"), E, r"--checkpoint-every"),
        ]
    return c


CASES = _cases()


def test_catalog_is_large_and_ids_unique():
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.mpi] if c.surface == "mpi" else [])
                                  for c in CASES])
def test_mistake_is_refused_clearly(case, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # test_catalog:NoPrepare for the loader cases
    monkeypatch.chdir(tmp_path)
    outcome = case.run(tmp_path)
    where = f" ({case.clause})" if case.clause else ""
    verdict = classify(case, outcome)
    assert verdict == "clear", (f"{case.id}{where}: {verdict}; expected {case.expect!r} naming "
                                f"/{case.names}/, got {outcome.error!r}:\n{outcome.text[-3000:]}")


def main() -> None:
    """Classify every case and print the table (clear / unclear / traceback / silently wrong)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    kinds = ("clear", "unclear", "traceback", "silently wrong")
    table: dict[str, dict[str, int]] = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            cwd = os.getcwd()
            os.chdir(d)
            try:
                verdict = classify(case, case.run(Path(d)))
            finally:
                os.chdir(cwd)
        table.setdefault(case.surface, dict.fromkeys(kinds, 0))[verdict] += 1
        if verdict != "clear":
            print(f"{verdict:>15}  {case.id}", flush=True)
    total = {k: sum(row[k] for row in table.values()) for k in kinds}
    print(f"\n{'surface':8} " + " ".join(f"{k:>15}" for k in kinds))
    for name, row in [*table.items(), ("total", total)]:
        print(f"{name:8} " + " ".join(f"{row[k]:>15}" for k in kinds))
    print(f"{len(CASES)} cases")


if __name__ == "__main__":
    main()
