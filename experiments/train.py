"""The training loop over the backend protocol: train one method, or compare BP, greedy and BackLink.

Any backend that the conformance suite accepts trains here, through the BL-6.5 lean
path (``train_step``, ``predict``, ``state_dict``/``load_state_dict``); a runner
without ``train_step`` trains through ``step``. Everything random is derived from
``seed``: initial parameters (``init_params``), and per epoch the data order and
augmentation (``default_rng([seed, epoch])``). So a run resumed from a checkpoint is
bit-identical to an uninterrupted one, on every backend that computes deterministically.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from backlink.reference.memory import activation_bytes
from backlink.reference.models import (INFOPRO_TABLES, build_model, cuts_from_table, even_cuts,
                                       init_params, make_partition)
from backlink.spec import Batch, LRSchedule, Method, Optimizer, Problem, SpecError

from . import data as datasets
from .backends import check_backend, check_runner, make_backend
from .checkpoints import CHECKPOINT, load_checkpoint, save_checkpoint
from .checks import check_run_config
from .runs import RESULT, check_plot_path, checkpoint_due, describe_checkpoint, parse_every, prepare_run_folder

__all__ = ["RunConfig", "TrainingDiverged", "train", "compare", "format_table", "build_problem",
           "evaluate", "RESULT"]


class TrainingDiverged(FloatingPointError):
    pass


@dataclass
class RunConfig:
    """One training run. ``cuts`` overrides ``K``; ``link_length`` is P (BackLink only).

    ``backend``: numpy, cupy, torch, or package.module:Class; ``device``: for backends
    that take one (torch: cpu or cuda; None: the backend's default).
    """

    model: str = "resnet8"
    granularity: str = "block"
    method: str = "backlink"
    K: int = 4
    cuts: tuple[int, ...] | None = None
    split: str = "even"  # even: balanced unit counts; infopro: InfoPro's split tables (ResNets)
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
    optimizer: str = "sgd"  # BL-4.3 sgd (momentum, nesterov) or BL-4.7 adamw (momentum ignored)
    schedule: str = "cosine"
    warmup_epochs: int = 0
    seed: int = 0
    dtype: str = "float32"
    backend: str = "numpy"
    device: str | None = None
    out: str | None = None  # run folder: checkpoint.npz, result.json
    resume: bool = False    # continue from out/checkpoint.npz (it must exist and match this config)
    overwrite: bool = False  # start over in an out folder that holds a run
    checkpoint_every: int | str | None = None  # also checkpoint every N steps, or "N min" (None: per epoch)
    progress: bool = True


def build_problem(cfg: RunConfig, ds) -> Problem:
    kw = dict(input_shape=ds.input_shape, num_classes=ds.num_classes)
    if cfg.model.startswith("resnet") or cfg.model == "vit":
        kw["granularity"] = cfg.granularity
    graph = build_model(cfg.model, **kw)
    cuts = tuple(cfg.cuts) if cfg.cuts else (_split(cfg, graph) if cfg.method != "bp" else ())
    partition = make_partition(graph, cuts, head=cfg.head)
    method = Method(cfg.method, link_length=cfg.link_length if cfg.method == "backlink" else 0,
                    beta=cfg.beta)
    steps_per_epoch = -(-len(ds.y_train) // cfg.batch)
    total = max(cfg.epochs * steps_per_epoch, 1)
    schedule = LRSchedule(cfg.schedule, step_size=max(total // 3, 1),
                          warmup=min(cfg.warmup_epochs * steps_per_epoch, total - 1), total=total)
    if cfg.optimizer == "adamw":
        opt = Optimizer(cfg.lr, weight_decay=cfg.weight_decay, schedule=schedule, kind="adamw")
    else:
        opt = Optimizer(cfg.lr, cfg.momentum, cfg.nesterov and cfg.momentum > 0, cfg.weight_decay, schedule,
                        kind=cfg.optimizer)
    return Problem(graph, partition, method, opt, dtype=cfg.dtype)


SPLITS = ("even", "infopro")


def _split(cfg: RunConfig, graph) -> tuple[int, ...]:
    if cfg.split == "even":
        return even_cuts(graph, cfg.K)
    if cfg.split != "infopro":
        raise SpecError(f"field 'split' is {cfg.split!r}; allowed: {', '.join(SPLITS)}")
    depth = int(cfg.model[len("resnet"):]) if cfg.model.startswith("resnet") else None
    if (depth, cfg.K) not in INFOPRO_TABLES:
        have = ", ".join(f"resnet{d} K={k}" for d, k in INFOPRO_TABLES)
        raise SpecError(f"fields 'model', 'K' = ({cfg.model!r}, {cfg.K}): no InfoPro split table "
                        f"(available: {have}); use --split even")
    return cuts_from_table(graph, INFOPRO_TABLES[depth, cfg.K])


def evaluate(runner, x, y, batch: int = 500) -> float:
    """Test accuracy from the runner's eval-mode logits (BL-6.5 ``predict``)."""
    correct = 0
    for i in range(0, len(y), batch):
        logits = runner.predict(x[i:i + batch])
        correct += int((np.argmax(logits, axis=1) == y[i:i + batch]).sum())
    return correct / len(y)


def _step_fn(runner, lean: bool) -> Callable[[Batch], dict]:
    return runner.train_step if lean else (lambda b: runner.step(b).losses)


def train(cfg: RunConfig, ds=None, backend=None, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train one method; returns the result dict (also written to ``out/result.json``).

    ``backend``: a backend object (default: ``make_backend(cfg.backend, cfg.device)``).
    ``on_step(losses)``: called after every step with its losses (loss id -> value).
    """
    check_run_config(cfg)
    every = parse_every(cfg.checkpoint_every)
    resuming = prepare_run_folder(cfg)  # before the data: a wrong folder fails in a second
    ds = ds or datasets.load(cfg.dataset, root=cfg.data_root, n_train=cfg.n_train, n_test=cfg.n_test,
                             seed=cfg.seed)
    problem = build_problem(cfg, ds)
    backend = backend or make_backend(cfg.backend, cfg.device)
    check_backend(backend, problem)
    params, buffers = init_params(problem.graph, problem.partition, cfg.seed, cfg.dtype)
    runner = backend.prepare(problem, params, buffers)
    step = _step_fn(runner, check_runner(backend, runner))
    out = Path(cfg.out) if cfg.out else None
    ckpt = out / CHECKPOINT if out else None
    progress = {"epoch": 0, "batch": 0, "history": [], "epoch_losses": [], "seconds": 0.0}
    if resuming is not None:
        state, meta = load_checkpoint(ckpt)
        runner.load_state_dict(state)
        progress.update({k: meta[k] for k in progress})

    def save(at: dict) -> None:
        save_checkpoint(ckpt, runner.state_dict(), {**at, "config": dataclasses.asdict(cfg), "backend": backend.name})

    steps_per_epoch = -(-len(ds.y_train) // cfg.batch)
    x_test = datasets.normalize(ds.x_test, ds.mean, ds.std).astype(cfg.dtype, copy=False)
    for epoch in range(progress["epoch"], cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        x = datasets.augment(ds.x_train, rng) if cfg.augment else ds.x_train
        x = datasets.normalize(x, ds.mean, ds.std)
        it = datasets.batches(x, ds.y_train, cfg.batch, rng)
        if cfg.progress:
            from tqdm import tqdm

            it = tqdm(it, total=steps_per_epoch, initial=progress["batch"], leave=False,
                      desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}")
        t0, losses = time.perf_counter(), progress["epoch_losses"]
        last_save = time.monotonic()
        for xb, yb, i in it:
            if i < progress["batch"]:  # done before the checkpoint this run resumed from
                continue
            loss = step(Batch(xb.astype(cfg.dtype, copy=False), yb, i))
            if not all(math.isfinite(v) for v in loss.values()):
                raise TrainingDiverged(
                    f"{cfg.method}: loss became {loss} at epoch {epoch + 1}, batch {i + 1}; training "
                    f"stopped. Lower 'lr' (now {cfg.lr}) or check the data. "
                    + (f"{describe_checkpoint(ckpt)}." if ckpt else "No checkpoint was written (no --out)."))
            losses.append(loss[max(loss)])
            if on_step:
                on_step(loss)
            if ckpt and i + 1 < steps_per_epoch and checkpoint_due(every, epoch * steps_per_epoch + i + 1,
                                                                   time.monotonic() - last_save):
                save({**progress, "batch": i + 1, "epoch_losses": losses,
                      "seconds": progress["seconds"] + time.perf_counter() - t0})
                last_save = time.monotonic()
        train_seconds = time.perf_counter() - t0
        acc = evaluate(runner, x_test, ds.y_test)
        progress["history"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "test_acc": acc,
                                    "seconds": train_seconds})
        progress.update(epoch=epoch + 1, batch=0, epoch_losses=[],
                        seconds=progress["seconds"] + time.perf_counter() - t0)
        if ckpt:
            save(progress)
    history = progress["history"]
    result = {"config": dataclasses.asdict(cfg), "backend": backend.name, "backend_version": backend.version,
              "K": problem.partition.K if cfg.method != "bp" else 1,
              "cuts": list(problem.partition.cuts), "history": history,
              "test_acc": history[-1]["test_acc"] if history else None,
              "peak_activation_bytes": activation_bytes(problem.graph, problem.partition, problem.method,
                                                        cfg.batch, cfg.dtype).peak,
              "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else None,
              "seconds": progress["seconds"]}
    if out:
        (out / RESULT).write_text(json.dumps(result, indent=2))
    return result


def compare(cfg: RunConfig, methods=("bp", "greedy", "backlink"), plot: str | None = None) -> list[dict]:
    """Train each method on the same data, seed and partition; returns their results."""
    check_run_config(cfg)
    check_plot_path(plot)
    runs = [dataclasses.replace(cfg, method=m, out=str(Path(cfg.out) / m) if cfg.out else None) for m in methods]
    for run in runs:  # every method's folder before the first trains
        check_run_config(run)
        prepare_run_folder(run)
    ds = datasets.load(cfg.dataset, root=cfg.data_root, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed)
    backend = make_backend(cfg.backend, cfg.device)
    results = []
    for run in runs:
        results.append(train(dataclasses.replace(run, overwrite=False), ds, backend))
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
