"""CuPy backend (needs the cupy extra and a CUDA GPU)."""
