"""Benchmarks that print a comparison measured in one run (``evolveopt bench ...``)."""
