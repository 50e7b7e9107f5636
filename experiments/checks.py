"""Checks of a run's settings that the spec objects cannot make (they never see epochs,
batch sizes or run folders), made before any data is loaded or any rank is spawned.

Every error names the field and its command-line option, and says what is allowed.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

__all__ = ["check_run_config", "check_positive_int", "config_differences", "check_resume_config",
           "probe_writable"]


def _option(name: str) -> str:
    return "--" + {"link_length": "P"}.get(name, name).replace("_", "-")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_positive_int(name: str, value, minimum: int = 1, optional: bool = False) -> None:
    """``value`` is an int >= ``minimum`` (or None when ``optional``); else ValueError naming it."""
    if optional and value is None:
        return
    if not _is_int(value) or value < minimum:
        raise ValueError(f"field '{name}' ({_option(name)}) is {value!r}; allowed: an integer >= {minimum}")


def check_run_config(cfg) -> None:
    """Raise ValueError naming the field for settings no run can use (RunConfig or alike)."""
    check_positive_int("epochs", cfg.epochs)
    check_positive_int("batch", cfg.batch)
    check_positive_int("seed", cfg.seed, minimum=0)
    check_positive_int("warmup_epochs", getattr(cfg, "warmup_epochs", 0), minimum=0)
    if cfg.cuts is not None and len(tuple(cfg.cuts)) == 0:
        raise ValueError("field 'cuts' (--cuts) is empty; give cut points such as 2,4 (comma-separated "
                         "unit indices), or leave --cuts out and set --K")
    if cfg.cuts is None and cfg.method != "bp":
        check_positive_int("K", cfg.K)
    beta = cfg.beta
    if not (isinstance(beta, numbers.Real) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"field 'beta' (--beta) is {beta!r}; allowed: a finite number >= 0 "
                         f"(0 turns the link terms off)")
    warmup = getattr(cfg, "warmup_epochs", 0)
    if warmup and getattr(cfg, "schedule", "cosine") != "cosine":
        raise ValueError(f"field 'warmup_epochs' (--warmup-epochs) is {warmup}, but only the cosine "
                         f"schedule warms up (--schedule is {cfg.schedule!r}); drop it or use --schedule cosine")
    if warmup >= cfg.epochs:
        raise ValueError(f"field 'warmup_epochs' (--warmup-epochs) is {warmup}, not shorter than the run "
                         f"(epochs = {cfg.epochs}); use at most {cfg.epochs - 1}")
    if getattr(cfg, "resume", False) and not getattr(cfg, "out", None):
        raise ValueError("field 'resume' (--resume) needs field 'out' (--out): the run folder that holds "
                         "the checkpoint to continue from")


def config_differences(saved: dict, now: dict, may_change, defaults: dict | None = None) -> list[str]:
    """'field: checkpoint X, now Y' for every field (outside ``may_change``) that differs.

    A field the checkpoint lacks (added to the settings later) counts as its value in
    ``defaults``: the run that wrote it behaved as the default does.
    """
    now, defaults = json.loads(json.dumps(now)), json.loads(json.dumps(defaults or {}))  # tuples -> lists
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    return [f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if k not in may_change and saved.get(k) != now.get(k)]


def check_resume_config(saved: dict, now: dict, may_change, where, defaults: dict | None = None) -> None:
    """Refuse to resume a checkpoint written with another configuration; list the differences."""
    diffs = config_differences(saved, now, may_change, defaults)
    if diffs:
        raise ValueError(f"field 'resume' (--resume): the checkpoint in {where} was written with another "
                         f"configuration:\n  " + "\n  ".join(diffs) + "\nFields that may change on resume: "
                         f"{', '.join(sorted(may_change))}. Resume with the original values, or train into "
                         f"a new --out folder")


def probe_writable(folder) -> None:
    """Create ``folder`` and write, sync and remove a small file in it, before any training:
    a read-only or full disk is reported now, not after the first epoch."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"field 'out' (--out) is {str(folder)!r}, which is a file; give a folder")
    probe = folder / ".backlink-write-probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ValueError(f"field 'out' (--out): cannot write to {folder}: {e.strerror or e}; "
                         f"choose a writable folder") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
