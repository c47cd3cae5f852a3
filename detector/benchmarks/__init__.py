"""Benchmarks (not tests): timed tasks run by ``tools/benchmark.py`` (``configs/benchmark.yaml``)."""
