"""What training writes and serving, tests and the benchmark read; imports no TensorFlow."""
