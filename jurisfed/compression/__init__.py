"""Codecs for what crosses a hop: fewer bytes, with known error."""
