"""Training package: C-NMC data discovery, subject splits, models, training, evaluation, export.

Importable functions first; ``python -m training`` is a thin CLI over them.
"""
