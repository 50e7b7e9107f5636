"""Finding the backend under test: an installed name or ``module:attr``."""
from __future__ import annotations

import pytest

from backlink.backends import (GROUP, REQUIRED_MEMBERS, BackendNotFound, import_backend,
                               installed_backends)

__all__ = ["ENV_VAR", "GROUP", "installed_backends", "load_backend", "describe_backend"]

ENV_VAR = "BACKLINK_BACKEND"


def _import_target(spec: str):
    try:
        return import_backend(spec)
    except BackendNotFound as e:
        raise pytest.UsageError(str(e)) from e


def load_backend(spec: str):
    """The backend object for ``spec``; a class is instantiated without arguments."""
    obj = _import_target(spec)
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:
            raise pytest.UsageError(f"--backend {spec!r}: {obj.__name__}() failed: {type(e).__name__}: {e}") from e
    missing = [m for m in REQUIRED_MEMBERS if not hasattr(obj, m)]
    if missing:
        raise pytest.UsageError(f"--backend {spec!r}: {obj!r} lacks the backend members {missing} "
                                f"(BL-6: name, version, capabilities, prepare)")
    return obj


def describe_backend(backend, examples: int, seed: int) -> list[str]:
    from backlink.spec import SPEC_VERSION

    caps = backend.capabilities
    fields = ("dtypes", "devices", "methods", "schedules", "primitives", "cross_module")
    shown = ", ".join(f"{f}={getattr(caps, f, '?')}" for f in fields)
    return [f"backlink conformance: backend {backend.name!r} version {backend.version!r}, "
            f"spec {SPEC_VERSION}",
            f"backlink conformance: capabilities {shown}",
            f"backlink conformance: {examples} examples per sweep, "
            f"{'derandomized' if seed == 0 else f'seed {seed}'}"]
