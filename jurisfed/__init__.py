"""jurisfed: federated learning across jurisdictions with residency enforced at every tier."""

__version__ = "0.1.0"
