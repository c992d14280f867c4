"""MLflow conventions in one place: experiment and run naming, logging, model registry."""
