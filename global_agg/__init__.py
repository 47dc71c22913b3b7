"""The global aggregator: runs numbered rounds and combines the jurisdictions' aggregates."""
