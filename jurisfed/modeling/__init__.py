"""Model architectures known to the federation, described without TensorFlow."""
