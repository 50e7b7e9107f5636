"""Run folders, checked before any data is loaded or any step is taken.

A run folder (``--out``) holds ``checkpoint.npz`` and ``result.json``. Starting a run
in a folder that holds one is refused unless ``overwrite``; ``resume`` needs a
checkpoint written with the same configuration (only :data:`MAY_CHANGE_ON_RESUME` may
differ); the folder must be writable (probed by writing a file), so a read-only or full
disk fails now, not after the first epoch. ``--checkpoint-every`` is parsed here too.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import tempfile
from pathlib import Path

import numpy as np

from .checkpoints import CHECKPOINT
from .checks import check_resume_config, probe_writable

__all__ = ["MAY_CHANGE_ON_RESUME", "RESULT", "prepare_run_folder", "parse_every", "checkpoint_due",
           "check_plot_path", "describe_checkpoint"]

RESULT = "result.json"
#: RunConfig fields a resumed run may change: how long it runs, where and how it reports,
#: how often it checkpoints. Every other field must equal the checkpoint's.
MAY_CHANGE_ON_RESUME = ("epochs", "out", "resume", "overwrite", "progress", "checkpoint_every", "data_root")
_EVERY = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(min|m)?\s*$")


def parse_every(value) -> tuple[str, float] | None:
    """``--checkpoint-every``: N (steps) or N followed by 'min' (minutes) -> (unit, N); None: never."""
    if value is None:
        return None
    m = _EVERY.match(str(value))
    if not m or float(m.group(1)) <= 0 or (not m.group(2) and not m.group(1).isdigit()):
        raise ValueError(f"field 'checkpoint_every' (--checkpoint-every) is {value!r}; allowed: a number "
                         f"of steps >= 1 (e.g. 200) or of minutes > 0 (e.g. 10min)")
    return ("minutes", float(m.group(1))) if m.group(2) else ("steps", int(m.group(1)))


def checkpoint_due(every: tuple[str, float] | None, step: int, since_s: float) -> bool:
    """Whether a mid-epoch checkpoint is due after global ``step`` (1-based), ``since_s``
    seconds after the last one."""
    if every is None:
        return False
    unit, n = every
    return step % n == 0 if unit == "steps" else since_s >= 60 * n


def _read_meta(path: Path) -> dict:
    with np.load(path) as z:
        return json.loads(str(z["meta"]))


def describe_checkpoint(path: Path) -> str:
    """'checkpoint PATH (after epoch E, batch B)' for messages; says so when there is none."""
    if not path.exists():
        return "No checkpoint was written yet"
    meta = _read_meta(path)
    where = f"epoch {meta['epoch']}" + (f" and batch {meta['batch']} of epoch {meta['epoch'] + 1}"
                                        if meta.get("batch") else "")
    return f"The last good checkpoint ({path}, after {where}) is intact"


def prepare_run_folder(cfg) -> dict | None:
    """Check ``cfg.out`` before training; return the checkpoint's meta when resuming, else None.

    Raises ValueError naming --out / --resume; with ``overwrite`` removes the old run's files.
    """
    if not cfg.out:
        return None
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT
    if cfg.resume:
        if not ckpt.is_file():
            raise ValueError(f"field 'resume' (--resume): {out} holds no {CHECKPOINT} to continue from; "
                             f"drop --resume to start the run there")
        meta = _read_meta(ckpt)
        check_resume_config(meta.get("config", {}), dataclasses.asdict(cfg), MAY_CHANGE_ON_RESUME, ckpt,
                            defaults=dataclasses.asdict(type(cfg)()))
        probe_writable(out)
        return meta
    held = [name for name in (CHECKPOINT, RESULT) if (out / name).exists()] if out.is_dir() else []
    if held and not getattr(cfg, "overwrite", False):
        raise ValueError(f"field 'out' (--out): {out} already holds a run ({', '.join(held)}); add --resume "
                         f"to continue it, --overwrite to start over, or choose another folder")
    probe_writable(out)
    for name in held:
        (out / name).unlink()
    return None


_PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")


def check_plot_path(path) -> None:
    """``--plot PATH`` is writable, of a format matplotlib saves, and matplotlib is installed:
    checked before training, so that hours of training are not lost to a typo."""
    if path is None:
        return
    p = Path(path)
    if p.suffix.lower().lstrip(".") not in _PLOT_FORMATS:
        raise ValueError(f"field 'plot' (--plot) is {str(path)!r}; give a file name ending in one of "
                         f".{', .'.join(_PLOT_FORMATS)}")
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("field 'plot' (--plot) needs matplotlib: pip install 'backlink[plot]' (or drop --plot)")
    if p.is_dir():
        raise ValueError(f"field 'plot' (--plot) is {str(path)!r}, a folder; give a file name")
    try:
        with tempfile.NamedTemporaryFile(dir=p.parent if str(p.parent) else "."):
            pass
    except OSError as e:
        raise ValueError(f"field 'plot' (--plot): cannot write into {p.parent}: {e.strerror or e}; "
                         f"choose a writable folder that exists") from None
