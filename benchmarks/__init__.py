"""Benchmarks of the engine (`python -m benchmarks.engine`); not installed with the package."""
