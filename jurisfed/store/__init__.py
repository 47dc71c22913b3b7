"""Embedded, durable state of a tier: files on its own disk, no external service."""
