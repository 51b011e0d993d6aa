"""Benchmarks and demos driven by the CLI (``rgdm bench``, ``rgdm demo``); results are JSON."""
