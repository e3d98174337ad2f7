"""Speed benchmarks of the data pipeline and both generators (scripts/benchmark.py runs them)."""
