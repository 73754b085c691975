"""Benchmark harness: the service as shipped vs the naive baseline vs the model's own limit."""
