"""Generators of docs/results tables and ablations."""
