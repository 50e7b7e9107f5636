"""Finding the backend under test: an installed name or ``module:attr``."""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import pytest

__all__ = ["ENV_VAR", "GROUP", "installed_backends", "load_backend", "describe_backend"]

ENV_VAR = "BACKLINK_BACKEND"
GROUP = "backlink.backends"
REQUIRED_MEMBERS = ("name", "version", "capabilities", "prepare")


def installed_backends() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def _import_target(spec: str):
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as e:
            raise pytest.UsageError(f"--backend {spec!r}: cannot import module {module_name!r}: {e}") from e
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise pytest.UsageError(f"--backend {spec!r}: module {module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        return obj
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == spec]
    if not matches:
        raise pytest.UsageError(
            f"--backend {spec!r}: no installed backend of that name (entry-point group {GROUP!r}); "
            f"installed: {', '.join(installed_backends()) or 'none'}; or give package.module:attr")
    try:
        return matches[0].load()
    except Exception as e:  # an optional dependency (torch, cupy) is missing, typically
        raise pytest.UsageError(f"--backend {spec!r}: loading {matches[0].value} failed: "
                                f"{type(e).__name__}: {e}") from e


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
