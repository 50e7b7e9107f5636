"""Backends other than the reference: torch_backend, cupy_backend."""
