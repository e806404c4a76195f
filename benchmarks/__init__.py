"""Benchmarks: one module per study, run side by side with the peer, JSON + table out.

``python -m benchmarks <study> [options]``; results go to
``benchmarks/results/<study>-<date>.json``.  Nothing in the library imports this package.
"""
