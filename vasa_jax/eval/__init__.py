"""Metrics and report tables."""
