"""Benchmarks: run by hand, each measures the project and its baseline in one run."""
