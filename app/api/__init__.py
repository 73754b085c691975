"""HTTP layer: routes parse requests and shape responses, nothing else."""
