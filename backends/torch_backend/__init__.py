"""PyTorch backend and user API (needs the torch extra: ``pip install 'backlink[torch]'``).

``TorchBackend`` runs spec problems for the conformance suite; :mod:`.api` trains plain
``torch.nn`` networks with BackLink. Importing this package does not import torch: the
names below load on first use, so ``import backlink`` never needs torch.
"""
from __future__ import annotations

import importlib

__all__ = ["TorchBackend", "BackLink"]

_LAZY = {"TorchBackend": ".backend", "BackLink": ".api"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(_LAZY[name], __name__)
    except ImportError as e:
        if e.name != "torch":
            raise
        raise ImportError(f"backlink.backends.torch_backend.{name} needs PyTorch: "
                          f"pip install 'backlink[torch]'") from e
    return getattr(module, name)


def __dir__():
    return sorted(list(globals()) + __all__)
