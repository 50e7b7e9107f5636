"""Atomic checkpoint files: a crash leaves the old file or the new one, never half of one.

:func:`pack` / :func:`unpack` turn nested run state (dicts, tuples, lists, scalars and
arrays: a pipeline stage's stored tail residuals, a message in flight) into plain arrays
plus a JSON layout, so a checkpoint stays an ``.npz`` that loads without pickle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["save_atomic", "CheckpointWriteError", "pack", "unpack"]


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed; the previous file (if any) is intact, no temp file is left."""


def save_atomic(path: Path, arrays: Mapping) -> None:
    """Write ``arrays`` as an ``.npz`` at ``path`` via a synced temporary file and ``os.replace``.

    On failure (disk full, read-only folder) the temporary file is removed, the previous
    ``path`` is left as it was, and :class:`CheckpointWriteError` says so in one line.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = "the previous checkpoint is intact" if path.exists() else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"could not write checkpoint {path}: {e.strerror or e}; {kept}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pack(obj, prefix: str) -> dict:
    """``{prefix + 'layout': JSON, prefix + str(n): array n}`` for a nested ``obj``."""
    arrays: dict = {}

    def walk(o):
        if isinstance(o, dict):
            return {"d": [[walk(k), walk(v)] for k, v in o.items()]}
        if isinstance(o, (tuple, list)):
            return {"t" if isinstance(o, tuple) else "l": [walk(v) for v in o]}
        if o is None or isinstance(o, (bool, int, float, str)):
            return {"v": o}
        key = f"{prefix}{len(arrays)}"
        arrays[key] = np.asarray(o)  # arrays, NumPy scalars; CuPy arrays via __array__
        return {"a": key}

    layout = walk(obj)
    return {prefix + "layout": np.array(json.dumps(layout)), **arrays}


def unpack(z: Mapping, prefix: str):
    """The object :func:`pack` stored under ``prefix`` in ``z`` (an open ``.npz``)."""
    def build(node):
        kind, value = next(iter(node.items()))
        if kind == "d":
            return {build(k): build(v) for k, v in value}
        if kind in "tl":
            items = [build(v) for v in value]
            return tuple(items) if kind == "t" else items
        return z[value] if kind == "a" else value

    return build(json.loads(str(z[prefix + "layout"])))
