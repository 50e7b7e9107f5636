"""Runnable examples of the torch user API (``python -m backlink.backends.torch_backend.examples.<name>``)."""
