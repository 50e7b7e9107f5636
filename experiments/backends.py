"""``--backend`` for the experiments: a name -> a backend object, checked for training.

Names: ``numpy`` (the reference on NumPy), ``cupy`` (the reference on CuPy), any
installed backend (``torch``; entry-point group ``backlink.backends``) or
``package.module:Class`` for a backend defined outside the project. Resolution is
:func:`backlink.backends.import_backend`, the same as the conformance suite's.
"""
from __future__ import annotations

import inspect

from backlink.backends import REQUIRED_MEMBERS, BackendNotFound, import_backend
from backlink.spec import LEAN_METHODS, Problem, SpecError, lean_missing

__all__ = ["ALIASES", "make_backend", "check_backend", "check_runner"]

#: Short names for the reference engine on each array library.
ALIASES = {"numpy": "reference", "cupy": "cupy"}


def make_backend(name: str, device: str | None = None):
    """The backend called ``name``, on ``device`` where the backend takes one.

    ``device``: None (the backend's default), or 'cpu'/'cuda'. With the reference,
    'cuda' means CuPy (``--backend numpy --device cuda`` is ``--backend cupy``, kept for
    old command lines).
    """
    if name in ("numpy", "reference") and device == "cuda":
        name = "cupy"
    try:
        obj = import_backend(ALIASES.get(name, name))
    except BackendNotFound as e:
        raise SpecError(f"{e} (short names: numpy, cupy, torch)") from None
    if isinstance(obj, type):
        takes_device = "device" in inspect.signature(obj).parameters
        if device is not None and not takes_device and name not in ("numpy", "reference", "cupy"):
            raise SpecError(f"field 'device' is {device!r} but backend {name!r} takes no device; "
                            f"leave --device out")
        obj = obj(device=device) if takes_device and device is not None else obj()
    missing = [m for m in REQUIRED_MEMBERS if not hasattr(obj, m)]
    if missing:
        raise SpecError(f"--backend {name!r}: {obj!r} lacks the backend members {missing} (BL-6.1)")
    return obj


def check_backend(backend, problem: Problem) -> None:
    """The problem's dtype and method among the backend's capabilities (BL-6.2), or SpecError."""
    caps = backend.capabilities
    for field, value, allowed in (("dtype", problem.dtype, caps.dtypes),
                                  ("method", problem.method.kind, caps.methods)):
        if value not in allowed:
            raise SpecError(f"field '{field}' is {value!r}; backend {backend.name!r} supports "
                            f"{', '.join(allowed)}")


def check_runner(backend, runner) -> bool:
    """True when ``runner`` has the whole lean path (BL-6.5); False when only ``train_step``
    is missing (training falls back to ``step``); SpecError when evaluation or
    checkpoints cannot work."""
    missing = lean_missing(runner)
    needed = [m for m in missing if m != "train_step"]
    if needed:
        raise SpecError(f"backend {backend.name!r}: its runner lacks {', '.join(needed)} of the BL-6.5 "
                        f"lean path ({', '.join(LEAN_METHODS)}); training needs predict for "
                        f"evaluation and state_dict/load_state_dict for checkpoints")
    return not missing
