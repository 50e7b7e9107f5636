"""backlink sweep: cells, skip/resume after a kill, worker processes, aggregates, plots."""
import csv
import json
import os

import pytest
from threadpoolctl import threadpool_limits

from backlink.experiments import data as datasets
from backlink.experiments import sweep as sweep_module
from backlink.experiments.aggregate import format_summary, summarize
from backlink.experiments.cli import main
from backlink.experiments.sweep import THREAD_VARS, Grid, cells, run_sweep
from backlink.experiments.train import RunConfig
from backlink.spec import SpecError

BASE = RunConfig(model="cnn", dataset="synthetic", n_train=64, n_test=32, epochs=2, batch=32, lr=0.05,
                 dtype="float64", progress=False)
GRID = Grid(methods=("bp", "greedy", "backlink"), Ks=(2,), Ps=(1,), seeds=(0, 1))
UNTIMED = ("method", "K", "P", "beta", "head", "n", "diverged", "epochs", "acc_mean", "acc_std",
           "peak_act_mb", "gap_closed", "seeds", "curves")


def table(rows):
    return [{k: r.get(k) for k in UNTIMED} for r in rows]


def test_cells_cover_the_grid_once_each():
    grid = Grid(methods=("bp", "greedy", "backlink"), Ks=(2, 4), Ps=(1, 2), betas=(1.0, 0.5), seeds=(0, 1, 2))
    names = [n for n, _ in cells(BASE, grid)]
    # per seed: 1 BP + 2 greedy (one per K) + 2 K x 2 P x 2 beta BackLink
    assert len(names) == len(set(names)) == 3 * (1 + 2 + 8)
    assert names[0] == "bp_seed0" and names[-1].endswith("seed2")
    assert {c.seed for _, c in cells(BASE, grid)} == {0, 1, 2}


def test_a_killed_sweep_rerun_gives_the_uninterrupted_table(tmp_path, monkeypatch):
    whole = summarize(run_sweep(BASE, GRID, str(tmp_path / "whole"), progress=False))
    real_batches, calls = datasets.batches, []

    def killed_in_the_fourth_run(*a, **kw):  # the 4th epoch overall: epoch 2 of the 2nd cell
        calls.append(1)
        for i, b in enumerate(real_batches(*a, **kw)):
            if len(calls) == 4 and i == 1:
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(datasets, "batches", killed_in_the_fourth_run)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(BASE, GRID, str(tmp_path / "killed"), progress=False)
    monkeypatch.setattr(datasets, "batches", real_batches)
    runs = tmp_path / "killed/runs"
    assert (runs / "bp_seed0/result.json").exists() and not (runs / "greedy_K2_linear_seed0/result.json").exists()
    assert (runs / "greedy_K2_linear_seed0/checkpoint.npz").exists()  # epoch 1 done: it resumes from there

    trained = []
    real_train = sweep_module.train
    monkeypatch.setattr(sweep_module, "train", lambda cfg, *a, **kw: trained.append(cfg) or real_train(cfg, *a, **kw))
    again = summarize(run_sweep(BASE, GRID, str(tmp_path / "killed"), progress=False))
    assert table(again) == table(whole)
    assert "bp_seed0" not in [c.out.split("/")[-1] for c in trained]  # the finished cell was skipped
    assert trained[0].out.endswith("greedy_K2_linear_seed0")  # the interrupted one went first
    assert len(trained) == len(cells(BASE, GRID)) - 1


def test_two_worker_processes_give_the_one_process_table(tmp_path):
    grid = Grid(methods=("greedy", "backlink"), Ks=(2,), Ps=(1,), seeds=(0,))
    with threadpool_limits(limits=1):  # as in the workers: BLAS sums then add up in the same order
        one = summarize(run_sweep(BASE, grid, str(tmp_path / "one"), progress=False))
    before = {var: os.environ.get(var) for var in THREAD_VARS}
    two = summarize(run_sweep(BASE, grid, str(tmp_path / "two"), jobs=2, progress=False))
    assert table(two) == table(one)
    assert {var: os.environ.get(var) for var in THREAD_VARS} == before  # the workers' setting only


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    run_sweep(BASE, Grid(methods=("bp",), seeds=(0,)), str(tmp_path), progress=False)
    with pytest.raises(SpecError, match=r"lr: 0.05 there, 0.1 now.*same options"):
        run_sweep(RunConfig(**{**BASE.__dict__, "lr": 0.1}), Grid(methods=("bp",), seeds=(0,)), str(tmp_path),
                  progress=False)


