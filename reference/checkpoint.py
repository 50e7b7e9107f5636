"""Atomic checkpoint files: a crash leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["save_atomic"]


def save_atomic(path: Path, arrays: Mapping) -> None:
    """Write ``arrays`` as an ``.npz`` at ``path`` via a synced temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
