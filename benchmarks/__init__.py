"""Benchmarks that print numbers (run with ``python -m benchmarks.<name>``); not installed with the
product packages and never imported by them."""
