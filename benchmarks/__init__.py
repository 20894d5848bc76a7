"""Benchmarks of brachy-cds against a floor app, on loopback only (``python benchmarks/run.py``)."""
