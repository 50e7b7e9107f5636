"""PyTorch backend and user API (needs the torch extra)."""
