"""FastAPI inference service classifying white-cell images (C-NMC 2019): ALL blast vs normal."""
