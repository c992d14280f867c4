"""Data sets, synthetic data, preprocessing, training, metrics, search, reports and benchmarks."""
