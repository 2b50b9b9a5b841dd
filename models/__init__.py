"""Backends: one interface (models.base.Backend), one registry (models.registry)."""
