"""backlink.reference: the NumPy/CuPy reference implementation."""
