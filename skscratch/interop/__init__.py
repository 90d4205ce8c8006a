"""Bridges to other frameworks (optional: each needs its framework installed)."""
