"""The bad-input catalog: every mistake a user can make on the four surfaces (the CLI, the
Python API, the torch adapter, the conformance plugin) and ``backlink mpi`` is refused
with a clear error.

Each case is a mistake as a new user would make it. It must end with the expected exit
code (CLI: 2) or exception type (API), and the message must name the field (or option)
to fix. ``clause`` cites the spec where the spec says what must be refused (BL-2.9.1:
every forbidden input is a SpecError naming the field). ``backlink mpi`` cases run in
this process with spawning forbidden: a mistake must be refused before any rank starts.

``python tests/test_catalog.py`` classifies every case as clear / unclear / traceback /
silently wrong and prints the table (how the catalog was measured before and after).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from catalog_support import (FailingInit, Mistake, NoPrepare, _bad_param, _cifar_bad_labels, _fmnist_bad_labels,  # noqa: E402
                             _load, _load_backend, _mlp_problem, _net, _runner, _schedule_bad, _skip_file,
                             _step, _torch, _torch_shared_head, _train, _validate, call, classify, cli, suite)

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MPI = importlib.util.find_spec("mpi4py") is not None
S = "BL-2.9.1"  # forbidden input: SpecError naming the field
E = 2           # the CLI's exit code for a user mistake
__all__ = ["NoPrepare", "FailingInit"]  # re-exported: the loader cases name them as catalog_support:...


# ------------------------------------------------------------------ the catalog



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
        M("plugin-not-a-backend", "plugin", call(_load_backend("catalog_support:NoPrepare")), pytest.UsageError,
          r"lacks the backend members", "BL-6.1"),
        M("plugin-init-fails", "plugin", call(_load_backend("catalog_support:FailingInit")), pytest.UsageError,
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
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # catalog_support:NoPrepare for the loader cases
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
