"""The training loop: train one method, or compare BP, greedy and BackLink on one setup.

Everything random is derived from ``seed``: initial parameters (``init_params``), and
per epoch the data order and augmentation (``default_rng([seed, epoch])``). So a run
resumed from an epoch checkpoint is bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backlink.spec import Batch, LRSchedule, Method, Optimizer, Problem

from backlink.reference.checkpoint import save_atomic
from . import data as datasets
from .checks import check_run_config
from backlink.reference.backend import ReferenceRunner
from backlink.reference.backlink import accuracy, gradients, predict
from backlink.reference.models import build_model, even_cuts, init_params, make_partition
from backlink.reference.xp import namespace_for, to_host

__all__ = ["RunConfig", "TrainingDiverged", "train", "compare", "format_table"]


class TrainingDiverged(FloatingPointError):
    pass


@dataclass
class RunConfig:
    """One training run. ``cuts`` overrides ``K``; ``link_length`` is P (BackLink only)."""

    model: str = "resnet8"
    granularity: str = "block"
    method: str = "backlink"
    K: int = 4
    cuts: tuple[int, ...] | None = None
    link_length: int = 1
    beta: float = 1.0
    head: str = "linear"
    dataset: str = "digits"
    data_root: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    augment: bool = False
    epochs: int = 5
    batch: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: int = 0
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    out: str | None = None  # run folder: checkpoint.npz, result.json
    resume: bool = False
    progress: bool = True


def _setup(cfg: RunConfig, ds):
    kw = dict(input_shape=ds.input_shape, num_classes=ds.num_classes)
    if cfg.model.startswith("resnet"):
        kw["granularity"] = cfg.granularity
    graph = build_model(cfg.model, **kw)
    cuts = tuple(cfg.cuts) if cfg.cuts else (even_cuts(graph, cfg.K) if cfg.method != "bp" else ())
    partition = make_partition(graph, cuts, head=cfg.head)
    method = Method(cfg.method, link_length=cfg.link_length if cfg.method == "backlink" else 0,
                    beta=cfg.beta)
    steps_per_epoch = -(-len(ds.y_train) // cfg.batch)
    total = max(cfg.epochs * steps_per_epoch, 1)
    schedule = LRSchedule(cfg.schedule, step_size=max(total // 3, 1),
                          warmup=min(cfg.warmup_epochs * steps_per_epoch, total - 1), total=total)
    opt = Optimizer(cfg.lr, cfg.momentum, cfg.nesterov and cfg.momentum > 0, cfg.weight_decay, schedule)
    return Problem(graph, partition, method, opt, dtype=cfg.dtype)


def _checkpoint(runner: ReferenceRunner, epoch: int, history: list) -> dict:
    out = {"meta": np.array(json.dumps({"epoch": epoch, "t": runner.t, "history": history}))}
    for prefix, d in (("p:", runner.params), ("b:", runner.buffers), ("s:", runner.state)):
        out.update({prefix + k: to_host(v) for k, v in d.items()})
    return out


def _restore(runner: ReferenceRunner, path: Path) -> tuple[int, list]:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        for prefix, d in (("p:", runner.params), ("b:", runner.buffers), ("s:", runner.state)):
            for k in d:
                d[k] = runner.xp.asarray(z[prefix + k])
    runner.t = meta["t"]
    return meta["epoch"], meta["history"]


def evaluate(problem: Problem, runner: ReferenceRunner, x, y, batch: int = 500) -> float:
    xp = runner.xp
    correct = 0.0
    for i in range(0, len(y), batch):
        logits = predict(problem.graph, runner.params, runner.buffers, xp.asarray(x[i:i + batch], problem.dtype))
        correct += accuracy(logits, xp.asarray(y[i:i + batch])) * len(y[i:i + batch])
    return correct / len(y)


def peak_activation_bytes(problem: Problem, runner: ReferenceRunner, x, y) -> int:
    """Peak live activation bytes of one training step as metered by BL-7.2, measured."""
    peak = [0]
    buffers = dict(runner.buffers)  # a throwaway copy: measuring must not move BN statistics
    gradients(problem.graph, problem.partition, problem.method, runner.params, buffers, x, y,
              meter=lambda phase, k, n: peak.__setitem__(0, max(peak[0], n)))
    return peak[0]


def train(cfg: RunConfig, ds=None) -> dict:
    """Train one method; returns the result dict (also written to ``out/result.json``)."""
    check_run_config(cfg)
    ds = ds or datasets.load(cfg.dataset, root=cfg.data_root, n_train=cfg.n_train, n_test=cfg.n_test,
                             seed=cfg.seed)
    problem = _setup(cfg, ds)
    xp = namespace_for(cfg.device)
    params, buffers = init_params(problem.graph, problem.partition, cfg.seed, cfg.dtype)
    runner = ReferenceRunner(problem, params, buffers, xp=xp)
    out = Path(cfg.out) if cfg.out else None
    ckpt = out / "checkpoint.npz" if out else None
    start, history = 0, []
    if out:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.resume and ckpt.exists():
            start, history = _restore(runner, ckpt)
    x_test = datasets.normalize(ds.x_test, ds.mean, ds.std)
    t0, peak = time.perf_counter(), None
    for epoch in range(start, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        x = datasets.augment(ds.x_train, rng) if cfg.augment else ds.x_train
        x = datasets.normalize(x, ds.mean, ds.std)
        losses = []
        it = datasets.batches(x, ds.y_train, cfg.batch, rng)
        if cfg.progress:
            from tqdm import tqdm

            it = tqdm(it, total=-(-len(ds.y_train) // cfg.batch), leave=False,
                      desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}")
        for xb, yb, _ in it:
            xb, yb = xp.asarray(xb, cfg.dtype), xp.asarray(yb)
            if peak is None:
                peak = peak_activation_bytes(problem, runner, xb, yb)
            record = runner.step(Batch(xb, yb, runner.t))
            loss = record.losses[max(record.losses)]
            if not np.isfinite(list(record.losses.values())).all():
                raise TrainingDiverged(
                    f"{cfg.method}: loss became {record.losses} at epoch {epoch + 1}, step {runner.t}; "
                    f"training stopped. Lower 'lr' (now {cfg.lr}) or check the data. "
                    + (f"The last good checkpoint ({ckpt}) is intact." if ckpt else "No checkpoint was written."))
            losses.append(loss)
        acc = evaluate(problem, runner, x_test, ds.y_test)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "test_acc": acc})
        if ckpt:
            save_atomic(ckpt, _checkpoint(runner, epoch + 1, history))
    result = {"config": dataclasses.asdict(cfg), "K": problem.partition.K if cfg.method != "bp" else 1,
              "cuts": list(problem.partition.cuts), "history": history,
              "test_acc": history[-1]["test_acc"] if history else None,
              "peak_activation_bytes": peak, "seconds": time.perf_counter() - t0}
    if out:
        (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def compare(cfg: RunConfig, methods=("bp", "greedy", "backlink"), plot: str | None = None) -> list[dict]:
    """Train each method on the same data, seed and partition; returns their results."""
    check_run_config(cfg)
    ds = datasets.load(cfg.dataset, root=cfg.data_root, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed)
    results = []
    for m in methods:
        run = dataclasses.replace(cfg, method=m, out=str(Path(cfg.out) / m) if cfg.out else None)
        results.append(train(run, ds))
    if plot:
        from .plots import plot_curves

        plot_curves(results, plot)
    return results


def format_table(results: list[dict]) -> str:
    rows = [("method", "K", "P", "test acc", "peak act. MB", "time s")]
    for r in results:
        c = r["config"]
        rows.append((c["method"], str(r["K"]), str(c["link_length"]) if c["method"] == "backlink" else "-",
                     f"{100 * r['test_acc']:.2f}%", f"{(r['peak_activation_bytes'] or 0) / 2**20:.2f}",
                     f"{r['seconds']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
