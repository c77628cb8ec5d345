"""Experiments: emailq worker settings and priced code changes (`python -m benchmarks.experiments.tune`)."""
