"""Run checkpoints: the runner's BL-6.5 state dict plus the run's config and progress.

One ``.npz`` per run folder, written atomically
(:func:`backlink.reference.checkpoint.save_atomic`): arrays ``state/<key>`` (the keys of
:func:`backlink.spec.state_key`) and ``meta``, a JSON object with ``config`` (the
:class:`~backlink.experiments.train.RunConfig` as a dict, so a resume can be checked
against the command that wrote it), ``backend``, ``epoch`` (epochs completed),
``batch`` (batches of epoch ``epoch + 1`` done), ``history``, ``epoch_losses`` (of the
unfinished epoch) and ``seconds`` (training time so far).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backlink.reference.checkpoint import save_atomic

__all__ = ["CHECKPOINT", "FORMAT", "save_checkpoint", "load_checkpoint"]

CHECKPOINT = "checkpoint.npz"
FORMAT = 1


def save_checkpoint(path: Path, state: dict, meta: dict) -> None:
    arrays = {f"state/{k}": v for k, v in state.items()}
    arrays["meta"] = np.array(json.dumps({"format": FORMAT, **meta}))
    save_atomic(path, arrays)


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state dict, meta) of a checkpoint written by :func:`save_checkpoint`."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: checkpoint format {meta.get('format')!r}, this version reads "
                             f"{FORMAT}; delete the file to start the run again")
        state = {k[len("state/"):]: z[k] for k in z.files if k.startswith("state/")}
    return state, meta
