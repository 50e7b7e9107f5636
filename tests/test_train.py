"""Training loop and CLI: resume is bit-identical, divergence stops cleanly, errors are clear."""
import json

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
    assert resumed["history"] == full["history"]


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_diverging_loss_stops_and_leaves_the_last_good_checkpoint(tmp_path):
    cfg = tiny(tmp_path, epochs=1)
    train(cfg)
    before = arrays(tmp_path / "run/checkpoint.npz")
    with pytest.raises(TrainingDiverged, match=r"loss became .* Lower 'lr' .* checkpoint .* is intact"):
        train(tiny(tmp_path, epochs=3, lr=1e200, resume=True, momentum=0.0))
    after = arrays(tmp_path / "run/checkpoint.npz")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not (tmp_path / "run/checkpoint.npz.tmp").exists()


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
