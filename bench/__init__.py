"""Benchmarks: one command each (``python -m bench.<name>``), results under bench/results/."""
