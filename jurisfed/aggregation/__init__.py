"""Rules that turn many model updates into one, in memory bounded by the model size."""
