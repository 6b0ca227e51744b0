"""Benchmarks for tether against other ASGI servers (see bench/README.md)."""
