"""backlink.experiments: the tools around the semantics.

The training loop over the backend protocol, sweeps, data files and loaders, plots and
the command line. Nothing in :mod:`backlink.reference` imports this package.
"""
