"""Run folders and checkpoints: resume checks the configuration, nothing is overwritten or
lost unasked, checkpoints inside an epoch resume bit-identically, failed writes are
reported before training (or in one line, leaving the previous checkpoint)."""
import errno
import json

import numpy as np
import pytest

from backlink.experiments import data as datasets
from backlink.experiments.cli import main
from backlink.experiments.runs import checkpoint_due, parse_every
from backlink.experiments.train import RunConfig, train

TINY = ["--model", "mlp", "--dataset", "digits", "--n-train", "96", "--n-test", "32", "--batch", "32",
        "--epochs", "2", "--quiet", "--dtype", "float64"]


def cli(capsys, *argv):
    code = main(["train", *TINY, *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "meta"}


def test_resume_refuses_another_configuration_and_lists_the_differences(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli(capsys, "--out", out)[0] == 0
    code, _, err = cli(capsys, "--out", out, "--resume", "--lr", "0.3", "--K", "2", "--epochs", "3")
    assert code == 2, err
    assert "lr: checkpoint 0.1, now 0.3" in err and "K: checkpoint 4, now 2" in err, err
    assert "epochs" not in err.split("may change on resume")[0], "epochs may change: not a difference"
    assert "Fields that may change on resume: checkpoint_every, data_root, epochs" in err, err


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    code, _, err = cli(capsys, "--out", str(tmp_path / "empty"), "--resume")
    assert code == 2 and "--resume" in err and "holds no checkpoint.npz" in err, err


def test_a_run_folder_is_not_overwritten_unless_asked(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli(capsys, "--out", out)[0] == 0
    before = arrays(tmp_path / "run/checkpoint.npz")
    code, _, err = cli(capsys, "--out", out, "--seed", "1")
    assert code == 2 and "already holds a run" in err and "--overwrite" in err, err
    assert all(np.array_equal(v, arrays(tmp_path / "run/checkpoint.npz")[k]) for k, v in before.items())
    assert cli(capsys, "--out", out, "--seed", "1", "--overwrite")[0] == 0
    assert json.loads((tmp_path / "run/result.json").read_text())["config"]["seed"] == 1


@pytest.mark.parametrize("every", [1, 3])
def test_checkpoint_every_n_steps_resumes_mid_epoch_bit_identically(tmp_path, monkeypatch, every):
    base = dict(model="mlp", dataset="digits", n_train=160, n_test=32, batch=32, epochs=2, augment=False,
                progress=False, dtype="float64", checkpoint_every=every)
    full = train(RunConfig(**base, out=str(tmp_path / "a")))
    real, calls = datasets.batches, []

    def killed_in_epoch_two(*a, **kw):  # dies before batch 4 of epoch 2 (5 batches per epoch)
        calls.append(1)
        for i, b in enumerate(real(*a, **kw)):
            if len(calls) == 2 and i == 3:
                raise KeyboardInterrupt
            yield b
    monkeypatch.setattr(datasets, "batches", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig(**base, out=str(tmp_path / "b")))
    with np.load(tmp_path / "b/checkpoint.npz") as z:
        meta = json.loads(str(z["meta"]))
    assert (meta["epoch"], meta["batch"]) == (1, {1: 3, 3: 1}[every]), meta  # a mid-epoch checkpoint (global step 8 or 6)
    monkeypatch.setattr(datasets, "batches", real)
    resumed = train(RunConfig(**base, out=str(tmp_path / "b"), resume=True))
    a, b = arrays(tmp_path / "a/checkpoint.npz"), arrays(tmp_path / "b/checkpoint.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])


def test_checkpoint_every_parses_steps_and_minutes():
    assert parse_every("200") == ("steps", 200) and parse_every("10min") == ("minutes", 10.0)
    assert parse_every("0.5 min") == ("minutes", 0.5) and parse_every(None) is None
    assert checkpoint_due(("steps", 3), 6, 0.0) and not checkpoint_due(("steps", 3), 7, 1e9)
    assert checkpoint_due(("minutes", 1.0), 1, 61.0) and not checkpoint_due(("minutes", 1.0), 1, 59.0)
    for bad in ("0", "-3", "2.5", "5x", "min"):
        with pytest.raises(ValueError, match="checkpoint_every"):
            parse_every(bad)


def test_unwritable_run_folder_fails_before_training(tmp_path, capsys, monkeypatch):
    import backlink.experiments.train as train_module

    monkeypatch.setattr(train_module.datasets, "load", lambda *a, **k: pytest.fail("data loaded before the check"))
    code, _, err = cli(capsys, "--out", "/proc/backlink-run")
    assert code == 2 and "field 'out' (--out): cannot write to /proc/backlink-run" in err, err


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    from backlink.reference import checkpoint

    real, saves = checkpoint.np.savez, []

    def disk_full_on_second_save(f, **arrays_):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays_)
    monkeypatch.setattr(checkpoint.np, "savez", disk_full_on_second_save)
    code, _, err = cli(capsys, "--out", str(tmp_path / "run"))
    assert code == 1, err
    assert err.count("\n") == 1 and "No space left on device; the previous checkpoint is intact" in err, err
    assert not list((tmp_path / "run").glob("*.tmp"))
    with np.load(tmp_path / "run/checkpoint.npz") as z:
        assert json.loads(str(z["meta"]))["epoch"] == 1


def test_compare_plot_to_an_unwritable_path_fails_before_training(tmp_path, capsys):
    code = main(["compare", *TINY, "--out", str(tmp_path / "runs"), "--plot", str(tmp_path / "no/such/dir/a.png")])
    err = capsys.readouterr().err
    assert code == 2 and "--plot" in err, err
    assert not (tmp_path / "runs").exists(), "trained before checking --plot"


def test_a_resumed_run_with_nothing_left_reports_the_original_figures(tmp_path, capsys):
    out = str(tmp_path / "run")
    first = train(RunConfig(model="mlp", dataset="digits", n_train=96, n_test=32, batch=32, epochs=2,
                            progress=False, out=out))
    again = train(RunConfig(model="mlp", dataset="digits", n_train=96, n_test=32, batch=32, epochs=2,
                            progress=False, out=out, resume=True))
    for key in ("test_acc", "history", "seconds", "seconds_per_epoch", "peak_activation_bytes"):
        assert again[key] == first[key], key
    assert again["test_acc"] > 0


def test_version(capsys):
    from backlink import __version__
    from backlink.spec import SPEC_VERSION

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"backlink {__version__} (spec {SPEC_VERSION})"


def test_a_setting_added_after_the_checkpoint_compares_as_its_default(tmp_path):
    from backlink.experiments.checks import config_differences

    saved = {"lr": 0.1, "K": 4}  # written before 'split' existed
    assert config_differences(saved, {"lr": 0.1, "K": 4, "split": "even"}, (), {"split": "even"}) == []
    assert config_differences(saved, {"lr": 0.1, "K": 4, "split": "infopro"}, (), {"split": "even"}) == \
        ["split: checkpoint 'even', now 'infopro'"]
