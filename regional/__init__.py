"""The regional aggregator: aggregates its jurisdiction's silos and forwards only aggregates."""
