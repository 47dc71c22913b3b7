"""Silo trainer: reads local data, trains the round's model next to it, sends only the weight delta."""
