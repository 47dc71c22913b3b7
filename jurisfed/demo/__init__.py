"""The `jurisfed demo`: a whole federation on one machine, trained on scikit-learn's bundled digits."""
