"""Helpers shared by tests and benchmarks: tiny random-weight models of real architectures."""
