"""Training loop and CLI: resume is bit-identical, divergence stops cleanly, errors are clear."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from backlink.experiments.cli import main
from backlink.experiments import data as datasets
from backlink.experiments.train import RunConfig, TrainingDiverged, compare, format_table, train


def tiny(tmp_path, **kw):
    base = dict(model="resnet8", dataset="synthetic", n_train=96, n_test=32, K=3, epochs=2, batch=32,
                lr=0.05, progress=False, out=str(tmp_path / "run"), dtype="float64")
    base.update(kw)
    return RunConfig(**base)


def untimed(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "meta"}


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
    full = train(tiny(tmp_path / "a", epochs=3, augment=True))
    real_batches, calls = datasets.batches, []

    def killed_in_epoch_two(*a, **kw):  # the process dies halfway through epoch 2
        calls.append(1)
        for i, b in enumerate(real_batches(*a, **kw)):
            if len(calls) == 2 and i == 1:
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(datasets, "batches", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "b", epochs=3, augment=True))
    monkeypatch.setattr(datasets, "batches", real_batches)
    resumed = train(tiny(tmp_path / "b", epochs=3, augment=True, resume=True))
    a, b = arrays(tmp_path / "a/run/checkpoint.npz"), arrays(tmp_path / "b/run/checkpoint.npz")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs after resume"
    assert untimed(resumed["history"]) == untimed(full["history"])


def _diverging_after(monkeypatch, n_steps):
    """Steps after the first ``n_steps`` report a NaN loss, as a diverging run does."""
    from backlink.experiments import train as train_module

    real, calls = train_module._step_fn, []

    def step_fn(runner, lean):
        step = real(runner, lean)

        def diverging(batch):
            calls.append(1)
            losses = step(batch)
            return {k: float("nan") for k in losses} if len(calls) > n_steps else losses
        return diverging
    monkeypatch.setattr(train_module, "_step_fn", step_fn)


def test_diverging_loss_stops_and_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, epochs=3)
    _diverging_after(monkeypatch, 4)  # 3 steps per epoch: epoch 1 is saved, epoch 2 diverges
    with pytest.raises(TrainingDiverged, match=r"loss became .* Lower 'lr' .* checkpoint .*after epoch 1\) "
                                               r"is intact"):
        train(cfg)
    before = arrays(tmp_path / "run/checkpoint.npz")
    monkeypatch.undo()
    _diverging_after(monkeypatch, 0)
    with pytest.raises(TrainingDiverged, match="is intact"):
        train(dataclasses.replace(cfg, resume=True))
    after = arrays(tmp_path / "run/checkpoint.npz")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not (tmp_path / "run/checkpoint.npz.tmp").exists()


def test_divergence_before_any_checkpoint_says_none_was_written(tmp_path, monkeypatch):
    _diverging_after(monkeypatch, 1)
    with pytest.raises(TrainingDiverged, match="No checkpoint was written yet"):
        train(tiny(tmp_path, epochs=2))
    assert not (tmp_path / "run/checkpoint.npz").exists()


def test_compare_trains_all_methods_on_one_partition_and_learns(tmp_path):
    ds = datasets.load("synthetic", n_train=256, n_test=128, seed=0)
    results = compare(tiny(tmp_path, epochs=3, n_train=256, n_test=128, dtype="float32"),
                      plot=str(tmp_path / "acc.png"))
    assert [r["config"]["method"] for r in results] == ["bp", "greedy", "backlink"]
    assert results[1]["cuts"] == results[2]["cuts"] and len(results[2]["cuts"]) == 2
    chance = 1 / ds.num_classes
    assert all(r["test_acc"] > chance + 0.1 for r in results), [r["test_acc"] for r in results]
    # BP holds every activation; greedy one module; BackLink one module + a stored tail
    bp, greedy, bl = (r["peak_activation_bytes"] for r in results)
    assert greedy < bl < bp
    assert (tmp_path / "acc.png").stat().st_size > 0
    table = format_table(results)
    assert "backlink" in table and "%" in table
    saved = json.loads((tmp_path / "run/backlink/result.json").read_text())
    assert saved["history"] == results[2]["history"]


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nope"], "nope"),
    (["--model", "resnet9"], "resnet9"),
    (["--K", "40"], "K"),
    (["--cuts", "3,1"], "strictly increasing"),
    (["--P", "5", "--K", "4"], "link_length"),
])
def test_cli_reports_user_errors_without_a_traceback(argv, message, capsys):
    code = main(["train", "--dataset", "synthetic", "--n-train", "32", "--n-test", "16", "--epochs", "1",
                 "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


def test_missing_dataset_files_say_how_to_install_them(capsys):
    code = main(["train", "--dataset", "cifar10", "--data-root", "/nonexistent", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cifar" in err.lower() and "/nonexistent" in err


# ------------------------------------------------------------ training through any backend (BL-6.5)

class RecordOnlyRunner:
    """A runner with predict and checkpoints but no train_step: training falls back to step."""

    def __init__(self, inner):
        self._inner = inner

    def step(self, batch):
        return self._inner.step(batch)

    def predict(self, x):
        return self._inner.predict(x)

    def state_dict(self):
        return self._inner.state_dict()

    def load_state_dict(self, state):
        self._inner.load_state_dict(state)


class ExternalBackend:
    """A backend defined outside the package, found by ``--backend test_train:ExternalBackend``."""

    from backlink.spec import Capabilities

    name, version, capabilities = "external-test", "0", Capabilities()

    def prepare(self, problem, params, buffers):
        from backlink.reference.backend import ReferenceBackend

        return RecordOnlyRunner(ReferenceBackend().prepare(problem, params, buffers))


class NoPredictBackend(ExternalBackend):
    def prepare(self, problem, params, buffers):
        runner = super().prepare(problem, params, buffers)
        runner.predict = None
        return runner


def step_losses(cfg):
    losses = []
    result = train(cfg, on_step=losses.append)
    return result, losses


def test_torch_and_numpy_give_the_same_first_epoch_losses_in_float64(tmp_path):
    pytest.importorskip("torch")
    from backlink.spec import tolerance

    cfg = tiny(tmp_path, epochs=1, n_train=128, augment=True, out=None)
    (ref, ref_losses), (tch, tch_losses) = (step_losses(dataclasses.replace(cfg, backend=b))
                                            for b in ("numpy", "torch"))
    assert tch["backend"] == "torch" and ref["backend"] == "reference"
    assert [sorted(d) for d in tch_losses] == [sorted(d) for d in ref_losses] and len(ref_losses) == 4
    rtol, atol = tolerance("float64", "steps")
    for t, (a, b) in enumerate(zip(tch_losses, ref_losses)):
        for k in b:
            assert abs(a[k] - b[k]) <= atol + rtol * abs(b[k]), (t, k, a[k], b[k])
    assert tch["test_acc"] == ref["test_acc"]


def test_a_backend_from_outside_the_project_trains_through_step(tmp_path, capsys):
    argv = ["train", "--dataset", "synthetic", "--n-train", "64", "--n-test", "32", "--epochs", "2",
            "--batch", "32", "--K", "3", "--dtype", "float64", "--quiet", "--json"]
    assert main([*argv, "--backend", f"{__name__}:ExternalBackend", "--out", str(tmp_path / "ext")]) == 0
    ext = json.loads(capsys.readouterr().out.split("\n", 3)[3])
    assert main([*argv, "--backend", "numpy", "--out", str(tmp_path / "ref")]) == 0
    ref = json.loads(capsys.readouterr().out.split("\n", 3)[3])
    assert ext["backend"] == "external-test"
    assert untimed(ext["history"]) == untimed(ref["history"])
    assert arrays(tmp_path / "ext/checkpoint.npz").keys() == arrays(tmp_path / "ref/checkpoint.npz").keys()


@pytest.mark.parametrize("backend, message", [
    (f"{__name__}:NoPredictBackend", "lacks predict"),
    (f"{__name__}:Missing", "has no attribute"),
    ("no_such_module:Backend", "cannot import module"),
    ("jax", "no installed backend"),
])
def test_unusable_backends_are_clear_errors(backend, message, capsys):
    code = main(["train", "--dataset", "synthetic", "--n-train", "32", "--n-test", "16", "--epochs", "1",
                 "--quiet", "--backend", backend])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


def test_resume_on_torch_is_bit_identical(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    cfg = tiny(tmp_path / "a", epochs=2, backend="torch", dtype="float32")
    full = train(cfg)
    real_batches, calls = datasets.batches, []

    def killed_in_epoch_two(*a, **kw):
        calls.append(1)
        for i, b in enumerate(real_batches(*a, **kw)):
            if len(calls) == 2 and i == 1:
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(datasets, "batches", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "b", epochs=2, backend="torch", dtype="float32"))
    monkeypatch.setattr(datasets, "batches", real_batches)
    resumed = train(tiny(tmp_path / "b", epochs=2, backend="torch", dtype="float32", resume=True))
    a, b = arrays(tmp_path / "a/run/checkpoint.npz"), arrays(tmp_path / "b/run/checkpoint.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a) and len(a) > 0
    assert untimed(resumed["history"]) == untimed(full["history"])


def test_the_quickstart_shows_what_compare_prints(capsys):
    """docs/quickstart.md quotes ``backlink compare --model mlp --dataset digits --epochs 2
    --K 2``: its output, but for the time column, must be what the command prints."""
    pytest.importorskip("sklearn")
    doc = (Path(__file__).resolve().parents[1] / "docs" / "quickstart.md").read_text()
    quoted = doc.split("The second command prints one row per method:\n\n```text\n")[1].split("```")[0]
    assert main(["compare", "--model", "mlp", "--dataset", "digits", "--epochs", "2", "--K", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-6:]

    def words_but_time(lines):  # a method's row ends with its time
        return [line.split()[:-1] if "%" in line else line.split() for line in lines]
    assert words_but_time(printed) == words_but_time(quoted.strip().splitlines())
