"""Benchmarks: ``python -m lifelong.bench`` (see :mod:`lifelong.bench.cli` for the modes)."""