def test_a_bad_cell_fails_before_anything_trains(tmp_path):
    grid = Grid(methods=("backlink",), Ks=(4,), Ps=(5,), seeds=(0,))
    with pytest.raises(SpecError, match="cell backlink_K4_linear_P5_beta1_seed0: .*link_length"):
        run_sweep(BASE, grid, str(tmp_path), progress=False)
    assert not (tmp_path / "runs").exists()


def test_summary_gap_closed_and_std():
    def result(method, seed, acc, K=2, P=1):
        return {"config": {"method": method, "K": K, "link_length": P, "beta": 1.0, "head": "linear",
                           "seed": seed, "epochs": 1},
                "test_acc": acc, "peak_activation_bytes": 2**20, "seconds_per_epoch": 1.0,
                "history": [{"epoch": 1, "test_acc": acc, "train_loss": 1.0}]}

    rows = summarize([result("bp", 0, 0.90), result("bp", 1, 0.92), result("greedy", 0, 0.80),
                      result("greedy", 1, 0.82), result("backlink", 0, 0.86), result("backlink", 1, 0.88)])
    bp, greedy, bl = rows
    assert (bp["method"], greedy["method"], bl["method"]) == ("bp", "greedy", "backlink")
    assert bl["gap_closed"] == pytest.approx(0.6)  # (0.87 - 0.81) / (0.91 - 0.81)
    assert bp["acc_std"] == pytest.approx(0.0141421, rel=1e-4)  # sample std (ddof 1)
    assert "87.00 ± 1.41" in format_summary(rows) and "60%" in format_summary(rows)


def test_cli_sweep_writes_table_csv_json_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    argv = ["sweep", "--model", "cnn", "--dataset", "synthetic", "--n-train", "64", "--n-test", "32",
            "--epochs", "2", "--batch", "32", "--K", "2", "--seeds", "0", "1", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "±" in out and "gap closed" in out
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [r["method"] for r in rows] == ["bp", "greedy", "backlink"] and all(r["n"] == "2" for r in rows)
    meta = json.loads((tmp_path / "summary.json").read_text())["meta"]
    assert meta["command"].startswith("backlink sweep --model cnn")
    for name in ("acc_vs_K", "acc_vs_P", "acc_vs_memory", "curves"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000


def test_report_shows_machine_paths_as_placeholders():
    from backlink.experiments.report import portable

    cmd = "backlink sweep --data-root '/home/a b/fm' --epochs 2 --out /srv/runs/fm60k --K 4"
    assert portable(cmd) == "backlink sweep --data-root DATA --epochs 2 --out runs/fm60k --K 4"
    assert portable("backlink sweep --data-root=/x/y --out=r/z") == "backlink sweep --data-root=DATA --out=runs/z"
    assert portable("backlink sweep --model cnn") == "backlink sweep --model cnn"


def test_report_rewrites_only_the_marked_block_and_is_reproducible(tmp_path):
    from backlink.experiments import report

    pytest.importorskip("matplotlib")
    sweep_dir = tmp_path / "sweep"
    assert main(["sweep", "--model", "cnn", "--dataset", "synthetic", "--n-train", "64", "--n-test", "32",
                 "--epochs", "1", "--batch", "32", "--K", "2", "--seeds", "0", "--quiet", "--no-plot",
                 "--out", str(sweep_dir)]) == 0
    page = tmp_path / "page.md"
    page.write_text("# Results\n\nbefore\n<!-- results:t start -->\nold\n<!-- results:t end -->\nafter\n")
    results = tmp_path / "results"
    assert report.main([str(sweep_dir), "--name", "t", "--results-dir", str(results), "--page", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Results\n\nbefore\n") and text.endswith("after\n") and "old" not in text
    assert "| backlink | 2 | 1 | 1 |" in text and "backlink sweep --model cnn" in text and "Wall time" in text
    assert (results / "t.csv").exists() and (results / "t/acc_vs_K.png").exists()
    # from the committed JSON alone: the same page
    assert report.main([str(results / "t.json"), "--name", "t", "--results-dir", str(results),
                        "--page", str(page)]) == 0
    assert page.read_text() == text
    assert str(sweep_dir) not in text and "--out runs/sweep" in text  # no path of this machine
    (tmp_path / "bare.md").write_text("no markers\n")
    assert report.main([str(results / "t.json"), "--name", "t", "--results-dir", str(results),
                        "--page", str(tmp_path / "bare.md"), "--no-plots"]) == 2
