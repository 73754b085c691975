"""Experiments behind the numbers in training/README.md and training/reports/experiments.md."""
