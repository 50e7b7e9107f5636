"""backlink: BackLink local training -- spec, reference, backends, conformance suite."""
__version__ = "0.1.0"
__all__ = ["__version__"]
