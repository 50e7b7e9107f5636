"""Backends other than the reference (torch_backend, cupy_backend), and finding a backend by name.

:func:`import_backend` is the one place that turns a name into a backend: an installed
name (entry-point group ``backlink.backends``) or ``package.module:attr``. The
conformance suite's ``--backend`` and the experiments' ``--backend`` both use it.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

__all__ = ["GROUP", "REQUIRED_MEMBERS", "BackendNotFound", "installed_backends", "import_backend"]

GROUP = "backlink.backends"
#: BL-6.1: what every backend object has.
REQUIRED_MEMBERS = ("name", "version", "capabilities", "prepare")


class BackendNotFound(LookupError):
    """A backend name that does not resolve; the message says why and what is installed."""


def installed_backends() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def import_backend(spec: str):
    """The object ``spec`` names (a backend class or instance), not yet instantiated."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as e:
            raise BackendNotFound(f"--backend {spec!r}: cannot import module {module_name!r}: {e}") from e
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise BackendNotFound(f"--backend {spec!r}: module {module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        return obj
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == spec]
    if not matches:
        raise BackendNotFound(
            f"--backend {spec!r}: no installed backend of that name (entry-point group {GROUP!r}); "
            f"installed: {', '.join(installed_backends()) or 'none'}; or give package.module:attr")
    try:
        return matches[0].load()
    except Exception as e:  # an optional dependency (torch, cupy) is missing, typically
        raise BackendNotFound(f"--backend {spec!r}: loading {matches[0].value} failed: "
                              f"{type(e).__name__}: {e}") from e
